"""Stand-ins for unseen text of the kinds the calibration texts lack, made from the retain documents.

The challenge gives unseen text of one kind (the public nonmembers: Wikipedia biographies, Task3's);
calibrated on it alone, the representation edit pulls stories and PII biographies far below unseen
documents of their kinds (BENCHMARKS.md, twelfth call). A stand-in is a retain document with its
particulars swapped for other documents' (``swap_words`` with a template share): the swap fraction
is the one that makes stand-ins of a kind the texts do have as unfamiliar to the model as those texts
(bisection on the median NLL, which rises with the fraction). Half of each kind's retain documents
give the stand-ins calibration scores, the other half the anchor's, with ``recombine``'d documents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from repedit.data import TASKS
from repedit.synth import recombine_by_task, swap_words

COUNT = 24  # stand-ins a kind, for calibration and again for the anchor (at most half the kind's documents)
RECOMBINED = 28  # recombined documents a kind the anchor holds beside its stand-ins
STEPS = 7  # bisection steps: the fraction to 1/256


@dataclass
class Standins:
    """The calibration texts with stand-ins for the missing kinds, and the anchor's texts."""

    texts: list[str]
    tasks: list[str]
    anchors: list[str]
    fraction: float  # of the particulars swapped
    matched_on: str  # the task whose texts fixed it


def matched_fraction(median_nll: Callable[[list[str]], float], documents: list[str], goal: float,
                     template: float | None, steps: int = STEPS) -> float:
    """The ``swap_words`` fraction whose stand-ins of ``documents`` have median NLL ``goal``."""
    low, high = 0.0, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        if median_nll(swap_words(documents, middle, template=template)) < goal:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def make_standins(median_nll: Callable[[list[str]], float], retain: dict[str, list[str]], texts: list[str],
                  tasks: list[str], wanted: list[str], template: float, count: int = COUNT) -> Standins:
    """``texts`` (each of task ``tasks[i]``) with stand-ins of every ``wanted`` task they lack, made from
    ``retain`` (documents per task, in order); the fraction is matched on the first task of ``TASKS``
    that has texts and at least 4 retain documents."""
    lacking = [t for t in TASKS if t in wanted and t not in tasks]
    halves = {t: min(count, len(docs) // 2) for t, docs in retain.items()}
    short = [t for t in lacking if halves.get(t, 0) < 2]
    if short:
        raise ValueError(f"--calibrate-standins: too few retain documents of {', '.join(short)} to make stand-ins "
                         "(at least 4 a task: half for calibration, half for the anchor)")
    matched = next((t for t in TASKS if t in tasks and halves.get(t, 0) >= 2), None)
    if matched is None:
        raise ValueError("--calibrate-standins: no task has both --calibrate texts and 4 retain documents to match "
                         f"the stand-ins on (texts of {', '.join(sorted(set(tasks)))})")
    goal = median_nll([x for x, t in zip(texts, tasks, strict=True) if t == matched])
    fraction = matched_fraction(median_nll, retain[matched][: halves[matched]], goal, template)
    made = [(s, t) for t in lacking for s in swap_words(retain[t][: halves[t]], fraction, template=template)]
    others = [(s, t) for t in TASKS if halves.get(t, 0) >= 2
              for s in swap_words(retain[t][halves[t]: 2 * halves[t]], fraction, template=template)]
    recombined = recombine_by_task([(d, t) for t, docs in retain.items() if len(docs) >= 2 for d in docs], RECOMBINED)
    return Standins(texts=texts + [s for s, _ in made], tasks=tasks + [t for _, t in made],
                    anchors=[r["text"] for r in recombined] + [s for s, _ in others],
                    fraction=fraction, matched_on=matched)
