"""Which forget documents each edit left below its stop rule's level, and why: each document's share of
particulars, its NLL on each class after the edit, and the retrain oracle's NLL of it.

The per-document stop ends a run once every forget document's NLL reaches its kind's level (the calibration texts'
median) and writes the checked weights nearest chance. A form that misdirects the particulars alone
(``--forget-tokens particulars``) ran out of its time budget on the sim with 79 of 81 documents there; on the tiny
target of real documents this shows which ones stay behind: those with the fewest particulars (their values
already past the oracle's, their template untouched), and those the oracle itself puts below the level.

    python bench/stragglers.py --target W/target --sets W/data --oracle W/oracle --out s.json \\
        --runs NAME=W/runs/NAME [NAME=DIR ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from anchor_hold import named  # the pipeline hands these scripts the same NAME=DIR list
from particulars_cpu import by_class, read_sets

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import TASKS


def levels_of(run: Path) -> dict[str, float] | None:
    """Each kind's level from the run's last calibration check; None for a run with none (a baseline: graddiff, NPO
    and SUGD stop at their epochs, not at a level, and the eighty-third call's pipeline handed them here)."""
    checks = json.loads((run / "unlearn.json").read_text())["calibration"]
    return checks[-1]["task_level"] if checks and "task_level" in checks[-1] else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, required=True, help="the memorizing checkpoint (its tokenizer is used)")
    parser.add_argument("--sets", type=Path, required=True, help="folder with forget.jsonl and retain.jsonl")
    parser.add_argument("--runs", type=named, nargs="+", required=True, metavar="NAME=DIR",
                        help="unlearned checkpoints, each with its unlearn.json")
    parser.add_argument("--oracle", type=Path, required=True, help="the retrain oracle")
    parser.add_argument("--out", type=Path, required=True, help="the results JSON")
    args = parser.parse_args()
    levels, runs = {}, []  # every run's file read before any model
    for name, run in args.runs:
        if (found := levels_of(run)) is None:
            print(f"{name}: no per-kind levels among the calibration checks of {run / 'unlearn.json'}: left out")
        else:
            levels[name] = found
            runs.append((name, run))
    if not runs:
        raise SystemExit(f"no run has per-kind levels among its calibration checks: {[str(r) for _, r in args.runs]}")
    rows, ids, classes = read_sets(args.sets, load_checkpoint_tokenizer(args.target))
    forget = list({r.document_id: (r.task, x) for r, x in zip(rows["forget"], ids["forget"], strict=True)}.values())
    flags = [classes.member(x) for _, x in forget]

    def mean_nll(split: dict[str, list[float]]) -> float:
        return statistics.fmean(split["particulars"] + split["template"])

    oracle = load_causal_lm(args.oracle, torch.float32, "cpu").eval()
    oracle_nll = [mean_nll(by_class(oracle, x, f)) for (_, x), f in zip(forget, flags, strict=True)]
    results = {}
    for name, run in runs:
        edited = load_causal_lm(run, torch.float32, "cpu").eval()
        results[name] = []
        for (task, x), f, control in zip(forget, flags, oracle_nll, strict=True):
            split = by_class(edited, x, f)
            results[name].append({"task": task, "particular_share": statistics.fmean(f[1:]), "nll": mean_nll(split),
                                  "particulars_nll": statistics.fmean(split["particulars"] or [float("nan")]),
                                  "template_nll": statistics.fmean(split["template"] or [float("nan")]),
                                  "oracle_nll": control, "level": levels[name][task]})
    args.out.write_text(json.dumps(results, indent=1))
    for name, documents in results.items():
        print(f"{name}: below their kind's level, edited / oracle: " + ", ".join(
            f"{task} {sum(d['nll'] < d['level'] for d in documents if d['task'] == task)} / "
            f"{sum(d['oracle_nll'] < d['level'] for d in documents if d['task'] == task)} of "
            f"{sum(d['task'] == task for d in documents)}" for task in TASKS))
        print(f"  {'task':6} {'share':>6} {'NLL':>6} {'level':>6} {'particulars':>12} {'template':>9} {'oracle':>7}")
        for d in sorted((d for d in documents if d["nll"] < d["level"]), key=lambda d: (d["task"], d["nll"])):
            print(f"  {d['task']:6} {d['particular_share']:6.2f} {d['nll']:6.2f} {d['level']:6.2f} "
                  f"{d['particulars_nll']:12.2f} {d['template_nll']:9.2f} {d['oracle_nll']:7.2f}")


if __name__ == "__main__":
    main()
