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

import torch

from repedit.data import TASKS
from repedit.rmu import PrefixBatch, layer_output


@torch.no_grad()
def unseen_statistics(model, cached: list[PrefixBatch], tasks: list[str] | None, first: int, layer: int,
                      keep: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """From one pass over the unseen texts: (len(TASKS), D), the frozen model's mean h_layer over the real tokens of
    each task's texts, the ``unseen`` destination; with ``keep`` (``--destination-keep``), (len(TASKS), D, D) float32,
    for each task the projector onto the fewest principal directions of its texts' h_layer (centred on that mean)
    that explain at least its share ``keep[task]`` of their variance (none at 0), else None. A task without texts
    (every task, for texts without tasks) gets the statistics of all of them."""
    width = model.config.hidden_size
    sums = torch.zeros(len(TASKS), width, device=cached[0].hidden.device)
    counts = torch.zeros(len(TASKS), device=sums.device)
    moments = torch.zeros(len(TASKS), width, width, device=sums.device, dtype=torch.float64) if keep else None
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
    if moments is None or keep is None:
        return means, None
    moments = torch.where(present[:, None, None], moments / counts.clamp(min=1)[:, None, None].double(),
                          moments.sum(0) / counts.sum().clamp(min=1).double())
    centred = means.double()
    covariance = moments - centred[:, :, None] * centred[:, None, :]
    projectors = []
    for t in range(len(TASKS)):
        values, vectors = torch.linalg.eigh(covariance[t])  # ascending
        values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
        share = values.cumsum(0) / values.sum().clamp(min=1e-30)
        kept = vectors[:, : int((share < keep[t]).sum()) + 1 if keep[t] > 0 else 0]
        projectors.append(kept @ kept.T)
    return means, torch.stack(projectors).float()


def kept_goal(destination: torch.Tensor, projectors: torch.Tensor, frozen: torch.Tensor,
              tasks: torch.Tensor) -> torch.Tensor:
    """(B, T, D) float32: each forget row's goal, its task's mean (``destination``, (len(TASKS), D)) plus its frozen
    h_L (``frozen``, (B, T, D)) less that mean, projected on its task's kept directions (``unseen_statistics``)."""
    means = destination[tasks].float().unsqueeze(1)  # (B, 1, D)
    goal = torch.empty(frozen.shape, dtype=torch.float32, device=frozen.device)
    for t in tasks.unique().tolist():
        rows = tasks == t
        goal[rows] = means[rows] + (frozen[rows].float() - means[rows]) @ projectors[t]
    return goal
