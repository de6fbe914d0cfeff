"""Cached batches held in CPU memory, each moved to the device for the step that reads it (``--offload``).

A run caches every batch it trains on as it enters the first edited layer (``rmu.cache_prefix``), with the
frozen model's activations at L, and the anchor's texts with theirs. On the OLMo-7B shape and the challenge's
train split the step caches alone hold 8.3 GB by their token count; offloaded, the preset's run there peaks at 31.3 GiB
instead of 41.2, and a step's share crosses from pinned memory in 12 ms, 3% of the step, on an H200 (BENCHMARKS.md,
"Fifty-sixth call" and "Fifty-seventh call"). Only torch and the standard library, so that ``repedit export`` can
inline it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import torch

Cached = TypeVar("Cached")


def _mapped(item: Any, move: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(item, torch.Tensor):
        return move(item)
    if type(item) in (list, tuple):
        return type(item)(_mapped(x, move) for x in item)
    if isinstance(item, dict):
        return {k: _mapped(v, move) for k, v in item.items()}
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.replace(item, **{f.name: _mapped(getattr(item, f.name), move)
                                            for f in dataclasses.fields(item) if f.init})
    return item


def to_host(item: Cached) -> Cached:
    """``item`` (tensors, and lists, tuples, dicts and dataclasses of them) with every tensor in CPU memory,
    pinned where a GPU copies from it, and copied there straight, not through pageable memory, where the copy ran at
    1.3 GB/s on an H200 (BENCHMARKS.md, "Fifty-fifth call")."""
    pin = torch.cuda.is_available()

    def copied(tensor: torch.Tensor) -> torch.Tensor:
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=pin)
        return host.copy_(tensor, non_blocking=pin and tensor.is_cuda)

    moved = _mapped(item, copied)
    if pin:
        torch.cuda.synchronize()  # every copy landed before the host memory is read
    return moved


def to_device(item: Cached, device: torch.device) -> Cached:
    """``item`` with every tensor on ``device``; those already there are the same tensors."""
    return _mapped(item, lambda t: t.to(device, non_blocking=True))
