"""Which documents a simulated target trains on: withheld nonmembers and excluded sets.

A yardstick needs documents the target never saw, of the same kinds as the ones it must forget.
``withhold=N`` takes N whole retain documents per task out of training (chosen by the build's seed
alone, so a target and its retrain oracle withhold the same ones; a list gives each data directory
its own N); ``exclude`` takes whole sets out,
which builds the retrain oracle. Each data directory's withheld documents are written beside its
forget documents as an MIA folder whose rows carry their task:

    withheld/<dirname>/member.jsonl     the directory's forget documents (sc rows)
    withheld/<dirname>/nonmember.jsonl  its withheld retain documents, never trained on

with records ``{"id": document_id, "task": ..., "document": input + " " + output}``.

>>> split = split_membership(["data/train"], withhold=2, seed=0, exclude=["data/train/forget.jsonl"])
>>> split.trained   # rows to train on: neither withheld nor excluded
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from repedit.checkpoint import WITHHELD_DIR
from repedit.data import TASKS, DataError, Row, load_rows

SPLITS = ("forget", "retain")
MEMBER_FILE = "member.jsonl"
NONMEMBER_FILE = "nonmember.jsonl"


@dataclass(frozen=True)
class WithheldSet:
    """One data directory's MIA folder: its forget documents and its withheld retain documents."""

    name: str  # the folder under ``withheld/``
    source: str  # the data directory
    members: list[Row]  # the forget sc rows
    nonmembers: list[Row]  # the withheld retain sc rows; their QA rows are withheld too

    def summary(self) -> dict:
        """The card's entry: counts and ids per task."""
        ids = {task: [r.document_id for r in self.nonmembers if r.task == task] for task in TASKS}
        return {"dir": self.source, "members": len(self.members),
                "documents": {task: len(v) for task, v in ids.items() if v},
                "ids": {task: v for task, v in ids.items() if v}}

    def write(self, out: Path) -> None:
        """``member.jsonl`` and ``nonmember.jsonl`` in ``out/withheld/<name>/``."""
        folder = out / WITHHELD_DIR / self.name
        folder.mkdir(parents=True, exist_ok=True)
        for file, rows in ((MEMBER_FILE, self.members), (NONMEMBER_FILE, self.nonmembers)):
            with open(folder / file, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps({"id": r.document_id, "task": r.task, "document": r.document},
                                             ensure_ascii=False) + "\n" for r in rows)


@dataclass(frozen=True)
class Membership:
    """What a build measures and what it trains on."""

    measured: dict[str, list[Row]]  # split -> rows whose memorization the card reports (all but withheld)
    trained: list[Row]  # the measured rows less the excluded documents
    withheld: list[WithheldSet]  # one per data directory when withholding, else empty
    excluded: list[dict]  # per exclude path: {"path", "rows", "documents"} taken out of training


def folder_names(directories: Sequence[str | Path]) -> list[str]:
    """Each directory's name (``train``, ``validation``); a repeated name gets ``-2``, ``-3``.. in the
    order the directories are given, so ``a/train b/train`` become ``train`` and ``train-2``."""
    names: list[str] = []
    for directory in directories:
        base = Path(directory).resolve().name
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names.append(name)
    return names


def choose_withheld(retain: Sequence[Row], forget: Sequence[Row], count: int, seed: int,
                    where: str) -> dict[str, list[str]]:
    """Per task present in the directory, ``count`` retain document ids, drawn with ``seed``.

    Only the directory's own rows and the seed decide, never what else is excluded, so a target and
    its retrain oracle withhold the same documents. Each task keeps at least one retain document to
    train on; fewer than ``count + 1`` is an error naming the directory and the task.
    """
    generator = random.Random(seed)
    chosen = {}
    present = {row.task for row in (*retain, *forget)}
    for task in (t for t in TASKS if t in present):
        ids = list(dict.fromkeys(r.document_id for r in retain if r.task == task and r.kind == "sc"))
        if len(ids) < count + 1:
            raise DataError(f"--withhold {count}: {where}: {task} has {len(ids)} retain documents; "
                            f"withholding {count} needs at least {count + 1}")
        chosen[task] = generator.sample(ids, count)
    return chosen


def _excluded_documents(paths: Sequence[str | Path], trained: Sequence[Row]) -> tuple[set[str], list[dict]]:
    """The document ids of the exclude sets, and for each path how many trained rows it takes out."""
    trained_ids = {row.document_id for row in trained}
    excluded: set[str] = set()
    records = []
    for path in paths:
        ids = {row.document_id for row in load_rows(path)} & trained_ids
        if not ids:
            raise DataError(f"--exclude {path}: matches no training rows (no document id in common)")
        excluded |= ids
        records.append({"path": str(path), "documents": len(ids),
                        "rows": sum(row.document_id in ids for row in trained)})
    return excluded, records


def withhold_counts(withhold: int | Sequence[int], directories: int) -> list[int]:
    """One count per data directory: the one given for all, or one each (in ``--data``'s order)."""
    counts = [withhold] * directories if isinstance(withhold, int) else list(withhold)
    if len(counts) not in (1, directories):
        raise ValueError(f"--withhold: {len(counts)} counts for {directories} data directories; give one for "
                         "all or one each")
    counts = counts * directories if len(counts) == 1 else counts
    if any(count < 0 for count in counts):
        raise ValueError(f"--withhold must be at least 0, got {withhold}")
    return counts


def split_membership(data: Sequence[str | Path], withhold: int | Sequence[int] = 0, seed: int = 0,
                     exclude: Sequence[str | Path] = ()) -> Membership:
    """Load every directory's forget and retain rows; withhold (``withhold_counts``), then exclude,
    whole documents."""
    counts = withhold_counts(withhold, len(data))
    measured: dict[str, list[Row]] = {split: [] for split in SPLITS}
    withheld = []
    for directory, name, count in zip(data, folder_names(data), counts, strict=True):
        forget, retain = (load_rows(directory, split) for split in SPLITS)
        if count:
            chosen = {i for ids in choose_withheld(retain, forget, count, seed, str(directory)).values()
                      for i in ids}
            withheld.append(WithheldSet(name, str(directory), [r for r in forget if r.kind == "sc"],
                                        [r for r in retain if r.document_id in chosen and r.kind == "sc"]))
            retain = [r for r in retain if r.document_id not in chosen]
        measured["forget"] += forget
        measured["retain"] += retain
    rows = measured["forget"] + measured["retain"]
    excluded, records = _excluded_documents(exclude, rows)
    return Membership(measured, [r for r in rows if r.document_id not in excluded], withheld, records)
