"""Data-parallel RMU through ``torch.distributed``: the few collectives the RMU loop makes.

``torchrun --nproc_per_node N -m repedit.cli unlearn ...`` and ``accelerate launch -m repedit.cli
unlearn ...`` both set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
``joined`` starts the process group from them (nccl on CUDA, gloo on CPU). Each rank takes its share
of every forget+retain batch's rows (``share``). Every mean in the loss divides by the count over all
ranks (``total``), so each rank's loss is its rows' part of the one-process loss, and the sum of the
ranks' gradients (``all_reduce_grads``) is the one-process gradient of the whole batch. A calibration
check's documents are dealt over the ranks (``in_turns``) and their scores gathered on every rank, so each
reaches the check's decision (calibrated documents, level, stop) from the same numbers; the time budget's
verdict is rank 0's, ``broadcast``, so every rank stops together; only rank 0 writes. Without a process
group (one process) every helper is the identity and nothing is communicated.

Only torch and the standard library, so that ``repedit export`` can inline it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist


def world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    """Whether this run is spread over a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """Whether this process writes files and shows progress: rank 0, or the only process."""
    return not active() or dist.get_rank() == 0


@contextmanager
def joined(device: torch.device) -> Iterator[torch.device]:
    """Join the launcher's process group for the block, if ``WORLD_SIZE`` > 1; yields this process's
    device (``cuda:LOCAL_RANK`` on CUDA). A group started here is destroyed on leaving."""
    started = False
    if world_size() > 1 and dist.is_available() and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    elif active() and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    try:
        yield device
        if active():
            dist.barrier()  # the others wait until the main process has written the checkpoint
    finally:
        if started:
            dist.destroy_process_group()


def deal(batch: dict[str, torch.Tensor], forget_rows: int, parts: int) -> list[tuple[dict[str, torch.Tensor], int]]:
    """A forget+retain batch dealt into ``parts`` batches: each its block of the forget rows, then of the retain rows.

    Rows go in contiguous blocks (``tensor_split``), so parts differ by at most one row per set, and a
    part may hold no row of a set smaller than ``parts``. Per-forget-row entries (``documents``,
    ``tasks``) and per-retain-row ones (``retain_index``) follow their rows. Returns (batch, forget rows) per part.
    """
    rows = batch["input_ids"].shape[0]
    dealt = []
    for forget, retain in zip(torch.arange(forget_rows).tensor_split(parts),
                              torch.arange(forget_rows, rows).tensor_split(parts), strict=True):
        picked = {"documents": forget, "tasks": forget, "retain_index": retain - forget_rows}
        everything = torch.cat([forget, retain])
        dealt.append(({k: v[picked.get(k, everything)] for k, v in batch.items()}, len(forget)))
    return dealt


def share(batch: dict[str, torch.Tensor], forget_rows: int) -> tuple[dict[str, torch.Tensor], int]:
    """This rank's rows of a forget+retain batch (``deal``'s part of it). Returns (batch, forget rows)."""
    if not active():
        return batch, forget_rows
    size = dist.get_world_size()
    if batch["input_ids"].shape[0] < size:
        raise ValueError(f"--batch-size: a batch of {batch['input_ids'].shape[0]} rows cannot be shared by "
                         f"{size} processes; raise it or use fewer processes")
    return deal(batch, forget_rows, size)[dist.get_rank()]


def total(count: torch.Tensor) -> torch.Tensor:
    """``count`` summed over the ranks (a loss's denominator: tokens or rows of the whole batch), on
    ``count``'s device: a CPU tensor goes through this rank's GPU where the backend (NCCL) needs one."""
    if not active():
        return count
    summed = count.detach().to(_collective_device(), copy=True)
    dist.all_reduce(summed)
    return summed.to(count.device)


def _collective_device() -> torch.device:
    """Where this rank's collectives run: its GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum the trainable weights' gradients over the ranks (one flat buffer, one collective).

    Each rank's loss already divides by the whole batch's counts, so the sum is the one-process gradient.
    """
    if not active():
        return
    params = list(params)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    for param, part in zip(params, flat.split([g.numel() for g in grads]), strict=True):
        param.grad = part.view_as(param).clone()


Item = TypeVar("Item")


def in_turns(items: Sequence[Item], work: Callable[[Item], torch.Tensor]) -> list[torch.Tensor]:
    """``work`` on every item, the items dealt over the ranks in turn (rank r takes r, r + size, ...), each
    result on the CPU and all of them gathered on every rank in the items' order: a check's scoring, which
    one rank alone would take while the others wait (on the 7B shape about 10 s a check on one H200)."""
    if not active():
        return [work(item).cpu() for item in items]
    size = dist.get_world_size()
    mine = [work(item).cpu() for item in items[dist.get_rank()::size]]
    everyone: list = [None] * size
    dist.all_gather_object(everyone, mine)
    return [everyone[i % size][i // size] for i in range(len(items))]


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (a decision: stop now, the time budget's verdict)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
