"""Activation steering: add a direction to, or project it out of, layer outputs while a block runs.

Plain forward hooks (not nnsight), so steering acts inside ``generate`` too, at every position of
every step. Hooks are registered inside ``try`` and removed in ``finally``: after the block, even
one left by an exception, the model computes exactly what it did before. ``probes.collect`` (hooks
or nnsight) reads a layer's output before other forward hooks run, so states collected while
steering layer k show the edit from layer k + 1 on.

>>> direction = probe.direction(4)                # forget-minus-retain probe direction at layer 4
>>> with steer(model, 4, direction, scale=-probe.at(4).gap):
...     model.generate(ids, max_new_tokens=20)     # forget prompts pushed towards retain states
>>> with ablate(model, [3, 4, 5], direction):
...     model(ids)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from repedit.ablate import remove_component
from repedit.layers import edit_outputs as layer_edits


def _as_list(layers: int | Sequence[int]) -> list[int]:
    return [layers] if isinstance(layers, int) else list(layers)


@contextmanager
def edit_outputs(model: nn.Module, layers: int | Sequence[int],
                 edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace each named layer's output hidden state h (B, T, D) by ``edit(h)`` inside the block
    (``repedit.layers.edit_outputs``, for one layer or several)."""
    with layer_edits(model, _as_list(layers), edit):
        yield


def _vector(direction: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return direction.to(device=like.device, dtype=like.dtype)


@contextmanager
def steer(model: nn.Module, layers: int | Sequence[int], direction: torch.Tensor,
          scale: float = 1.0) -> Iterator[None]:
    """Add ``scale * direction`` (D,) to the output of each layer in ``layers`` at every position."""
    with edit_outputs(model, layers, lambda h: h + scale * _vector(direction, h)):
        yield


@contextmanager
def ablate(model: nn.Module, layers: int | Sequence[int], direction: torch.Tensor) -> Iterator[None]:
    """Project ``direction`` (D,) out of the output of each layer in ``layers``: h - (h . u) u."""
    with edit_outputs(model, layers, lambda hidden: remove_component(hidden, direction)):
        yield
