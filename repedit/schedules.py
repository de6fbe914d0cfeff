"""The order in which the baselines see rows: which forget and retain rows each optimizer step uses.

- ``epoch_schedule``: gradient difference and NPO as the organizers ran them, epoch after epoch over
  the forget set, each batch beside as many retain rows.
- ``chunk_schedule``: the 1st-placed team's sequence, chunk after chunk of the forget set.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Step(NamedTuple):
    """The rows one optimizer step trains on, as positions in the (shuffled) forget and retain lists."""

    forget: list[int]
    retain: list[int]
    epoch: int
    chunk: int | None = None

    def where(self) -> dict[str, int]:
        """The step's place in the schedule, for the log."""
        return {"epoch": self.epoch} if self.chunk is None else {"chunk": self.chunk, "epoch": self.epoch}


def _cyclic(start: int, count: int, n: int) -> list[int]:
    """``count`` positions from ``start`` onwards, wrapping around a list of ``n``."""
    return [(start + j) % n for j in range(count)]


def epoch_schedule(n_forget: int, n_retain: int, batch_size: int, epochs: int, seed: int) -> list[Step]:
    """Each epoch the forget rows in a new seeded order, each batch beside as many retain rows, taken
    cyclically so that every retain row is used before any repeats."""
    generator = torch.Generator().manual_seed(seed)
    steps, cursor = [], 0
    for epoch in range(epochs):
        order = torch.randperm(n_forget, generator=generator).tolist()
        for start in range(0, n_forget, batch_size):
            forget = order[start : start + batch_size]
            steps.append(Step(forget, _cyclic(cursor, len(forget), n_retain), epoch))
            cursor += len(forget)
    return steps


def chunk_schedule(n_forget: int, n_retain: int, chunk_size: int, retain_ratio: int, batch_size: int,
                   epochs: int) -> list[Step]:
    """The winners' sequence: chunk after chunk of the forget rows, each chunk's rows given
    ``retain_ratio`` retain rows apiece (taken cyclically, continuing across chunks) and trained for
    ``epochs`` passes before the next chunk starts; a step keeps each forget row with its retain rows.
    """
    steps, cursor = [], 0
    for chunk, first in enumerate(range(0, n_forget, chunk_size)):
        members = list(range(first, min(first + chunk_size, n_forget)))
        partners = _cyclic(cursor, retain_ratio * len(members), n_retain)  # members[i]'s: [i*r, (i+1)*r)
        cursor += len(partners)
        for epoch in range(epochs):
            for start in range(0, len(members), batch_size):
                retain = partners[start * retain_ratio : (start + batch_size) * retain_ratio]
                steps.append(Step(members[start : start + batch_size], retain, epoch, chunk))
    return steps
