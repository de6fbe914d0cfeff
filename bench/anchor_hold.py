"""Does the anchor hold the texts it holds? Their NLL before and after an edit, beside the stop rule's and unseen ones'.

An RMU run with ``--calibrate-anchor-share`` splits its calibration texts: the anchor holds a share of each
task's h_L at the frozen model's, the stop rule scores the rest (``repedit.calibration.held_out``). Reads the
edited run's ``unlearn.json`` for the file and the share, splits the texts as the run did, and prints per task
the mean NLL of the anchored texts, of the stop rule's and of withheld texts nothing used, under the target
and the edit; and of the anchor's own texts (from the run's ``anchor_texts.jsonl``): the documents
``--invented-anchors`` invented, per kind, the PII biographies ``--recombined-pii-anchors`` made of the retain set
(with ``--retain``), and the others (the stand-ins' and ``--anchor-texts``') all kinds together. Anchored texts that
rise as far as withheld ones: the anchor does not hold what the NLL reads (the tiny target, BENCHMARKS.md "The
anchor's hold"); anchored texts that stay while withheld ones rise: the hold does not carry to texts it never saw
(invented PII biographies held while withheld ones rise: the invented ones are not what the withheld ones share with
the forget set).

With ``--retain`` (the run's retain set), also the stop rule's stand-ins for the kinds its texts lack, rebuilt from
the run's recorded fractions (``repedit.standins.calibration_standins``): retain documents with words swapped keep
the template the retain and anchor terms hold, so if they rise less than withheld documents of their kind the stop
rule's reference sits too low on that kind and the run stops with it under-forgotten. Beside them two controls: the
retain documents they were made of, as they are ("their documents": what the retain term holds), and the withheld
documents of their kinds swapped among themselves at the same fractions ("withheld, swapped": stand-ins that nothing
held). Stand-ins that rise as the swapped withheld documents do and less than the withheld ones: the swap makes the
difference; that rise less than the swapped withheld ones: what holds them is what holds their retain documents (the
retain term, or the anchor's swaps of the other half, which ``--calibrate-standin-anchors false`` takes out).

    PYTHONPATH=$PWD python bench/anchor_hold.py --target T --edited [NAME=]E ... --withheld W.jsonl \
        [--retain R.jsonl] [--device cuda]

Several edited runs of one target (the report's chosen run and its ablations) are read in one process, the target
loaded once: within one build, whether a change to the anchor (how many invented documents it holds) changes what
the anchored texts do.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from repedit.calibration import UNSEEN_TEXTS, held_out, unseen_tasks, unseen_texts
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.collateral import nll_of
from repedit.data import TASKS, Row, load_rows
from repedit.standins import (
    COUNT,
    calibration_sources,
    calibration_standins,
    lacking,
    recombined_pii,
    retain_documents,
    swapped,
)
from repedit.synth import invented_documents


def by_task(texts: list[str], tasks: list[str], indices: range | list[int]) -> dict[str, list[str]]:
    """Task -> the texts at ``indices``, in order."""
    split: dict[str, list[str]] = {}
    for i in indices:
        split.setdefault(tasks[i], []).append(texts[i])
    return split


def standins(record: dict, kept: list[str], retain: Path | None, retain_rows: list[Row] | None,
             withheld: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    """"stand-ins": task -> the stop rule's stand-ins, rebuilt as ``repedit.calibration.with_standins`` made them
    (``calibration_standins``) for each forget task (the run's checks' ``task_auc``) its ``kept`` calibration
    texts' tasks lack, at the run's recorded fractions and count; "their documents": the retain documents they were
    made of; "withheld, swapped": each such task's ``withheld`` documents (at least 2) swapped among themselves at its
    fraction, once each. Empty for a run without stand-ins. ``retain_rows``: the rows of ``retain``, read once by the
    caller."""
    made = record.get("standins")
    if not made:
        return {}
    checks = record.get("calibration") or []
    wanted = set(checks[0]["task_auc"]) if checks else set(TASKS)  # the forget documents' tasks
    made_for = lacking(wanted, kept)
    if not made_for:
        return {}
    if retain is None or retain_rows is None:
        raise SystemExit(f"--retain: needed: the run made stand-ins of {', '.join(made_for)}")
    documents = retain_documents(retain_rows)
    short = [t for t in made_for if len(documents.get(t, [])) < 4]
    if short:
        raise SystemExit(f"--retain: {retain}: fewer than 4 {', '.join(short)} documents; the run made stand-ins of it")
    found: dict[str, list[str]] = {}
    calibration = record["config"]["calibration"]
    count = calibration.get("standin_count", COUNT)  # a record from before --calibrate-standin-count made COUNT
    fractions, template = made["fractions"], calibration["standins"]
    for text, task in calibration_standins(documents, made_for, fractions, template, count):
        found.setdefault(task, []).append(text)
    if len(kept) + sum(map(len, found.values())) != made["texts"]:
        raise SystemExit(f"--retain: {retain}: the stop rule scored {made['texts']} texts, rebuilt "
                         f"{len(kept)} and {sum(map(len, found.values()))} stand-ins: not the run's retain set")
    return {"stand-ins": found,
            "their documents": calibration_sources(documents, made_for, count),
            "withheld, swapped": {t: swapped(withheld[t], fractions[t], template, 0) for t in made_for
                                  if len(withheld.get(t, [])) >= 2}}


def anchoring(record: dict) -> dict:
    """A run record's calibration settings if its anchor held a share of the calibration texts, else {} (a
    baseline's run, or an RMU run without the share: nothing of this script's to read)."""
    calibration = record.get("config", {}).get("calibration") or {}
    return calibration if calibration.get("anchor_share") else {}


def groups(edited: Path, withheld: Path, retain: Path | None = None,
           record: dict | None = None) -> dict[str, dict[str, list[str]]]:
    """Task -> texts of the anchored texts, the stop rule's and the withheld ones, split as the run split them
    (``repedit.calibration.read_unseen``), and the stop rule's stand-ins (``standins``) where the run made any.
    ``record``: the run's ``unlearn.json`` where the caller has read it already."""
    record = record or json.loads((edited / "unlearn.json").read_text())
    calibration = anchoring(record)
    if not calibration:
        raise SystemExit(f"--edited: {edited}: the run anchored no share of its calibration texts")
    path = calibration["unseen"]
    texts, tasks = unseen_texts(path)[:UNSEEN_TEXTS], unseen_tasks(path)
    if tasks is None:
        raise SystemExit(f"--edited: {path}: the calibration texts have no task")
    kept, held = held_out(texts, tasks[:UNSEEN_TEXTS], calibration["anchor_share"])
    others, other_tasks = unseen_texts(str(withheld)), unseen_tasks(str(withheld))
    if other_tasks is None:
        raise SystemExit(f"--withheld: {withheld}: the texts need a task field")
    found = {"anchored": by_task(texts, tasks, held), "stop rule": by_task(texts, tasks, kept),
             "withheld": by_task(others, other_tasks, range(len(others)))}
    retain_rows = load_rows(retain, "retain") if retain is not None else None  # read once: stand-ins, recombined
    found |= {name: group for name, group in standins(record, [tasks[i] for i in kept], retain, retain_rows,
                                                      found["withheld"]).items() if group}
    written = edited / "anchor_texts.jsonl"  # what the run's anchor held, stand-ins' texts and --anchor-texts' too
    calibration_texts = set(texts)
    own = [t for t in (unseen_texts(str(written)) if written.is_file() else []) if t not in calibration_texts]
    loss = record["config"].get("loss") or {}
    count = loss.get("invented_anchors", 0)
    kind_of = {d["text"]: d["task"] for d in invented_documents(count)} if count else {}  # as the run invented them
    invented = {task: [t for t in own if kind_of.get(t) == task] for task in TASKS}
    made = set(recombined_pii(retain_rows, loss.get("recombined_pii_anchors", 0),
                              record["config"]["seed"])) if retain_rows is not None else set()  # as the run made them
    recombined = [t for t in own if t in made]
    rest = [t for t in own if t not in kind_of and t not in made]
    return (found | ({"invented anchors": {t: v for t, v in invented.items() if v}} if any(invented.values()) else {})
            | ({"recombined anchors": {"Task2": recombined}} if recombined else {})
            | ({"own anchors": {"all": rest}} if rest else {}))


def named(value: str) -> tuple[str, Path]:
    """``NAME=DIR``, or ``DIR`` named by its folder."""
    name, _, path = value.rpartition("=")
    return (name or Path(path).name), Path(path)


def texts_of(*found: dict[str, dict[str, list[str]]]) -> list[str]:
    """Every text of ``groups``' results once, in order."""
    return list(dict.fromkeys(t for texts in found for split in texts.values() for group in split.values()
                              for t in group))


def per_text_nll(model, tokenizer, texts: list[str], what: str) -> dict[str, float]:
    """Each text's mean token NLL under ``model``."""
    return dict(zip(texts, nll_of(model, tokenizer, texts, what, batch_size=32), strict=True))


def hold(before: dict[str, float], after: dict[str, float], texts: dict[str, dict[str, list[str]]]) -> dict:
    """Per group of ``texts``: task -> mean NLL under the target (``before``) and the edited run (``after``)."""
    return {name: {label: {task: statistics.fmean(nlls[t] for t in split[task]) for task in sorted(split)}
                   for label, nlls in (("target", before), ("edited", after))}
            for name, split in texts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, required=True, help="the checkpoint before unlearning")
    parser.add_argument("--edited", type=named, nargs="+", required=True,
                        help="unlearned checkpoints (each with its unlearn.json), as NAME=DIR or DIR")
    parser.add_argument("--withheld", type=Path, required=True, help=".jsonl of never-used texts with a task")
    parser.add_argument("--retain", type=Path, help="the retain set the runs used (.jsonl or its folder): their "
                        "stop rule's stand-ins, rebuilt (needed for a run that made any)")
    parser.add_argument("--out", type=Path, help="JSON results: run name -> texts -> target / edited -> task -> NLL")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (float32 either way)")
    args = parser.parse_args()
    # a report's runs: its baselines' among them, which anchor nothing, are left out and named
    records = {name: json.loads((path / "unlearn.json").read_text()) for name, path in args.edited}
    edited = []
    for name, path in args.edited:
        if anchoring(records[name]):
            edited.append((name, path))
        else:
            print(f"{name}: anchored no share of its calibration texts: left out", flush=True)
    if not edited:
        raise SystemExit("--edited: no run anchored a share of its calibration texts")
    # every run's files checked first
    splits = {name: groups(path, args.withheld, args.retain, records[name]) for name, path in edited}
    tokenizer = load_checkpoint_tokenizer(args.target)  # an edit keeps its target's tokenizer
    before = per_text_nll(load_causal_lm(args.target, torch.float32, args.device), tokenizer,
                          texts_of(*splits.values()), "target")  # once, however many runs share a text
    found = {name: hold(before, per_text_nll(load_causal_lm(path, torch.float32, args.device), tokenizer,
                                             texts_of(splits[name]), name), splits[name])
             for name, path in edited}
    print(f"{'run':40}{'texts':20}{'task':8}{'count':>7}{'target NLL':>12}{'edited NLL':>12}{'change':>9}")
    for run, results in found.items():
        for name, row in results.items():
            for task, was in row["target"].items():
                now = row["edited"][task]
                print(f"{run[:39]:40}{name:20}{task:8}{len(splits[run][name][task]):7}{was:12.3f}{now:12.3f}"
                      f"{100 * (now / was - 1):+8.1f}%")
    if args.out:
        args.out.write_text(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
