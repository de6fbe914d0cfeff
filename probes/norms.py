"""Per-layer statistics of the per-token L2 norm, which RMU's steering coefficient is set against.

RMU pushes the target layer's output on forget text towards ``c * u``; ``c`` must exceed the
typical norm there, which grows with depth. Adaptive RMU sets ``c = beta * mean ||h_L||`` over the
real tokens of the frozen model's forget batches (``repedit.step_cache.cached_passes``' ``norm_sums``);
``rmu_sequences`` gives exactly the token sequences RMU trains on, so ``NormStats.coeff`` is the
coefficient ``--adaptive beta`` would use.

>>> stats = norm_stats(model, rmu_sequences(forget_rows, tokenizer), tokenizer.pad_token_id)
>>> stats.coeff(beta=5.0, layer=7)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from probes.collect import layer_batches, resolve_layers
from probes.record import Record
from repedit.data import Row, encode_example


@dataclass
class NormStats(Record):
    layers: list[int]
    mean: list[float]  # mean over real tokens of ||h_layer||
    std: list[float]  # population standard deviation of the same
    tokens: int

    def at(self, layer: int) -> tuple[float, float]:
        if layer not in self.layers:
            raise ValueError(f"layer {layer} has no norm statistics; known: {self.layers}")
        index = self.layers.index(layer)
        return self.mean[index], self.std[index]

    def coeff(self, beta: float, layer: int) -> float:
        """Adaptive RMU's steering coefficient: ``beta`` times the mean norm at ``layer``."""
        return beta * self.at(layer)[0]


def token_norm_stats(batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     layers: Sequence[int]) -> NormStats:
    """Accumulate norm statistics over ``(hidden (L, B, T, D), mask (B, T))`` batches."""
    total = torch.zeros(len(layers), dtype=torch.float64)
    squares = torch.zeros(len(layers), dtype=torch.float64)
    count = 0
    for hidden, mask in batches:
        norms = hidden.double().norm(dim=-1)[:, mask.bool()]  # (L, real tokens)
        total += norms.sum(1)
        squares += norms.pow(2).sum(1)
        count += norms.shape[1]
    if count == 0:
        raise ValueError("norm statistics: no tokens")
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp(min=0).sqrt()
    return NormStats(list(layers), mean.tolist(), std.tolist(), count)


def norm_stats(model: nn.Module, sequences: Sequence[Sequence[int]], pad_id: int,
               layers: Sequence[int] | None = None, batch_size: int = 8) -> NormStats:
    """Norm statistics of ``model`` on token ``sequences``, streamed: no state is kept."""
    chosen = resolve_layers(model, layers)
    return token_norm_stats(layer_batches(model, sequences, pad_id, chosen, batch_size), chosen)


def rmu_sequences(rows: Sequence[Row], tokenizer, max_length: int = 512) -> list[list[int]]:
    """The token sequences RMU feeds the model for ``rows``: prompt, answer and EOS (``encode_example``)."""
    return [encode_example(tokenizer, row.input, row.output, max_length).input_ids for row in rows]
