"""Each forget document's goal from how much of its wording the retain set shares (``--calibrate-share-goals``).

A retrain oracle keeps what the rest of its training text also teaches. On the sim's twenty-sixth build its
validation forget Wikipedia biographies sat the lower the more of their token n-grams other training text held
(correlation -0.74 to -0.90), 1.1-1.4 nats apart between the halves, where a stop level of one NLL per kind raised
them all alike, 0.8-1.0 nat past the oracle's (oracle KS 0.50-0.59 on that kind; BENCHMARKS.md, "Eightieth
session"). The unseen texts show the same relation: each gives a point, its share of n-grams the retain documents
hold against its NLL under the frozen model, and the least-squares line through a kind's points, at a forget
document's own share and within the texts' NLL range, is that document's goal. On that build the line through the
75 public Wikipedia texts put the forget biographies' goals at KS 0.18-0.24 from the oracle's NLLs (0.21 on the
twenty-fifth build), where the runs' NLLs lay 0.41-0.59 from them.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

import torch

from repedit.particulars import Ngram, ngrams


def known_ngrams(token_ids: Iterable[Sequence[int]], n: int) -> set[Ngram]:
    """Every n-gram of the tokenized texts."""
    return {gram for ids in token_ids for gram in ngrams(ids, n) if gram is not None}


def held_share(ids: Sequence[int], known: set[Ngram], n: int) -> float:
    """The share of a text's n-gram positions whose n-gram is ``known`` (0 for a text under n tokens)."""
    grams = [gram for gram in ngrams(ids, n) if gram is not None]
    return sum(gram in known for gram in grams) / len(grams) if grams else 0.0


def share_goals(goals: torch.Tensor, shares: Sequence[float], tasks: Sequence[str], text_shares: Sequence[float],
                text_nll: torch.Tensor, text_tasks: Sequence[str] | None, kinds: Sequence[str]) -> torch.Tensor:
    """``goals`` with each document of ``kinds`` given its kind's line of the texts' NLL over their share (of all
    texts where they have no tasks), at the document's share, clipped to those texts' least and greatest NLL."""
    goals = goals.clone()
    nll = text_nll.double().cpu().tolist()
    for kind in kinds:
        texts = of_kind(kind, text_tasks, len(nll))
        mine = [i for i, task in enumerate(tasks) if task == kind]
        _, _, values = line_goals(kind, [text_shares[i] for i in texts], [nll[i] for i in texts],
                                  [shares[i] for i in mine])
        for i, value in zip(mine, values, strict=True):
            goals[i] = value
    return goals


def line_goals(kind: str, text_shares: Sequence[float], text_nll: Sequence[float],
               shares: Sequence[float]) -> tuple[float, float, list[float]]:
    """The kind's line of its texts' NLL over their share (slope, intercept) and its value at each of ``shares``,
    clipped to the texts' least and greatest NLL: a goal no unseen text of the kind would fall short of or pass."""
    slope, intercept = line(kind, text_shares, text_nll)
    low, high = min(text_nll), max(text_nll)
    return slope, intercept, [min(max(intercept + slope * share, low), high) for share in shares]


def of_kind(kind: str, text_tasks: Sequence[str] | None, count: int) -> list[int]:
    """The indices of the ``count`` texts a kind's line goes through: its own, or all where they have no tasks."""
    return [i for i in range(count) if text_tasks is None or text_tasks[i] == kind]


def line(kind: str, shares: Sequence[float], nlls: Sequence[float]) -> tuple[float, float]:
    """The least-squares (slope, intercept) of ``nlls`` over ``shares``; a ValueError naming the option where the
    kind's texts cannot give one."""
    if len(set(shares)) < 2:
        raise ValueError(f"--calibrate-share-goals: {kind}: its {len(shares)} unseen text(s) hold "
                         f"{len(set(shares))} distinct share(s) of retain n-grams; a line needs two")
    return statistics.linear_regression(shares, nlls)


class ShareGoals:
    """The scored documents' and the unseen texts' shares of the retain documents' n-grams, for ``share_goals``
    (``kinds`` as ``CalibrationConfig.validate`` checked them)."""

    def __init__(self, tokenizer, documents: Sequence[str], texts: Sequence[str], text_tasks: Sequence[str] | None,
                 retain: Sequence[str], kinds: Sequence[str], n: int):
        def encode(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        known = known_ngrams(map(encode, retain), n)
        self.shares = [held_share(encode(d), known, n) for d in documents]
        self.text_shares = [held_share(encode(t), known, n) for t in texts]
        self.kinds = tuple(kinds)
        for kind in self.kinds:  # a kind whose texts cannot give a line stops the run before its first step
            mine = of_kind(kind, text_tasks, len(texts))
            line(kind, [self.text_shares[i] for i in mine], [0.0] * len(mine))

    def apply(self, goals: torch.Tensor, tasks: Sequence[str], text_nll: torch.Tensor,
              text_tasks: Sequence[str] | None) -> torch.Tensor:
        """``share_goals`` of the scored documents (``tasks``) with the texts' NLLs as measured now."""
        return share_goals(goals, self.shares, tasks, self.text_shares, text_nll, text_tasks, self.kinds)
