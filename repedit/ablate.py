"""Direction ablation: remove one direction from the residual stream and see what comes back.

RMU pushes forget activations at layer L towards ``c * u``; if the rest of the network merely reads
that large component as noise, projecting it out restores the forgotten answers (one direction
restored about 74% of RMU's WMDP-Bio gap on Gemma-2-2B). Two directions are tried: the run's control
vector ``u`` (RMU runs only) and the direction along which the edited model's activations differ most
from the original's on forget documents (``difference_direction``), which any method leaves.

>>> with project_out(model, layers=[2, 3, 4], direction=u):
...     texts = greedy_generate(model, tokenizer, prompts)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from repedit.generate import encode, pad, pad_id
from repedit.layers import capture_outputs, edit_outputs


def remove_component(hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``hidden - (hidden . d) d`` for the unit vector ``d`` along ``direction``; hidden (..., D)."""
    unit = (direction / direction.norm()).to(hidden.device, hidden.dtype)
    return hidden - (hidden @ unit)[..., None] * unit


@contextmanager
def project_out(model: nn.Module, layers: Sequence[int], direction: torch.Tensor) -> Iterator[None]:
    """Project ``direction`` out of the output of each decoder layer in ``layers`` inside the block."""
    with edit_outputs(model, layers, lambda hidden: remove_component(hidden, direction)):
        yield


@torch.no_grad()
def difference_direction(original: nn.Module, edited: nn.Module, tokenizer, texts: Sequence[str], layer: int,
                         batch_size: int = 8, max_length: int = 512) -> torch.Tensor:
    """The top principal direction of ``edited - original`` states of layer ``layer`` on ``texts``.

    Uncentered (the top right singular vector of the per-token differences): an edit that shifts
    every forget token the same way, as RMU's misdirection does, is a mean difference, which
    centering would remove. Returns a (D,) unit vector, float32 on CPU; its sign is arbitrary.
    """
    if not texts:
        raise ValueError("difference direction: no forget documents to compare the two models on")
    encoded = [ids[:max_length] for ids in encode(tokenizer, texts)]
    parts = []
    for start in range(0, len(encoded), batch_size):
        ids, mask = pad(encoded[start : start + batch_size], pad_id(tokenizer), "right")
        states = []
        for model in (original, edited):
            device = next(model.parameters()).device
            with capture_outputs(model, [layer]) as hidden:
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            states.append(hidden[layer].float().cpu())  # (B, T, D)
        parts.append((states[1] - states[0])[mask.bool()])  # (real tokens, D)
    differences = torch.cat(parts)
    return torch.linalg.svd(differences, full_matrices=False).Vh[0]
