"""``Calibration``: the stop rule's settings, typed, and their checks (``RMUConfig.calibration``).

Split from ``repedit.rmu_config``, whose ``RMUConfig.validate`` calls ``Calibration.validate`` and then checks what
the loss terms and these settings need of each other (which texts the anchor may hold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from repedit.config_fields import option
from repedit.data import TASKS
from repedit.standins import COUNT

LEVELS = ("auto", "frozen", "rising")
GOALS = ("median", "quantiles")
UNSEEN_AT = ("check", "start")


@dataclass
class Calibration:
    """The stop rule: bring forget documents to the NLL of text the model never saw, document by document.

    Each forget document's rows leave the forget terms once its NLL reaches the unseen texts' median
    (its task's, when every unseen text has a ``task``), or with ``goals`` "quantiles" their NLL at its rank's
    quantile, or for the kinds ``share_goals`` names their NLL's line over shared wording at its own share
    (``repedit.share_goals``); the run stops once a loss attack tells no task's
    forget documents from the unseen texts (AUC within ``tolerance`` of 0.5) or every document is there,
    keeping the checked weights that came closest: near the level, documents swing across it.
    """

    unseen: str | None = field(default=None, metadata=option(
        "texts the model never saw (.jsonl: text or document, optional task): calibrate against them",
        flag="--calibrate"))
    tolerance: float = field(default=0.05, metadata=option(
        "stop once every task's attack AUC is within this of 0.5 (MIA score 0.9)", flag="--calibrate-tolerance"))
    every: int = field(default=5, metadata=option("steps between calibration checks", flag="--calibrate-every"))
    # A check whose attack still tells every forget document from every unseen text, every kind, decides nothing the
    # next one would not: c20's first 820 steps on the sim's train split, where at 7B the checks are a quarter of the
    # run (BENCHMARKS.md, "Seventy-second call").
    every_far: int | None = field(default=None, metadata=option(
        "steps between checks while the last check's attack told every forget document from every unseen text, "
        "every kind (each AUC 1 or 0; before the first check too), --calibrate-every after it",
        flag="--calibrate-every-far"))
    # Only these tasks must land within the tolerance from either side; any other need only stop looking
    # more familiar than the unseen texts: how unlikely unseen text of its own kind is, texts of another
    # kind cannot say (Wikipedia text, of stories).
    tasks: tuple[str, ...] | None = field(default=None, metadata=option(
        "the tasks whose documents the unseen texts are like, e.g. Task3 for Wikipedia text (default: all)",
        flag="--calibrate-tasks"))
    # An edit that raises unseen text too lifts a level re-measured at each check, and an ascent bounded by
    # it may chase it (suspected in the ascent recipe's rise on the 40/12 sim; measured once, a frozen level
    # did not stop that rise); a level measured once is where a retrain oracle's forget documents sit.
    level: str = field(default="auto", metadata=option(
        "the level(s) documents are brought to: frozen, measured once on the frozen model; rising, the "
        "unseen texts' median re-measured at every check; auto: rising for one level, frozen per task",
        flag="--calibrate-level", choices=LEVELS))
    # A retrain oracle's forget documents spread as unseen ones do: on the sim's forty-second build 22 of its 34
    # Wikipedia biographies sat below their kind's median level, and on train a set spread as the stop rule's texts
    # was KS 0.12-0.26 from withheld documents where the median's floor was 0.40-0.50 (BENCHMARKS.md, forty-second
    # call): every document at the median is an overshoot; the quantiles ask each for the texts' NLL at its rank.
    goals: str = field(default="median", metadata=option(
        "each forget document's goal: median, its kind's level; quantiles, the unseen texts' NLL at the quantile of "
        "its rank among its kind's forget documents", flag="--calibrate-goals", choices=GOALS))
    # A retrain oracle keeps what its other training text teaches: forget Wikipedia biographies whose wording other
    # text shares sat 1.1-1.4 nats lower for it, where one level per kind raised them all alike (BENCHMARKS.md,
    # "Eightieth session"; repedit.share_goals).
    share_goals: tuple[str, ...] | None = field(default=None, metadata=option(
        "the kinds (e.g. Task3) whose forget documents each get the goal on the line of their kind's unseen texts' "
        "NLL over the share of token n-grams the retain documents hold, at the document's own share",
        flag="--calibrate-share-goals"))
    share_ngram: int = field(default=2, metadata=option(
        "the n-gram length in tokens --calibrate-share-goals counts", flag="--calibrate-share-ngram"))
    # The challenge gives unseen text of one kind; calibrated on it alone, the edit overshoots the others.
    standins: float | None = field(default=None, metadata=option(
        "make stand-ins for the forget tasks the --calibrate texts (with a task field) lack: retain documents "
        "with their particulars swapped (words in fewer than this share of a task's documents; e.g. 0.1), as "
        "unfamiliar as the texts of a task they have; the anchor then holds others and recombined documents "
        "(--calibrate-standin-anchors)", flag="--calibrate-standins"))
    # Measured on the 40/12 sim's train split (BENCHMARKS.md, "Seventeenth and eighteenth calls"): at the
    # fraction matched on Wikipedia biographies, PII stand-ins sit 31% above unseen PII biographies, stories' 2%.
    standin_scales: tuple[float, ...] | None = field(default=None, metadata=option(
        "each task's swap fraction (Task1,Task2,Task3) as a multiple of the matched one, e.g. 0.94,0.63,1",
        flag="--calibrate-standin-scales"))
    # A kind's level is a median over random swaps of a few documents: the sim's PII level sat 14.2% under validation's
    # withheld biographies with 24 stand-ins, 2.8% over with 96 (BENCHMARKS.md, CPU section "How many stand-ins").
    standin_count: int = field(default=COUNT, metadata=option(
        "stand-ins of each kind the stop rule scores, and again the anchor holds: its half of the retain documents "
        "swapped with seeds 0, 1, ... until there are this many; more average out the swaps' chance",
        flag="--calibrate-standin-count"))
    # The swaps of the other half are what hold unseen text of the stand-ins' kinds: without them unseen stories rose
    # +17-20% and PII biographies +26-31% (with them +8-10% and +13-16%), and the stop rule's reference was no nearer
    # the withheld documents (BENCHMARKS.md, fifty-second call): the switch is the recipe's ablation of that hold.
    standin_anchors: bool = field(default=True, metadata=option(
        "with --calibrate-standins, the anchor holds the other half of the retain documents swapped and recombined "
        "documents too (false: only --anchor-texts', --invented-anchors' and the held ones)",
        flag="--calibrate-standin-anchors"))
    # The held-out attack follows the stop rule's at the written check (r 0.97 over the forty-third call's thirteen
    # runs), which lands 0.09-0.20 from chance among checks that swing: a scaled edit lands nearer.
    edit_scales: tuple[float, ...] | None = field(default=None, metadata=option(
        "after the run, also score the written check's edit scaled by each of these (frozen + s x the edit; e.g. "
        "0.98,0.99,1.01,1.02: 4% less of it undid most of the forgetting on the sim) and write whichever of them and "
        "the check comes closest to calibrated",
        flag="--calibrate-edit-scales"))
    # The forget documents' NLL swings with the anchor's cycle of 17 batches, up to 1.5 nats between checks; averaged
    # over 18 steps the checks moved a fifth as far on both splits, but the held-out attack still read 0.06-0.12 of AUC
    # above the stop rule's, and final fell (BENCHMARKS.md, fiftieth and fifty-first calls).
    average: int | None = field(default=None, metadata=option(
        "score and write the edited weights as an exponential average over about this many steps (1 - 1/STEPS a "
        "step; e.g. 18: the preset's anchor cycles in 17 batches), not as the last step left them; one more copy of "
        "the edited weights", flag="--calibrate-average"))
    # Past the written check a run goes on until every document is at its level (on train, up to 510 steps of 1,750):
    # over the 106 recorded runs, 150 steps' patience writes the same check in each, 100 not (fifty-first call).
    patience: int | None = field(default=None, metadata=option(
        "stop once this many steps pass with no check closer to calibrated than the best; the best is written "
        "either way", flag="--calibrate-patience"))
    # The stop rule's attack re-scores the unseen texts and nothing else holds them: an edit that lifts them
    # lifts the level the forget documents are chased to (Wikipedia biographies overshot; BENCHMARKS.md,
    # "Nineteenth call"). Anchoring some of them holds the kind; calibration keeps the rest as unseen.
    anchor_share: float = field(default=0.0, metadata=option(
        "the share of each task's --calibrate texts the anchor holds instead of the stop rule (0.5: every "
        "other one), beside its other texts; needs --anchor", flag="--calibrate-anchor-share"))

    # An edit stopped against unseen texts it raised stops past them by their rise, which a repair (--repair-rounds)
    # takes back: c30's Wikipedia biographies on validation, 0.19 nats past them, AUC 0.33. Stopped at start, the sim's
    # train split read every kind short, the last repair giving back part of the forgetting (BENCHMARKS.md,
    # "Ninety-first session").
    unseen_at: str = field(default="check", metadata=option(
        "the stop rule's attack scores the unseen texts as the model reads them at each check (check) or as the "
        "model the edit started from did (start: for --repair-rounds, whose repair takes their rise back)",
        flag="--calibrate-unseen-at", choices=UNSEEN_AT))

    # A retrain oracle reads its forget documents off the unseen ones' level: on the sim's train split its medians sat
    # -0.15 / +0.18 / +0.21 nats from theirs (stories / PII / Wikipedia biographies; validation's -0.24 / +0.11 /
    # +0.55), where the stop rule brings them to the level itself (BENCHMARKS.md, "Ninety-third session").
    offsets: tuple[float, ...] | None = field(default=None, metadata=option(
        "nats each kind's forget documents (Task1,Task2,Task3) stop short of the unseen texts: the stop rule reads "
        "those texts this much more likely, its levels and its attack alike (a retrain oracle's median gaps on a "
        "split: --calibrate-offsets -0.15,0.18,0.21); needs unseen texts with a task",
        flag="--calibrate-offsets"))

    def text_offsets(self, text_tasks: list[str] | None, count: int) -> list[float]:
        """The nats each of ``count`` unseen texts is read more likely by (``offsets``, by its task; 0 without)."""
        if self.offsets is None:
            return [0.0] * count
        if text_tasks is None:
            raise ValueError("--calibrate-offsets: each kind's offset needs unseen texts with a task (--calibrate)")
        return [self.offsets[TASKS.index(task)] for task in text_tasks]

    def validate(self) -> None:
        """Raise a ValueError naming the offending option (``RMUConfig.validate`` checks those the loss terms need)."""
        if not 0 <= self.tolerance < 0.5:  # NaN too
            raise ValueError("--calibrate-tolerance: must be in [0, 0.5)")
        for flag, value, allowed in (("--calibrate-level", self.level, LEVELS),
                                     ("--calibrate-goals", self.goals, GOALS),
                                     ("--calibrate-unseen-at", self.unseen_at, UNSEEN_AT)):
            if value not in allowed:
                raise ValueError(f"{flag}: {value!r}; choose one of {', '.join(allowed)}")
        if self.standins is not None and not 0 < self.standins <= 1:
            raise ValueError(f"--calibrate-standins: {self.standins}: a share in (0, 1], e.g. 0.1")
        if self.offsets is not None and (len(self.offsets) != len(TASKS)
                                         or not all(map(math.isfinite, self.offsets))):
            raise ValueError(f"--calibrate-offsets: {','.join(map(str, self.offsets))}: one number of nats a task "
                             f"({','.join(TASKS)})")
        scales = self.standin_scales
        if scales is not None and (self.standins is None or len(scales) != len(TASKS)
                                   or not _positive_numbers(scales)):
            raise ValueError(f"--calibrate-standin-scales: {','.join(map(str, scales))}: one positive number a task "
                             f"({','.join(TASKS)}), with --calibrate-standins")
        for flag, count, least in (("every", self.every, 1), ("every-far", self.every_far, 1),
                                   ("patience", self.patience, 1),
                                   ("average", self.average, 2),  # averaged over 1: the last step
                                   ("standin-count", self.standin_count, 1), ("share-ngram", self.share_ngram, 1)):
            if count is not None and count < least:
                raise ValueError(f"--calibrate-{flag}: {count}: at least {least}")
        if self.share_goals is not None and (not self.share_goals or not set(self.share_goals) <= set(TASKS)):
            raise ValueError(f"--calibrate-share-goals: {','.join(self.share_goals)}: some of {', '.join(TASKS)}")
        if self.edit_scales is not None and not _positive_numbers(self.edit_scales):
            raise ValueError(f"--calibrate-edit-scales: {','.join(map(str, self.edit_scales))}: positive "
                             "numbers, e.g. 0.98,0.99,1.01,1.02")
        if not 0 <= self.anchor_share < 1:  # NaN too
            raise ValueError(f"--calibrate-anchor-share: {self.anchor_share}: a share in [0, 1), e.g. 0.5")
        if self.unseen is None:
            raise ValueError("--calibrate: not given; calibration needs the unseen texts")
        if not Path(self.unseen).is_file():
            raise ValueError(f"--calibrate: {self.unseen}: no such file")


def _positive_numbers(values: tuple[float, ...]) -> bool:
    """At least one value, each positive and finite (NaN is not)."""
    return bool(values) and all(0 < x < math.inf for x in values)
