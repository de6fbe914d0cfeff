"""Round-to-nearest weight quantization, the cheapest attack on unlearning.

Methods that move weights only slightly (gradient ascent at a small learning rate) can leave the
forgotten solution a rounding step away: 4-bit quantization brought back most of what such methods
removed on MUSE (arXiv 2410.16454). This is fake quantization: every ``nn.Linear`` weight is rounded
to a symmetric grid of ``2**(bits-1) - 1`` steps either side of zero, one scale per output row, and
stored back in the working dtype, so the model runs as before but with exactly the values an
int8/int4 kernel would see. Embeddings stay as they are (as in bitsandbytes' and torchao's defaults).

>>> quantize_linear_weights(model, bits=4)   # in place; quantize a copy
"""

from __future__ import annotations

import torch
from torch import nn

BITS = (8, 4)


def quantize_rows(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``weight`` (out, in) rounded to ``bits``-bit symmetric integers times a per-row scale.

    The scale of a row is its largest magnitude over ``2**(bits-1) - 1``, so that value maps to the
    top of the grid; an all-zero row stays zero.
    """
    if bits not in BITS:
        raise ValueError(f"--bits: {bits} is not one of {BITS}")
    levels = 2 ** (bits - 1) - 1  # 127 for int8, 7 for int4
    values = weight.float()
    scale = values.abs().amax(dim=1, keepdim=True) / levels  # (out, 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return ((values / scale).round().clamp(-levels, levels) * scale).to(weight.dtype)


@torch.no_grad()
def quantize_linear_weights(model: nn.Module, bits: int) -> int:
    """Replace every ``nn.Linear`` weight of ``model`` by its quantized value; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.copy_(quantize_rows(module.weight, bits))
            count += 1
    return count
