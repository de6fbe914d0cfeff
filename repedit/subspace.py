"""The kind's own directions at L, kept in the forget term's goal (``--destination-keep``).

The ``unseen`` destination draws every forget token of a kind to one point, the frozen model's mean h_L on unseen
text of the kind: the features every document of the kind shares (its template) go with the document's own, and
an edit that erases them from the forget documents erases them from unseen documents of the kind too. Keeping the
forget token's frozen state along the kind's principal directions (those of the unseen texts' h_L explaining a
share ``keep`` of their variance) and sending only the rest to the mean leaves the edit what the kind does not share.
On the tiny target of real documents (three seeds) this halved the unseen PII biographies' rise at as much
forgetting; on the sim it brought the PII forget documents to the oracle's level with unseen ones +9-10%, where every
run before rose 16% or more, but stories and Wikipedia biographies, whose main directions carry their documents' own
content, stopped short (BENCHMARKS.md, "The kind's directions kept in the goal" and "Fifty-eighth call").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from statistics import median as statistics_median

import torch

from repedit.data import TASKS
from repedit.distributed import in_turns
from repedit.document_scores import ScoredDocuments
from repedit.rmu import PrefixBatch, layer_output, row_nll

# The shares ``--destination-keep-margin`` tries, largest first: at 0.6 every kind's goal fell short of its stop level
# on the sim's twenty-fourth build (BENCHMARKS.md, sixty-fourth call)
KEEP_SHARES = (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)


@dataclass
class KindStatistics:
    """Per task, from one pass over the unseen texts: the frozen model's mean h_L over its texts' real tokens (the
    ``unseen`` destination) and, where directions are kept, the principal directions of those h_L about the mean
    (``vectors``' columns), their variances descending (``values``), in float64: what a share's projector is cut
    from."""

    means: torch.Tensor  # (len(TASKS), D)
    values: torch.Tensor | None = None  # (len(TASKS), D)
    vectors: torch.Tensor | None = None  # (len(TASKS), D, D)

    def projectors(self, keep: Sequence[float]) -> torch.Tensor:
        """(len(TASKS), D, D) float32: for each task the projector onto the fewest principal directions that explain
        at least its share ``keep[task]`` of the variance (none at 0)."""
        assert self.values is not None and self.vectors is not None, "statistics taken without directions"
        projectors = []
        for values, vectors, share in zip(self.values, self.vectors, keep, strict=True):
            explained = values.cumsum(0) / values.sum().clamp(min=1e-30)
            kept = vectors[:, : int((explained < share).sum()) + 1 if share > 0 else 0]
            projectors.append(kept @ kept.T)
        return torch.stack(projectors).float()


@torch.no_grad()
def kind_statistics(model, cached: list[PrefixBatch], tasks: list[str] | None, first: int, layer: int,
                    directions: bool = False) -> KindStatistics:
    """``KindStatistics`` of the unseen texts ``cached`` (``tasks[i]``: the i-th cached row's task), with their
    principal directions if ``directions``. A task without texts (every task, for texts without tasks) gets the
    statistics of all of them."""
    width = model.config.hidden_size
    sums = torch.zeros(len(TASKS), width, device=cached[0].hidden.device)
    counts = torch.zeros(len(TASKS), device=sums.device)
    moments = torch.zeros(len(TASKS), width, width, device=sums.device, dtype=torch.float64) if directions else None
    row = 0
    for batch in cached:
        hidden = layer_output(model, batch, first, layer).float()  # (B, T, D)
        mask = batch.mask.to(hidden.dtype)
        mine = tasks[row : row + len(mask)] if tasks else [TASKS[0]] * len(mask)
        index = torch.tensor([TASKS.index(t) for t in mine], device=sums.device)
        sums.index_add_(0, index, torch.einsum("btd,bt->bd", hidden, mask).float())  # autocast: bf16
        counts.index_add_(0, index, mask.sum(dim=1))
        if moments is not None:
            for states, real, t in zip(hidden.double(), mask.bool(), index.tolist(), strict=True):
                moments[t] += states[real].T @ states[real]
        row += len(mask)
    means = sums / counts.clamp(min=1).unsqueeze(1)
    overall = sums.sum(dim=0) / counts.sum().clamp(min=1)
    present = counts > 0
    means = torch.where(present.unsqueeze(1), means, overall)
    if moments is None:
        return KindStatistics(means)
    moments = torch.where(present[:, None, None], moments / counts.clamp(min=1)[:, None, None].double(),
                          moments.sum(0) / counts.sum().clamp(min=1).double())
    centred = means.double()
    found = [torch.linalg.eigh(covariance) for covariance in moments - centred[:, :, None] * centred[:, None, :]]
    return KindStatistics(means, torch.stack([values.flip(0).clamp(min=0) for values, _ in found]),  # descending
                          torch.stack([vectors.flip(1) for _, vectors in found]))


def largest_clearing(past_level: dict[float, float], margin: float) -> float | None:
    """The largest share whose goal takes the documents ``past_level[share]`` nats past their stop level, at least
    ``margin``: the most of the kind's own directions the goal can keep and still leave the run room to stop (None:
    no share does)."""
    return max((share for share, past in past_level.items() if past >= margin), default=None)


@torch.no_grad()
def goal_nlls(model, documents: ScoredDocuments, tasks: list[str], first: int, layer: int, means: torch.Tensor,
              projectors: torch.Tensor) -> torch.Tensor:
    """Each of ``documents``' mean token NLL (in the texts' order; ``tasks[i]`` the i-th's task) with every token's
    h_``layer`` written at its goal (``kept_goal``, its task's ``means`` and ``projectors``), read through the layers
    above: the NLL an edit that met its goal exactly would leave, the most that goal can forget. The batches are dealt
    over the ranks."""
    starts = list(accumulate((len(batch.mask) for batch in documents.batches), initial=0))[:-1]
    kinds = [torch.tensor([TASKS.index(tasks[j]) for j in documents.order[start : start + len(batch.mask)]],
                          device=batch.mask.device) for start, batch in zip(starts, documents.batches, strict=True)]

    def at_goal(i: int) -> torch.Tensor:
        batch = documents.batches[i]
        hidden = layer_output(model, batch, first, layer)
        goal = kept_goal(means, projectors, hidden, kinds[i]).to(hidden.dtype)
        return row_nll(model, goal, batch, layer, torch.ones_like(kinds[i], dtype=torch.bool)).float()

    return documents.in_given_order(torch.cat(in_turns(range(len(documents.batches)), at_goal)))


def clearing_shares(model, documents: ScoredDocuments, tasks: list[str], first: int, layer: int,
                    statistics: KindStatistics, levels: torch.Tensor | float, margin: float,
                    shares: Sequence[float] = KEEP_SHARES) -> tuple[tuple[float, ...], dict[str, dict[float, float]]]:
    """``--destination-keep-margin``: per task, the largest of ``shares`` whose goal, written in exactly at h_``layer``
    (``goal_nlls``), takes the median NLL of the task's ``documents`` (the forget documents, ``tasks[i]`` the i-th's)
    at least ``margin`` nats past its stop level (``levels``: one a task, or one for all); 0, the mean alone, where
    none does or the task has no documents. A share whose goal stops short of the level cannot calibrate the kind,
    and one just past it leaves the run little room (BENCHMARKS.md, sixty-first and sixty-third calls). Also returns,
    per task with documents, how far past its level each share tried took them."""
    past: dict[str, dict[float, float]] = {task: {} for task in sorted(set(tasks), key=TASKS.index)}
    for share in sorted(shares, reverse=True):  # the first that clears, from the top, is the largest
        nll = goal_nlls(model, documents, tasks, first, layer, statistics.means,
                        statistics.projectors([share] * len(TASKS))).tolist()
        for task, by_share in past.items():
            level = float(levels[TASKS.index(task)]) if isinstance(levels, torch.Tensor) else levels
            by_share[share] = statistics_median([v for v, t in zip(nll, tasks, strict=True) if t == task]) - level
        if all(largest_clearing(by_share, margin) is not None for by_share in past.values()):
            break
    return tuple(largest_clearing(past.get(task, {}), margin) or 0.0 for task in TASKS), past


def kept_goal(destination: torch.Tensor, projectors: torch.Tensor, frozen: torch.Tensor,
              tasks: torch.Tensor) -> torch.Tensor:
    """(B, T, D) float32: each forget row's goal, its task's mean (``destination``, (len(TASKS), D)) plus its frozen
    h_L (``frozen``, (B, T, D)) less that mean, projected on its task's kept directions
    (``KindStatistics.projectors``)."""
    means = destination[tasks].float().unsqueeze(1)  # (B, 1, D)
    goal = torch.empty(frozen.shape, dtype=torch.float32, device=frozen.device)
    for t in tasks.unique().tolist():
        rows = tasks == t
        goal[rows] = means[rows] + (frozen[rows].float() - means[rows]) @ projectors[t]
    return goal
