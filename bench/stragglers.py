"""Which forget documents an edit left below its stop rule's level, and why: each document's share of particulars,
its NLL on each class after the edit, and the retrain oracle's NLL of it.

The per-document stop ends a run once every forget document's NLL reaches its kind's level (the calibration texts'
median) and writes the checked weights nearest chance. A form that misdirects the particulars alone
(``--forget-tokens particulars``) ran out of its time budget on the sim with 79 of 81 documents there; on the tiny
target of real documents this prints which ones stay behind: those with the fewest particulars (their values
already past the oracle's, their template untouched), and those the oracle itself puts below the level.

    python bench/stragglers.py --target W/target --sets W/data --run W/runs/NAME --oracle W/oracle --out s.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from particulars_cpu import by_class

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import TASKS, Example, load_rows
from repedit.particulars import TokenClasses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, required=True, help="the memorizing checkpoint (its tokenizer is used)")
    parser.add_argument("--sets", type=Path, required=True, help="folder with forget.jsonl and retain.jsonl")
    parser.add_argument("--run", type=Path, required=True, help="an unlearned checkpoint with its unlearn.json")
    parser.add_argument("--oracle", type=Path, required=True, help="the retrain oracle")
    parser.add_argument("--out", type=Path, required=True, help="the results JSON")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    checks = json.loads((args.run / "unlearn.json").read_text())["calibration"]
    if not checks or "task_level" not in checks[-1]:
        raise SystemExit(f"{args.run / 'unlearn.json'}: no per-kind levels among its calibration checks")
    levels = checks[-1]["task_level"]
    tokenizer = load_checkpoint_tokenizer(args.target)
    rows = {name: [r for r in load_rows(args.sets, name) if r.kind == "sc"] for name in ("forget", "retain")}
    ids = {name: [tokenizer(r.document)["input_ids"] for r in rows[name]] for name in rows}
    classes = TokenClasses.of([Example(x, x) for x in ids["forget"] + ids["retain"]],
                              [r.document_id for r in rows["forget"] + rows["retain"]])
    edited, oracle = (load_causal_lm(path, torch.float32, args.device).eval() for path in (args.run, args.oracle))
    documents, seen = [], set()
    for row, x in zip(rows["forget"], ids["forget"], strict=True):
        if row.document_id in seen:
            continue
        seen.add(row.document_id)
        flags = classes.member(x)
        split, control = by_class(edited, x, flags), by_class(oracle, x, flags)
        documents.append({"task": row.task, "particular_share": statistics.fmean(flags[1:]),
                          "nll": statistics.fmean(split["particulars"] + split["template"]),
                          "particulars_nll": statistics.fmean(split["particulars"] or [float("nan")]),
                          "template_nll": statistics.fmean(split["template"] or [float("nan")]),
                          "oracle_nll": statistics.fmean(control["particulars"] + control["template"]),
                          "level": levels[row.task]})
    args.out.write_text(json.dumps(documents, indent=1))
    print(f"{'task':6} {'share':>6} {'NLL':>6} {'level':>6} {'particulars':>12} {'template':>9} {'oracle':>7}")
    for task in TASKS:
        for d in sorted((d for d in documents if d["task"] == task), key=lambda d: d["nll"] - d["level"]):
            print(f"{task:6} {d['particular_share']:6.2f} {d['nll']:6.2f} {d['level']:6.2f} "
                  f"{d['particulars_nll']:12.2f} {d['template_nll']:9.2f} {d['oracle_nll']:7.2f}"
                  f"{'  below' if d['nll'] < d['level'] else ''}")


if __name__ == "__main__":
    main()
