"""The counterfactual destination (``--destination counterfactual``): each forget document as the frozen model
reads it with other particulars, position by position.

A retrain oracle knows each kind's template but not a forget document's particulars. So each forget document's
particulars (tokens whose ``N``-gram no other training document has, ``repedit.particulars``) are swapped one
for one, the length kept, for tokens the unseen texts of its kind have in a bigram no training document has
(``novel_tokens``); the frozen model's h_L on that document is the misdirection's goal at each position, and
the positions that predict a particular go to the kind's mean on unseen text (the ``unseen`` destination):
the state there is what recalls the particular. On the tiny target it moves forget documents further than
unseen ones, where the per-kind mean moves both alike, but stories stall short of the unseen level
(BENCHMARKS.md, "A counterfactual destination").
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from repedit.data import Example
from repedit.particulars import ngrams, particular_weights, shared_ngrams

# Particulars by 4-gram: the order of a kind's shared sentences is each document's own too (tiny target:
# bigrams mark 22% of a story's tokens; by 4-gram stories reach 2.0-2.3 nats, by bigram 0.8-1.7).
N = 4


def novel_tokens(texts: Sequence[Sequence[int]], tasks: Sequence[str], trained: Sequence[Sequence[int]]) -> dict:
    """Task -> the tokens of its unseen texts that end a bigram no trained sequence has (what an unseen
    document of the kind says that no document the model learned does), in text order."""
    seen = {gram for ids in trained for gram in ngrams(ids, 2) if gram is not None}
    pool: dict[str, list[int]] = {}
    for ids, task in zip(texts, tasks, strict=True):
        pool.setdefault(task, []).extend(gram[1] for gram in ngrams(ids, 2) if gram is not None and gram not in seen)
    return pool


def counterfactuals(forget: Sequence[Example], tasks: Sequence[str], trained: Sequence[Example],
                    trained_documents: Sequence[str], pool: dict, seed: int) -> list[Example]:
    """Each forget example with its particulars swapped for tokens of its task's ``pool`` (of every task's,
    where its own has none), its ``weights`` flagging them (1.0). ``trained`` (with ``trained_documents``)
    are every training example, forget ones included: what decides which n-grams are shared."""
    shared = shared_ngrams(trained, trained_documents, N)
    everything = [token for tokens in pool.values() for token in tokens]
    if not everything:
        raise ValueError("--destination counterfactual: the --calibrate texts have no token in a bigram the "
                         "training documents lack")
    rng = random.Random(seed)
    swapped = []
    for example, task in zip(forget, tasks, strict=True):
        weights = particular_weights(example, shared, N).weights or []
        choices = pool.get(task) or everything
        ids = [rng.choice(choices) if flag else token for token, flag in zip(example.input_ids, weights, strict=True)]
        swapped.append(Example(ids, list(example.labels), weights))
    return swapped


def predicting(flags: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the positions whose next token is flagged."""
    ahead = torch.zeros_like(flags, dtype=torch.bool)
    ahead[:, :-1] = flags[:, 1:] > 0
    return ahead


def with_means(goals: torch.Tensor, flags: torch.Tensor, tasks: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """``goals`` (B, T, D) with the positions predicting a flagged token set to their row's task mean
    (``means``: (len(TASKS), D), read by ``tasks``)."""
    return torch.where(predicting(flags).unsqueeze(-1), means[tasks].unsqueeze(1).to(goals.dtype), goals)
