"""Logit lens on QA rows: from which layer the answer is already the model's next-token choice.

Each layer's residual at the last prompt position goes through the final norm and the LM head, as
the last layer's does. At the last layer this is the model's own next-token distribution, so a
row whose answer token is top there is one that greedy generation starts answering correctly.
The answer's first token is the first token of ``" " + answer``, as training encodes it
(``repedit.data.encode_example``).

>>> lens = logit_lens(model, tokenizer, forget_rows + retain_rows)
>>> lens.summary()["forget/Task2"]["emerges"]   # median layer where forget answers emerge
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from probes.collect import collect
from probes.record import Record
from repedit.data import Row
from repedit.layers import base_model


@dataclass
class LensRow:
    id: str
    task: str
    split: str | None
    answer_token: int
    ranks: list[int]  # per probed layer: rank of the answer token (0 = top prediction)
    probs: list[float]  # per probed layer: its probability

    def emerges(self, layers: Sequence[int]) -> int | None:
        """The earliest layer from which the answer stays top to the last probed layer; None if never."""
        found = None
        for layer, rank in zip(reversed(layers), reversed(self.ranks), strict=True):
            if rank != 0:
                break
            found = layer
        return found


@dataclass
class LensResult(Record):
    layers: list[int]
    rows: list[LensRow] = field(default_factory=list)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LensResult:
        return cls(values["layers"], [LensRow(**row) for row in values["rows"]])

    def groups(self) -> dict[str, list[LensRow]]:
        """Rows by ``split/task`` (or ``task`` for rows without a split), sorted by key."""
        grouped: dict[str, list[LensRow]] = {}
        for row in self.rows:
            grouped.setdefault(f"{row.split}/{row.task}" if row.split else row.task, []).append(row)
        return dict(sorted(grouped.items()))

    def hit_rate(self, rows: Sequence[LensRow]) -> list[float]:
        """Per layer, the fraction of ``rows`` whose answer token is the top prediction."""
        return [sum(row.ranks[k] == 0 for row in rows) / len(rows) for k in range(len(self.layers))]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per group: hit rate by layer, answered (hit rate at the last layer), median emergence layer."""
        result = {}
        for key, rows in self.groups().items():
            emerged = [e for e in (row.emerges(self.layers) for row in rows) if e is not None]
            rate = self.hit_rate(rows)
            result[key] = {"rows": len(rows), "hit_rate": rate, "answered": rate[-1],
                           "emerges": statistics.median(emerged) if emerged else None}
        return result


def answer_token(tokenizer, answer: str) -> int:
    return tokenizer(" " + answer, add_special_tokens=False)["input_ids"][0]


@torch.no_grad()
def lens_logits(model: nn.Module, states: torch.Tensor) -> torch.Tensor:
    """Next-token logits read from residual states (..., D) through the final norm and LM head."""
    parameter = next(model.parameters())
    head: nn.Module = model.get_output_embeddings()  # type: ignore[operator]
    norm: nn.Module = base_model(model).norm  # type: ignore[assignment]
    return head(norm(states.to(parameter.device, parameter.dtype))).float().cpu()


def logit_lens(model: nn.Module, tokenizer, rows: Sequence[Row], layers: Sequence[int] | None = None,
               batch_size: int = 8) -> LensResult:
    """Rank and probability of each QA row's first answer token at every layer's last prompt position."""
    qa = [row for row in rows if row.kind == "qa"]
    if not qa:
        raise ValueError("logit lens: no question-answer rows")
    acts = collect(model, tokenizer, [row.input for row in qa], layers, pooling="last", batch_size=batch_size)
    targets = torch.tensor([answer_token(tokenizer, row.output) for row in qa])  # (N,)
    ranks, probs = [], []
    for states in acts.states:  # one layer at a time: (N, V) logits, never (L, N, V)
        logits = lens_logits(model, states)
        picked = logits.gather(-1, targets[:, None])  # (N, 1)
        ranks.append((logits > picked).sum(-1))
        probs.append(logits.softmax(-1).gather(-1, targets[:, None])[:, 0])
    rank, prob = torch.stack(ranks), torch.stack(probs)  # (L, N)
    result = LensResult(list(acts.layers))
    for n, row in enumerate(qa):
        result.rows.append(LensRow(row.id, row.task, row.split, int(targets[n]), rank[:, n].tolist(),
                                   prob[:, n].tolist()))
    return result
