"""Kinds held where a check found them at chance (``--calibrate-hold-kinds``).

The stop rule writes one model for every kind, and the kinds do not reach chance together: on the sim a kind at its
unseen documents is carried past them by the edit the others still need (c23 and c25 stopped with stories short and
PII biographies past theirs, BENCHMARKS.md "Seventy-second call"). Once a check finds a kind's attack within the
tolerance of 0.5, its forget documents leave the forget term and their h_L of that check joins the anchor: the kinds
still short go on, and the one at chance is held there.
"""

from __future__ import annotations

import torch

from repedit.document_scores import ScoredDocuments
from repedit.layers import layer_inputs_for
from repedit.rmu import PrefixBatch, layer_output


class KindHolds:
    """The kinds held so far, and the anchor batches that hold them: each kind's scored documents with their h_L of
    the check that found the kind at chance."""

    def __init__(self, documents: ScoredDocuments, tasks: list[str], tolerance: float, enabled: bool):
        self.documents, self.tasks, self.tolerance, self.enabled = documents, tasks, tolerance, enabled
        self.kinds: list[str] = []
        self.batches: list[tuple[PrefixBatch, torch.Tensor]] = []
        self.held = torch.zeros(len(tasks), dtype=torch.bool)  # per scored document, in the given order

    @torch.no_grad()
    def update(self, model, task_auc: dict[str, float], first: int, layer: int) -> torch.Tensor:
        """Hold every kind not yet held whose attack AUC is within the tolerance of 0.5 (either side), at the model's
        h_L now. Returns which scored documents are held ((len(tasks),) bool, CPU)."""
        if not self.enabled:
            return self.held
        for task in [t for t, auc in task_auc.items() if t not in self.kinds and abs(auc - 0.5) <= self.tolerance]:
            self.kinds.append(task)
            start = 0
            for batch in self.documents.batches:  # batch rows follow ``order`` through the batches
                given = self.documents.order[start : start + batch.mask.shape[0]]
                start += batch.mask.shape[0]
                rows = torch.tensor([self.tasks[i] == task for i in given], device=batch.mask.device)
                if bool(rows.any()):
                    mask = batch.mask[rows, : int(batch.mask[rows].sum(dim=1).max())]
                    kind = PrefixBatch(batch.hidden[rows, : mask.shape[1]], layer_inputs_for(model, mask), mask,
                                       batch.labels[rows, : mask.shape[1]])
                    self.batches.append((kind, layer_output(model, kind, first, layer)))
            self.held |= torch.tensor([t == task for t in self.tasks])
        return self.held
