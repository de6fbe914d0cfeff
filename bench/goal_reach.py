"""The edit's goal written in exactly: how far ``--destination-keep``'s goal alone takes each kind's documents.

RMU with ``--destination unseen`` trains the edited layers so that each forget token's h_L moves to its goal: its
kind's mean h_L on unseen text plus, with ``--destination-keep``, the token's own frozen deviation from that mean along
the kind's main directions (``repedit.subspace``). Replacing every token's h_L by its goal and reading the result
through the layers above gives the NLL an edit that met its goal exactly would leave: the most that share can forget.
A share whose goal stops short of a kind's stop level cannot calibrate that kind, and one just past it leaves the run
little room (on the sim's sixty-first call the PII biographies' directions kept at 0.4 lagged the other kinds until
patience ended every run). The same replacement of withheld documents of the kind says how much of what the goal keeps
the layers above read as memorized: the forget documents' NLL under it against the withheld ones'.

    python bench/goal_reach.py --target W/sim --forget W/sets/validation \\
        --withheld W/sim/withheld/validation/nonmember.jsonl --fit W/reference-public-tasks.jsonl \\
        --standins W/sets/validation --fractions 0.554,0.372,0.590 --layers 5,6,7 --shares 0,0.25,0.4,0.6 \\
        --levels 6.95,3.64,8.28 --out F.json

or, with a run's settings read from its ``unlearn.json`` (as ``bench/quality_calls.sh`` runs it after the report):

    python bench/goal_reach.py --target W/sim --forget W/sets/validation \\
        --withheld W/sim/withheld/validation/nonmember.jsonl --standins W/sets/validation \\
        --run W/report/runs/rmu-standins --device cuda --out F.json

or, for a build's train split before any run, as a run of a preset would fit and level it there (its stand-ins matched
and made on the frozen target; as ``bench/quality_calls.sh`` runs it after the validation one):

    python bench/goal_reach.py --target W/sim --forget W/sets/train --withheld W/sim/withheld/train/nonmember.jsonl \\
        --preset standins --fit W/reference-public-tasks.jsonl --standins W/sets/train --out F.json

With levels, the last line names each kind's largest share whose goal clears its level by ``--margin`` nats.

The directions are fitted about as the run fits them (it leaves out the texts its anchor holds): on ``--fit``'s texts
(the run's ``--calibrate`` file: text or document, and task), and for the kinds it lacks on stand-ins made as the run
makes its stop rule's (``--standins``: the retain set's folder; ``--fractions``: the run's ``unlearn.json``
``standins.fractions``; the preset's 96 a kind).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import cast

import torch

from repedit.calibration import median_nll_under, read_unseen, unseen_tasks, unseen_texts, with_standins
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import TASKS, load_rows
from repedit.document_scores import cache_documents, document_batches
from repedit.generate import document_nll
from repedit.methods import config_from_dict, preset
from repedit.rmu import cache_prefix
from repedit.standins import calibration_standins, lacking, retain_documents
from repedit.subspace import goal_nlls, kind_statistics, largest_clearing


def grouped(texts: list[str], tasks: list[str]) -> dict[str, list[str]]:
    """``texts`` per task, in order (``tasks[i]`` is ``texts[i]``'s)."""
    by_task: dict[str, list[str]] = {}
    for text, task in zip(texts, tasks, strict=True):
        by_task.setdefault(task, []).append(text)
    return by_task


def texts_by_task(file: Path) -> dict[str, list[str]]:
    """A file's texts (text or document) per task; every row needs one."""
    texts, tasks = unseen_texts(str(file)), unseen_tasks(str(file))
    if tasks is None:
        raise SystemExit(f"{file}: every row needs a task (Task1, Task2 or Task3)")
    return grouped(texts, tasks)


def goal_reach(model, tokenizer, fit: dict[str, list[str]], scored: dict[str, dict[str, list[str]]], first: int,
               layer: int, shares: list[float], batch_size: int = 8) -> dict:
    """Per task and share: the kept directions' count and each scored set's median NLL with h_``layer`` at its goal,
    beside the set's median as trained. ``fit``: per task, the texts the mean and directions are fitted on (as the
    run fits them on its unseen texts); ``scored``: per set name (forget, withheld), per task, its documents."""
    texts = [t for task in TASKS for t in fit.get(task, [])]
    tasks = [task for task in TASKS for _ in fit.get(task, [])]
    cached = [cache_prefix(model, b, first) for b in document_batches(texts, tokenizer, 512, batch_size)]
    measured = [t for t in TASKS if t in fit and all(t in sets for sets in scored.values())]
    report: dict = {task: {name: statistics.median(document_nll(model, tokenizer, sets[task], desc=f"nll {task}"))
                           for name, sets in scored.items()} | {"shares": {}} for task in measured}
    documents = {(name, task): cache_documents(model, sets[task], tokenizer, 512, batch_size, first)
                 for name, sets in scored.items() for task in measured}
    kinds = kind_statistics(model, cached, tasks, first, layer, directions=True)
    for share in shares:
        projectors = kinds.projectors([share] * len(TASKS))
        for task in measured:
            report[task]["shares"][str(share)] = {
                "directions": round(projectors[TASKS.index(task)].trace().item()),
                **{name: statistics.median(goal_nlls(model, documents[name, task], [task] * len(sets[task]), first,
                                                     layer, kinds.means, projectors).tolist())
                   for name, sets in scored.items()}}
    return report


def print_table(report: dict, levels: dict[str, float] | None) -> None:
    names = [n for n in next(iter(report.values())) if n != "shares"]
    print(f"{'task':6s} {'share':>6s} {'directions':>10s}  " + "  ".join(f"{n:>9s}" for n in names)
          + ("  goal past the level" if levels else ""))
    for task, row in report.items():
        print(f"{task:6s} {'trained':>6s} {'':>10s}  " + "  ".join(f"{row[n]:9.2f}" for n in names))
        for share, found in row["shares"].items():
            past = f"  {found[names[0]] - levels[task]:+.2f}" if levels else ""
            print(f"{task:6s} {share:>6s} {found['directions']:10d}  " + "  ".join(f"{found[n]:9.2f}" for n in names)
                  + past)


def clearing_shares(report: dict, levels: dict[str, float], margin: float) -> dict[str, float | None]:
    """Per task, the largest share tried whose goal takes the forget documents at least ``margin`` nats past the
    kind's stop level (None: not even share 0's): how c16's and c17's shares were read off train's table (2 nats;
    BENCHMARKS.md, sixty-first to sixty-third calls)."""
    return {task: largest_clearing({float(share): found["forget"] - levels[task]
                                    for share, found in row["shares"].items()}, margin)
            for task, row in report.items()}


def run_settings(folder: Path) -> dict:
    """What ``--run`` reads from a run's ``unlearn.json``: its edited layers, its first check's stop levels, its
    stand-ins' fractions, template share and count, and its ``--calibrate`` file."""
    file = folder / "unlearn.json"
    if not file.is_file():
        raise SystemExit(f"--run {folder}: no unlearn.json there (a report run's folder)")
    record = json.loads(file.read_text())
    calibration = record["config"].get("calibration") or {}
    return {"layers": record["config"]["layers"], "levels": (record.get("calibration") or [{}])[0].get("task_level"),
            "fractions": (record.get("standins") or {}).get("fractions"), "fit": calibration.get("unseen"),
            "template": calibration.get("standins"), "standin_count": calibration.get("standin_count")}


def preset_settings(model, tokenizer, name: str, fit: Path, retain: Path, tasks: list[str]) -> dict:
    """What a run of preset ``name`` calibrated on ``fit`` with ``retain``'s retain set would read before its first
    step, on the frozen ``model``: its layers, its stop rule's texts (``fit``'s kept ones and the stand-ins it makes,
    at the fractions it matches) as the directions' texts, and their median NLL per task as the levels. So a build's
    train margins need no run of their own."""
    config = config_from_dict({**preset(name), "calibration.unseen": str(fit)})
    rows = load_rows(retain, "retain")
    unseen, made = with_standins(model, tokenizer, config, read_unseen(config, tasks, rows), rows, tasks)
    texts = grouped(unseen.texts, cast(list[str], unseen.tasks))
    median_nll = median_nll_under(model, tokenizer, config)
    return {"layers": list(config.layers), "levels": {task: median_nll(docs) for task, docs in texts.items()},
            "fractions": made.fractions, "texts": texts}


def given_settings(args: argparse.Namespace) -> dict:
    """The same from the command line."""
    def per_task(values: str | None) -> dict[str, float] | None:
        return dict(zip(TASKS, (float(x) for x in values.split(",")), strict=True)) if values else None

    return {"layers": [int(x) for x in args.layers.split(",")], "levels": per_task(args.levels),
            "fractions": per_task(args.fractions), "fit": args.fit, "template": args.template,
            "standin_count": args.standin_count}


def flag_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict | None:
    """The settings ``--run`` or the flags give, checked; None for ``--preset``, whose are read on the target."""
    if args.preset is not None:
        given = [flag for flag in ("run", "fractions", "layers", "levels") if getattr(args, flag) is not None]
        if given:
            parser.error(f"--preset reads them: leave out --{', --'.join(given)}")
        if args.fit is None or args.standins is None:
            parser.error("--preset needs --fit (the run's --calibrate file) and --standins (its retain set's folder)")
        return None
    if args.run is not None:
        given = [flag for flag in ("fit", "fractions", "layers", "levels") if getattr(args, flag) is not None]
        if given:
            parser.error(f"--run gives them: leave out --{', --'.join(given)}")
        settings = run_settings(args.run)
    elif args.layers is None:
        parser.error("give --layers, --run or --preset")
    else:
        settings = given_settings(args)
    if (args.standins is None) != (settings["fractions"] is None):
        parser.error("--standins goes with the stand-ins' fractions (--fractions, or a --run that made stand-ins)")
    if settings["fit"] is None and args.standins is None:
        parser.error("give the directions' texts: --fit or --standins with --fractions")
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=Path, required=True, help="the model the edit starts from")
    parser.add_argument("--forget", type=Path, required=True, help="a folder with the forget set")
    parser.add_argument("--withheld", type=Path, required=True, help="unseen documents with their task (.jsonl)")
    parser.add_argument("--run", type=Path, help="a run's folder: its unlearn.json gives the layers, levels, "
                        "fractions and --fit file (not given with it), and its template share and stand-in count "
                        "replace --template's and --standin-count's")
    parser.add_argument("--preset", help="read the layers, levels, stand-ins and directions' texts as a run of this "
                        "preset calibrated on --fit with --standins' retain set would, on the frozen target (no "
                        "--layers, --levels, --fractions)")
    parser.add_argument("--fit", type=Path, help="texts with their task the directions are fitted on (.jsonl)")
    parser.add_argument("--standins", type=Path, help="a folder with the retain set the run's stand-ins are made of")
    parser.add_argument("--fractions", help="with --standins: each task's swap fraction, Task1,Task2,Task3")
    parser.add_argument("--standin-count", type=int, default=96, help="stand-ins a kind (the preset's 96)")
    parser.add_argument("--template", type=float, default=0.1,
                        help="the stand-ins' template share (the run's --calibrate-standins)")
    parser.add_argument("--layers", help="the edited layers, e.g. 5,6,7: the goal is at the last")
    parser.add_argument("--shares", default="0,0.25,0.4,0.6", help="the kept shares of variance to try")
    parser.add_argument("--levels", help="each task's stop level (NLL), Task1,Task2,Task3, to print the margin")
    parser.add_argument("--margin", type=float, default=2.0, help="with the levels: name each kind's largest share "
                        "whose goal clears its level by this many nats")
    parser.add_argument("--device", default="cpu", help="where the model runs (the sim's: seconds on a GPU)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON result")
    args = parser.parse_args()
    settings = flag_settings(parser, args)
    model = load_causal_lm(args.target, torch.float32, args.device)
    tokenizer = load_checkpoint_tokenizer(args.target)
    forget_rows = load_rows(args.forget, "forget")
    if settings is None:  # --preset: read on the target, as its run would
        with torch.no_grad():
            settings = preset_settings(model, tokenizer, args.preset, args.fit, args.standins,
                                       [r.task for r in forget_rows])
        fit = settings["texts"]
    else:
        fit = texts_by_task(Path(settings["fit"])) if settings["fit"] else {}
        if args.standins:
            made = calibration_standins(retain_documents(load_rows(args.standins, "retain")), lacking(TASKS, fit),
                                        settings["fractions"], settings["template"], settings["standin_count"])
            for text, task in made:
                fit.setdefault(task, []).append(text)
    layers, levels = settings["layers"], settings["levels"]
    scored = {"forget": retain_documents(forget_rows), "withheld": texts_by_task(args.withheld)}
    with torch.no_grad():
        report = goal_reach(model, tokenizer, fit, scored, min(layers), max(layers),
                            [float(x) for x in args.shares.split(",")])
    clearing = clearing_shares(report, levels, args.margin) if levels else None
    args.out.write_text(json.dumps({"layers": layers, "levels": levels, "fractions": settings["fractions"],
                                    "fit": {t: len(v) for t, v in fit.items()}, "tasks": report,
                                    "margin": args.margin, "clearing": clearing}, indent=2))
    print_table(report, levels)
    if clearing:
        named = ", ".join(f"{task} {share if share is not None else 'none'}" for task, share in clearing.items())
        print(f"the largest share whose goal clears each kind's level by {args.margin:g} nats: {named}")


if __name__ == "__main__":
    main()
