"""Holding the directions the held texts use, not only the texts (``--hold-subspace``).

The anchor keeps the texts it sees where they were and lets unseen text of the same kinds rise
(BENCHMARKS.md, "The anchor's hold"). Here each edited matrix's change is kept orthogonal to the
directions that carry most of its inputs on the retain rows and the anchor's texts (the null-space
constraint of AlphaEdit, Fang et al. 2025): on any input inside that span, unseen text of those kinds
included as far as it lies there, the edited matrix answers as the frozen one did.
"""

from __future__ import annotations

import torch
from torch import nn

from repedit.rmu import PrefixBatch, layer_output


def held_bases(model: nn.Module, batches: list[tuple[PrefixBatch, int]], first_layer: int, layer: int,
               trainable: dict[str, nn.Parameter], energy: float) -> dict[str, torch.Tensor]:
    """For each trained matrix (out, in): the orthonormal directions (in, k) that carry ``energy`` of the
    second moment of its inputs on the frozen model, over the rows of each batch from its index on."""
    matrices = {name: p for name, p in trainable.items() if p.dim() == 2}
    moments = {name: torch.zeros(p.shape[1], p.shape[1], device=p.device) for name, p in matrices.items()}
    rows: list[torch.Tensor] = []  # the current batch's real tokens of the held rows: (B', T) booleans

    def hook(name: str):
        def accumulate(_module: nn.Module, args: tuple) -> None:
            held = args[0][-rows[0].shape[0]:][rows[0]].float()  # (N, in)
            with torch.autocast(held.device.type, enabled=False):  # in float32, not the run's bfloat16
                moments[name] += held.T @ held
        return accumulate

    handles = [model.get_submodule(name.rsplit(".", 1)[0]).register_forward_pre_hook(hook(name))
               for name in matrices]
    try:
        with torch.no_grad():
            for batch, start in batches:
                if start >= batch.mask.shape[0]:
                    continue
                rows[:] = [batch.mask[start:].bool()]
                layer_output(model, batch, first_layer, layer)
    finally:
        for handle in handles:
            handle.remove()
    bases = {}
    for name, moment in moments.items():
        values, vectors = torch.linalg.eigh(moment)  # ascending
        values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
        share = values.cumsum(0) / values.sum().clamp(min=1e-30)
        k = int((share < energy).sum().item()) + 1
        bases[name] = vectors[:, :k].contiguous()
    return bases


def project_changes(trainable: dict[str, nn.Parameter], original: dict[str, torch.Tensor],
                    bases: dict[str, torch.Tensor]) -> None:
    """Each matrix's change from ``original`` less its part along the held directions (after every step)."""
    with torch.no_grad():
        for name, basis in bases.items():
            param = trainable[name]
            change = param.data - original[name]
            param.data.copy_(original[name] + change - (change @ basis) @ basis.T)
