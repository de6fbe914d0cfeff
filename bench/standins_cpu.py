"""Stand-ins for unseen text of each kind, made from seen documents, measured against the real thing.

The challenge gives unseen text of one kind only (the public nonmembers: Wikipedia biographies); the
representation edit is as close to a retrain oracle as its unseen texts are like the forget documents
(BENCHMARKS.md, twelfth call). Here, under a ``bench/quality.py`` build's target, the median NLL of:
retain documents, ``recombine``'d ones (with their digits redrawn, too), and ``swap_words`` at the
fraction that puts train's Task3 stand-ins at the public nonmembers' median (found by bisection: what a
submission can measure), swapping any word or only the particulars (``--template``: words in fewer than
that share of the kind's documents), each kind against its withheld documents, which the choices never
read. ``--write`` saves train's stand-ins of Task1 and Task2 (any word swapped, or the particulars with
``--write-template``) and the public nonmembers as Task3 with their tasks: a ``--calibrate`` file;
``--write-anchors`` the same kind of stand-ins of the next ``--count`` retain documents of every kind,
none of which the calibration file was made from: an ``--anchor-texts`` file.

    PYTHONPATH=$PWD OMP_NUM_THREADS=2 python bench/standins_cpu.py --work /tmp/w2 --out standins.json \
        --write /tmp/w2/reference-standins.jsonl

``--fit-scales`` also finds, per kind, the fraction that puts train's stand-ins at train's withheld
documents' median and prints it as a multiple of the matched one (``--calibrate-standin-scales``);
``--scales`` makes the written stand-ins with each kind's fraction scaled so.

``--check-library`` then runs ``repedit.calibration.with_standins`` (``--calibrate-standins``) on the same
texts and says whether it makes the same stand-ins.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
from pathlib import Path

import torch
from quality import REPORT, TUNE, paths

from repedit.calibration import read_unseen, unseen_texts, with_standins
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.cli_unlearn import float_list
from repedit.collateral import read_withheld
from repedit.data import TASKS, load_rows, write_jsonl
from repedit.generate import document_nll
from repedit.rmu import RMUConfig
from repedit.standins import COUNT, matched_fraction
from repedit.synth import recombine, swap_words


def median_nll(model, tokenizer, texts: list[str]) -> float:
    return statistics.median(document_nll(model, tokenizer, texts, batch_size=8, desc="nll"))


def redraw_digits(texts: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    return [re.sub(r"\d", lambda _: str(rng.randint(0, 9)), t) for t in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a bench/quality.py build's work directory")
    parser.add_argument("--out", type=Path, required=True, help="JSON result")
    parser.add_argument("--write", type=Path, help="also write the stand-ins as a --calibrate file")
    parser.add_argument("--count", type=int, default=COUNT, help="documents a kind (--calibrate-standins' at most)")
    parser.add_argument("--steps", type=int, default=7, help="bisection steps for the fraction")
    parser.add_argument("--template", type=float, default=0.1,
                        help="the particulars column: words in at least this share of a kind's documents stay")
    parser.add_argument("--write-template", action="store_true", help="--write the particulars column's stand-ins")
    parser.add_argument("--check-library", action="store_true", help="with --write-template, --write and "
                        "--write-anchors: compare with what --calibrate-standins makes in a run (from the public "
                        "nonmembers as Task3 texts, written to WORK/public-task3.jsonl)")
    parser.add_argument("--fit-scales", action="store_true", help="fit each kind's fraction on train's withheld "
                        "documents, as a multiple of the matched one")
    parser.add_argument("--scales", type=float_list, default=(1.0, 1.0, 1.0),
                        help="Task1,Task2,Task3 multiples of the fraction for the written stand-ins (and the check)")
    parser.add_argument("--write-anchors", type=Path, help="also write stand-ins of other retain documents of "
                        "every kind (the --write column) as an --anchor-texts file")
    args = parser.parse_args()
    if args.check_library and not (args.write and args.write_anchors and args.write_template):
        parser.error("--check-library compares with the particulars' files: give --write-template, --write and "
                     "--write-anchors")

    p = paths(args.work)
    model, tokenizer = load_causal_lm(p["target"]), load_checkpoint_tokenizer(p["target"])
    torch.set_grad_enabled(False)
    public = unseen_texts(str(p["public"]))
    retain = {split: {task: [r.document for r in load_rows(p["sets"] / split, "retain")
                             if r.kind == "sc" and r.task == task] for task in TASKS} for split in (TUNE, REPORT)}
    seen = {split: {task: kind[: args.count] for task, kind in kinds.items()} for split, kinds in retain.items()}
    goal = median_nll(model, tokenizer, public)
    fractions = {template: matched_fraction(lambda texts: median_nll(model, tokenizer, texts), seen[TUNE]["Task3"],
                                            goal, template, args.steps) for template in (None, args.template)}
    print(f"public nonmembers: median NLL {goal:.2f}; swap fractions matching it on {TUNE} Task3: "
          f"any word {fractions[None]:.3f}, particulars {fractions[args.template]:.3f}")
    scales = dict(zip(TASKS, args.scales, strict=True))
    fitted = {}
    if args.fit_scales:  # what each kind's own unseen documents would have matched, on train only
        unseen = read_withheld(p["target"] / "withheld" / TUNE, "nonmember.jsonl")
        for task, documents in seen[TUNE].items():
            own = matched_fraction(lambda texts: median_nll(model, tokenizer, texts), documents,
                                   median_nll(model, tokenizer, unseen[task][: args.count]), args.template, args.steps)
            fitted[task] = {"fraction": own, "scale": own / fractions[args.template]}
        print(f"each kind's own fraction on {TUNE}, and as a multiple of the matched one: {fitted}")
    table = {}
    for split, kinds in seen.items():
        unseen = read_withheld(p["target"] / "withheld" / split, "nonmember.jsonl")
        for task, documents in kinds.items():
            recombined = recombine(documents, len(documents))
            table[f"{split} {task}"] = {
                "unseen (withheld)": median_nll(model, tokenizer, unseen[task][: args.count]),
                "retain": median_nll(model, tokenizer, documents),
                "recombined": median_nll(model, tokenizer, recombined),
                "recombined, digits redrawn": median_nll(model, tokenizer, redraw_digits(recombined, 0)),
                "words swapped": median_nll(model, tokenizer, swap_words(documents, fractions[None])),
                "particulars swapped": median_nll(model, tokenizer, swap_words(
                    documents, fractions[args.template], template=args.template)),
            }
    columns = list(next(iter(table.values())))
    print(f"{'median NLL':<22}" + "".join(f"{c:>28}" for c in columns))
    for name, row in table.items():
        unseen = row["unseen (withheld)"]
        print(f"{name:<22}" + "".join(f"{v:>20.2f} ({100 * (v / unseen - 1):+4.0f}%)" for v in row.values()))
    template = args.template if args.write_template else None
    if args.write:
        records = [{"text": t, "task": task} for task in ("Task1", "Task2")
                   for t in swap_words(seen[TUNE][task], fractions[template] * scales[task], template=template)]
        records += [{"text": t, "task": "Task3"} for t in public]
        write_texts(args.write, records)
    if args.write_anchors:
        anchors = [{"text": t, "task": task} for task, kind in retain[TUNE].items()
                   for t in swap_words(kind[args.count: 2 * args.count], fractions[template] * scales[task],
                                       template=template)]
        write_texts(args.write_anchors, anchors)
    library = {}
    if args.check_library:  # what `repedit unlearn --calibrate-standins` makes in a run, from each split's retain set
        reference = args.work / "public-task3.jsonl"  # challenge data: in the work directory, not beside --out
        write_texts(reference, [{"text": t, "task": "Task3"} for t in public])
        config = RMUConfig.from_dict({"layers": (5, 6, 7), "max_length": 512, "calibration.unseen": str(reference),
                                      "calibration.standins": args.template, "calibration.standin_scales": args.scales})
        for split in (TUNE, REPORT):
            rows = load_rows(p["sets"] / split, "retain")
            made_texts, made = with_standins(model, tokenizer, config, read_unseen(config, list(TASKS)), rows,
                                             list(TASKS))
            texts, tasks, held = made_texts.texts, made_texts.tasks or [], made_texts.anchor_texts()
            unseen = read_withheld(p["target"] / "withheld" / split, "nonmember.jsonl")
            library[split] = {"fraction": made.fraction, "fractions": made.fractions}
            for task in ("Task1", "Task2"):  # the stand-ins the run calibrates on, against real unseen documents
                mine = [x for x, t in zip(texts, tasks, strict=True) if t == task]
                library[split][task] = {"standins": len(mine), "median_nll": median_nll(model, tokenizer, mine),
                                        "unseen_median_nll": median_nll(model, tokenizer, unseen[task][: args.count])}
            if split == TUNE:
                library[split]["calibration texts as written"] = (
                    sorted(zip(texts, tasks, strict=True)) == sorted((r["text"], r["task"]) for r in records))
                written = [r["text"] for r in anchors]
                library[split]["anchor stand-ins as written"] = (held or [])[-len(written):] == written
            print(f"--calibrate-standins {args.template} on {split}'s retain set: {library[split]}")
    args.out.write_text(json.dumps({"public_median": goal, "fraction": fractions[None], "template": args.template,
                                    "template_fraction": fractions[args.template], "count": args.count,
                                    "scales": args.scales, **({"fitted": fitted} if fitted else {}),
                                    "median_nll": table, **({"library": library} if library else {})}, indent=2))

def write_texts(file: Path, records: list[dict]) -> None:
    write_jsonl(file, records)
    print(f"wrote {len(records)} texts to {file}")


if __name__ == "__main__":
    main()
