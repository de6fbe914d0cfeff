"""Stand-ins for unseen text of the kinds the calibration texts lack, made from the retain documents.

The challenge gives unseen text of one kind (the public nonmembers: Wikipedia biographies, Task3's);
calibrated on it alone, the representation edit pulls stories and PII biographies far below unseen
documents of their kinds (BENCHMARKS.md, twelfth call). A stand-in is a retain document with its
particulars swapped for other documents' (``swap_words`` with a template share): the swap fraction
is the one that makes stand-ins of a kind the texts do have as unfamiliar to the model as those texts
(bisection on the median NLL, which rises with the fraction), times the kind's ``scales`` entry where
one kind's stand-ins are known to sit above or below its unseen documents at a fraction (PII biographies:
a swapped name in a memorized biography is less likely than a name the model never saw). Half of each
kind's retain documents give the stand-ins calibration scores, the other half the anchor's, with
``recombine``'d documents; a half of fewer than ``count`` documents is swapped again with other seeds,
up to ``count`` stand-ins, so a small retain set still gives the stop rule's attack that many.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from repedit.data import TASKS, Row
from repedit.synth import recombine_by_task, recombine_fields, swap_words

COUNT = 24  # stand-ins a kind, for calibration and again for the anchor (from at most half its documents each)
RECOMBINED = 28  # recombined documents a kind the anchor holds beside its stand-ins
STEPS = 7  # bisection steps: the fraction to 1/256


@dataclass
class Standins:
    """The calibration texts with stand-ins for the missing kinds, and the anchor's texts."""

    texts: list[str]
    tasks: list[str]
    anchors: list[str]
    fraction: float  # of the particulars swapped, on the matched task
    matched_on: str  # the task whose texts fixed it
    fractions: dict[str, float]  # each task's: the fraction times its scale (at most 1)


def swapped(documents: list[str], fraction: float, template: float | None, count: int) -> list[str]:
    """``count`` stand-ins of ``documents`` (``swap_words`` with seeds 0, 1, ... until there are enough),
    or one of each when there are more."""
    rounds = max(1, -(-count // len(documents)))
    made = [s for seed in range(rounds) for s in swap_words(documents, fraction, seed, template)]
    return made[: max(count, len(documents))]


def matched_fraction(median_nll: Callable[[list[str]], float], documents: list[str], goal: float,
                     template: float | None, steps: int = STEPS, count: int = 0) -> float:
    """The ``swap_words`` fraction whose stand-ins of ``documents`` (``count`` of them, by ``swapped``)
    have median NLL ``goal``."""
    low, high = 0.0, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        if median_nll(swapped(documents, middle, template, count)) < goal:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def retain_documents(rows: Sequence[Row]) -> dict[str, list[str]]:
    """Per task, the rows' documents (kind sc) in order, once each: of the retain rows, what stand-ins are made of."""
    documents: dict[str, dict[str, str]] = {}
    for r in rows:
        if r.kind == "sc":
            documents.setdefault(r.task, {}).setdefault(r.document_id, r.document)
    return {task: list(found.values()) for task, found in documents.items()}


def half(documents: Sequence[str], count: int = COUNT) -> int:
    """How many of a task's retain documents the stop rule's stand-ins come from (the first), and the anchor's (the
    next as many): half of them, at most ``count``."""
    return min(count, len(documents) // 2)


def lacking(wanted: Collection[str], tasks: Collection[str]) -> list[str]:
    """The ``wanted`` tasks (the forget documents') that none of the calibration texts' ``tasks`` is, in ``TASKS``
    order: the kinds stand-ins are made for."""
    return [t for t in TASKS if t in wanted and t not in tasks]


def calibration_sources(retain: dict[str, list[str]], tasks: Sequence[str], count: int = COUNT) -> dict[str, list[str]]:
    """Each of ``tasks``' retain documents the stop rule's stand-ins are made of: the first ``half`` of them."""
    return {t: retain[t][: half(retain[t], count)] for t in tasks}


def calibration_standins(retain: dict[str, list[str]], tasks: Sequence[str], fractions: dict[str, float],
                         template: float | None, count: int = COUNT) -> list[tuple[str, str]]:
    """The stop rule's stand-ins of ``tasks`` and their task: each task's ``calibration_sources`` ``swapped`` at the
    task's fraction."""
    return [(s, t) for t, documents in calibration_sources(retain, tasks, count).items()
            for s in swapped(documents, fractions[t], template, count)]


def match(median_nll: Callable[[list[str]], float], retain: dict[str, list[str]], texts: list[str], tasks: list[str],
          template: float | None, count: int = COUNT) -> tuple[str, float]:
    """The task the stand-ins are matched on (the first of ``TASKS`` with ``texts`` and 4 ``retain`` documents) and
    the swap fraction whose stand-ins of its first ``half`` have its texts' median NLL."""
    halves = {t: half(docs, count) for t, docs in retain.items()}
    matched = next((t for t in TASKS if t in tasks and halves.get(t, 0) >= 2), None)
    if matched is None:
        raise ValueError("--calibrate-standins: no task has both --calibrate texts and 4 retain documents to match "
                         f"the stand-ins on (texts of {', '.join(sorted(set(tasks)))})")
    goal = median_nll([x for x, t in zip(texts, tasks, strict=True) if t == matched])
    return matched, matched_fraction(median_nll, retain[matched][: halves[matched]], goal, template, count=count)


def make_standins(median_nll: Callable[[list[str]], float], retain: dict[str, list[str]], texts: list[str],
                  tasks: list[str], wanted: list[str], template: float, count: int = COUNT,
                  scales: dict[str, float] | None = None) -> Standins:
    """``texts`` (each of task ``tasks[i]``) with stand-ins of every ``wanted`` task they lack, made from
    ``retain`` (documents per task, in order); the fraction is matched on the first task of ``TASKS``
    that has texts and at least 4 retain documents, and each task's is it times ``scales[task]``."""
    made_for = lacking(wanted, tasks)
    halves = {t: half(docs, count) for t, docs in retain.items()}
    short = [t for t in made_for if halves.get(t, 0) < 2]
    if short:
        raise ValueError(f"--calibrate-standins: too few retain documents of {', '.join(short)} to make stand-ins "
                         "(at least 4 a task: half for calibration, half for the anchor)")
    matched, fraction = match(median_nll, retain, texts, tasks, template, count)
    fractions = {t: min(1.0, fraction * (scales or {}).get(t, 1.0)) for t in TASKS}
    made = calibration_standins(retain, made_for, fractions, template, count)
    others = [(s, t) for t in TASKS if halves.get(t, 0) >= 2
              for s in swapped(retain[t][halves[t]: 2 * halves[t]], fractions[t], template, count)]
    recombined = recombine_by_task([(d, t) for t, docs in retain.items() if len(docs) >= 2 for d in docs], RECOMBINED)
    return Standins(texts=texts + [s for s, _ in made], tasks=tasks + [t for _, t in made],
                    anchors=[r["text"] for r in recombined] + [s for s, _ in others],
                    fraction=fraction, matched_on=matched, fractions=fractions)


def recombined_pii(retain_rows: Sequence[Row], count: int, seed: int) -> list[str]:
    """``count`` PII biographies made of the retain set's (``recombine_fields``), for --recombined-pii-anchors."""
    if not count:
        return []
    try:
        return recombine_fields(retain_documents(retain_rows).get("Task2", []), count, seed)
    except ValueError as error:
        raise ValueError(f"--recombined-pii-anchors: the retain set's PII biographies (Task2): {error}") from None
