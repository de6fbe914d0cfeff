"""Anchor texts that never repeat: each batch is newly invented documents of every kind, held at the frozen
model's h_L, so the edit cannot keep its anchors by fitting them one by one.

Why: the anchor holds the texts it holds and not unseen ones of the same kinds (on the sim, its own texts +1.1%,
the withheld documents +6-11%; BENCHMARKS.md, thirty-first call), and on the tiny target the more invented
documents it held, the further the hold reached. A stream is the limit of "more". The frozen model's h_L on a
new batch is read with the edited weights swapped for copies taken before the first step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from repedit.calibration import document_batches
from repedit.data import TASKS
from repedit.rmu import PrefixBatch, cache_prefix, layer_output
from repedit.synth import invented_documents

__all__ = ["FreshAnchors", "frozen_weights"]

SEED = 1_000_003  # step s invents with seed SEED + s; the fixed --invented-anchors use 7


@contextmanager
def frozen_weights(trainable: dict[str, torch.nn.Parameter], frozen: dict[str, torch.Tensor]) -> Iterator[None]:
    """The trainable parameters hold ``frozen``'s tensors inside the block (no copy: their storage is swapped).
    Autocast keeps its low-precision copy of a parameter for the rest of its region, whatever the parameter holds
    later: the cache is cleared on the way in and out, so neither side reads the other's weights."""
    edited = {name: param.data for name, param in trainable.items()}
    torch.clear_autocast_cache()
    try:
        for name, param in trainable.items():
            param.data = frozen[name]
        yield
    finally:
        for name, param in trainable.items():
            param.data = edited[name]
        torch.clear_autocast_cache()


class FreshAnchors:
    """Batches of ``size`` documents invented for one step each (a story, a PII biography and a Wikipedia-style
    biography in turn), with the frozen model's h_L at ``layer``: ``model`` with ``trainable`` as they are now."""

    def __init__(self, model, trainable: dict[str, torch.nn.Parameter], tokenizer, size: int, max_length: int,
                 first: int, layer: int):
        self.model, self.trainable = model, trainable
        self.frozen = {name: param.detach().clone() for name, param in trainable.items()}
        self.tokenizer, self.size, self.max_length = tokenizer, size, max_length
        self.first, self.layer = first, layer

    def texts(self, step: int) -> list[str]:
        """The documents of ``step``'s batch (the same for a step on every call and every process)."""
        made = invented_documents(-(-self.size // len(TASKS)), seed=SEED + step)
        return [d["text"] for d in made[: self.size]]

    @torch.no_grad()
    def batch(self, step: int) -> tuple[PrefixBatch, torch.Tensor]:
        """``step``'s batch as it enters the first edited layer, and the frozen model's h_L on it."""
        (tokens,) = document_batches(self.texts(step), self.tokenizer, self.max_length, self.size)
        prefix = cache_prefix(self.model, tokens, self.first)  # the layers below the edit never change
        with frozen_weights(self.trainable, self.frozen):
            return prefix, layer_output(self.model, prefix, self.first, self.layer)
