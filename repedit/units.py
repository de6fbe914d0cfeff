"""The MLP units an edit may change (``--edit-units``): those more active on the forget documents than on retain ones.

An MLP unit's output reaches the residual stream only through its activation, so a change to its weights moves text
in proportion to how strongly that text drives it. Retain documents share the forget documents' kinds and templates;
the units that fire more on forget tokens than on retain tokens carry what is the forget documents' own, and an edit
confined to them (their gate and up rows, their down column) leaves the rest of each MLP as the frozen model has it.
The selection is read once on the frozen model, from the batches the run caches anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import torch
from torch import nn

from repedit.layers import decoder_layers
from repedit.rmu_config import MLP_MODULES


class UnitActivity:
    """Per edited layer, each MLP unit's activity (the input of ``down_proj``) summed over forget and retain tokens
    as cached batches run through it: ``with activity.reading(mask, forget_rows): run the layers``. Nothing of the
    activations is kept, so reading every batch of the run costs one pass of the edited layers."""

    def __init__(self, model: nn.Module, layers: tuple[int, ...]):
        self.stack, self.layers = decoder_layers(model), layers
        self.sums: dict[int, torch.Tensor] = {}  # layer -> (3, units): forget |a|, retain |a|, every a^2
        self.tokens = torch.zeros(2, dtype=torch.float64)  # forget, retain
        self._batch: tuple[torch.Tensor, int] | None = None

    @contextmanager
    def reading(self, mask: torch.Tensor, forget_rows: int) -> Iterator[None]:
        """Count the batch run inside: ``mask`` (B, T) its real tokens, its first ``forget_rows`` rows forget rows."""
        self._batch = (mask, forget_rows)
        weight = mask.double()
        self.tokens += torch.stack([weight[:forget_rows].sum(), weight[forget_rows:].sum()]).cpu()
        handles = [self.stack[index].get_submodule("mlp.down_proj").register_forward_pre_hook(
            lambda _module, inputs, index=index: self._add(index, inputs[0])) for index in self.layers]
        try:
            yield
        finally:
            self._batch = None
            for handle in handles:
                handle.remove()

    def _add(self, layer: int, values: torch.Tensor) -> None:
        mask, n = cast(tuple[torch.Tensor, int], self._batch)
        values, weight = values.detach().float(), mask.to(values.device, torch.float32).unsqueeze(-1)
        sums = torch.stack([(values[:n].abs() * weight[:n]).sum(dim=(0, 1)),
                            (values[n:].abs() * weight[n:]).sum(dim=(0, 1)),
                            (values.square() * weight).sum(dim=(0, 1))]).double().cpu()
        self.sums[layer] = self.sums.get(layer, 0) + sums

    def selectivity(self, reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[int, torch.Tensor]:
        """Per layer and unit: its mean |activation| on forget tokens less that on retain tokens, over the root mean
        square of its activation on both (a unit quiet on the forget documents scores <= 0 however quiet elsewhere).
        ``reduce`` sums a count over processes (``repedit.distributed.total``), so that every rank picks alike."""
        tokens = reduce(self.tokens)
        if (tokens == 0).any():
            raise ValueError("--edit-units: the cached batches need forget and retain tokens both")
        scores = {}
        for layer in self.layers:
            sums = reduce(self.sums[layer])
            rms = (sums[2] / tokens.sum()).sqrt().clamp_min(1e-12)
            scores[layer] = ((sums[0] / tokens[0] - sums[1] / tokens[1]) / rms).float()
        return scores


def top_units(scores: torch.Tensor, share: float) -> torch.Tensor:
    """A boolean mask of the ``share`` of units with the highest scores (at least one)."""
    keep = max(1, round(share * scores.numel()))
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[scores.topk(keep).indices] = True
    return mask


class UnitEdit:
    """Confines the trained MLP weights to the chosen units: gradients elsewhere are zeroed, and after each optimizer
    step the other units' weights are put back (AdamW's weight decay moves weights that have no gradient)."""

    def __init__(self, trainable: dict[str, nn.Parameter], units: dict[int, torch.Tensor]):
        self.parts: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        for name, param in trainable.items():
            layer, module = _layer_and_module(name)
            if module not in MLP_MODULES or not name.endswith(".weight"):
                raise ValueError(f"--edit-units: {name} is not an MLP projection's weight; train only "
                                 f"{', '.join(MLP_MODULES)} (--params)")
            chosen = units[layer].to(param.device)
            mask = chosen.unsqueeze(0) if module == "mlp.down_proj" else chosen.unsqueeze(1)  # down: columns
            mask = mask.expand_as(param)
            self.parts.append((param, mask, param.detach().clone()))
            param.register_hook(lambda grad, mask=mask: grad * mask)

    @torch.no_grad()
    def restore_others(self) -> None:
        for param, mask, frozen in self.parts:
            param.copy_(torch.where(mask, param, frozen))


def _layer_and_module(name: str) -> tuple[int, str]:
    """``layers.5.mlp.up_proj.weight`` -> (5, "mlp.up_proj")."""
    parts = name.split(".")
    at = next(i for i in range(len(parts) - 2, -1, -1) if parts[i].isdigit() and parts[i + 1] == "mlp")
    return int(parts[at]), ".".join(parts[at + 1 : -1])
