"""The stand-in scales that put each kind's stop level at unseen documents of the kind, for retain sets of a size.

A run without unseen texts of a kind calibrates it on stand-ins: its retain documents with a fraction of their
particulars swapped, the fraction matched on the kind that has texts, times the kind's scale
(``--calibrate-standin-scales``). The preset's scales, 0.94 and 0.63 for stories and PII biographies, put each
kind's level at the median of the sim's withheld documents with train's whole retain set (63 / 62 / 119 documents a
kind). Validation's runs make their stand-ins from 15 / 13 / 25, and the stop rule's attack read its PII biographies
as more forgotten than the held-out one did by 0.03-0.31 a call, in step with how far below the withheld documents
their level sat (``analysis/calibration.ipynb``: Task2 r -1.00 over five calls). This draws ``--draws`` retain
sets of ``--sizes`` documents a kind at random from ``--retain``, matches the fraction as a run does
(``repedit.standins.match``), and bisects each other kind's scale until its stand-ins' median NLL is the median of
the ``--withheld`` documents of that kind: each draw's scales, and their median, the scales for a run on a retain set
of that size. ``--sizes every`` reads the whole set once. ``--count``: the stand-ins a kind
(``--calibrate-standin-count``) the run would make.

``--edited``: the target unlearned on that retain set (a run's written weights). The stop rule reads its stand-ins on
the edited model, where the anchor's swaps of the same retain documents and the retain terms hold them: on the sim's
validation the preset's PII stand-ins, level with the withheld biographies on the target, sat 0.32 nats under them at
the written check (BENCHMARKS.md, fifty-second call). With it the fraction is still matched on the target, as a run
matches it, but each scale is bisected until its stand-ins' median NLL under the edited model is the withheld
documents' median under it: the scales that put the level where the held-out attack reads it, for that edit. On the
twenty-second build they came out near the target's (1.11 / 0.75 under the preset's edit, 1.08 / 0.76 on the target),
and brought the held-out attack within -0.10 to +0.03 of the stop rule's on stories and PII biographies (fifty-fourth
call).

    PYTHONPATH=$PWD:$PWD/bench python bench/standin_scales.py --target T --unseen U.jsonl --retain R.jsonl \\
        --withheld W.jsonl [--sizes 15,13,25 | --sizes every] [--draws 8] [--layers 5,6,7] [--edited E] \\
        [--device cuda] [--out scales.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from standin_levels import document_ids, withheld_nlls

from repedit.calibration import median_nll_under, read_unseen
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import TASKS, Row, load_rows
from repedit.methods import config_from_dict, preset
from repedit.standins import calibration_standins, match, retain_documents

STEPS = 8  # bisection steps on each scale: to 1/256 of the range the fraction allows


def drawn(rows: list[Row], sizes: dict[str, int], seed: int) -> list[Row]:
    """``rows`` of ``sizes[task]`` documents of each task, drawn at random (``seed``), in their order."""
    rng = random.Random(seed)
    ids = document_ids(rows)
    kept = {task: set(rng.sample(found, min(sizes[task], len(found)))) for task, found in ids.items()}
    return [r for r in rows if r.document_id in kept[r.task]]


def matching_scales(median_nll: Callable[[list[str]], float], retain: dict[str, list[str]], texts: list[str],
                    tasks: list[str], goals: dict[str, float], template: float, count: int,
                    scored_nll: Callable[[list[str]], float]) -> tuple[float, dict[str, float]]:
    """The fraction a run matches (by ``median_nll``, the target's), and for each kind without ``texts`` the scale
    whose stand-ins' median NLL by ``scored_nll`` (the model the stop rule reads them on) is ``goals[kind]``: the
    median rises with the scale, though not strictly (the swaps are random), so the bisection finds a crossing."""
    _, fraction = match(median_nll, retain, texts, tasks, template, count)
    scales = {}
    for kind in (t for t in TASKS if t not in tasks and t in goals):
        low, high = 0.0, 1.0 / fraction  # past 1 / fraction every particular is swapped
        for _ in range(STEPS):
            scale = (low + high) / 2
            made = calibration_standins(retain, [kind], {kind: min(1.0, fraction * scale)}, template, count)
            low, high = (scale, high) if scored_nll([text for text, _ in made]) < goals[kind] else (low, scale)
        scales[kind] = (low + high) / 2
    return fraction, scales


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, required=True, help="the checkpoint before unlearning")
    parser.add_argument("--unseen", type=Path, required=True, help="the calibration texts (.jsonl with a task)")
    parser.add_argument("--retain", type=Path, required=True, help="the retain set to draw from (.jsonl)")
    parser.add_argument("--withheld", type=Path, required=True, help="unseen documents of every kind, with a task")
    parser.add_argument("--sizes", default="every",
                        help="documents a kind to draw, one comma-separated number a task, or 'every' (default)")
    parser.add_argument("--draws", type=int, default=8, help="retain sets to draw (default 8)")
    parser.add_argument("--count", type=int, help="stand-ins a kind (default: the preset's)")
    parser.add_argument("--layers", help="the edited layers (default: the preset's); the NLLs do not depend on them")
    parser.add_argument("--edited", type=Path, help="the target unlearned on this retain set: match the fraction on "
                        "the target, and each kind's stand-ins to its withheld documents under this model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="JSON results")
    args = parser.parse_args()
    sizes = None
    if args.sizes != "every":
        try:
            sizes = dict(zip(TASKS, (int(x) for x in args.sizes.split(",")), strict=True))
        except ValueError:
            raise SystemExit(f"--sizes {args.sizes}: give one whole number a task, e.g. 15,13,25, or 'every'") from None
    if args.draws < 1:
        raise SystemExit(f"--draws {args.draws}: draw at least one retain set")
    if args.count is not None and args.count < 1:
        raise SystemExit(f"--count {args.count}: at least one stand-in a kind")
    config = config_from_dict({**preset("standins"), "calibration.unseen": str(args.unseen),
                               **({"layers": [int(x) for x in args.layers.split(",")]} if args.layers else {}),
                               **({"calibration.standin_count": args.count} if args.count else {})})
    rows = load_rows(args.retain, "retain")
    unseen = read_unseen(config, list(TASKS), rows)
    tokenizer = load_checkpoint_tokenizer(args.target)
    model = load_causal_lm(args.target, torch.float32, args.device)
    model.requires_grad_(False)
    median_nll = median_nll_under(model, tokenizer, config)
    reading = model  # the model the stop rule reads the stand-ins and the withheld documents on
    if args.edited:
        reading = load_causal_lm(args.edited, torch.float32, args.device)
        reading.requires_grad_(False)
    goals = {t: statistics.median(nll) for t, nll in withheld_nlls(reading, tokenizer, args.withheld).items()}
    scored_nll = median_nll_under(reading, tokenizer, config)
    draws = []
    for seed in range(args.draws if sizes else 1):
        retain = retain_documents(drawn(rows, sizes, seed) if sizes else rows)
        fraction, scales = matching_scales(median_nll, retain, unseen.texts, list(unseen.tasks or ()), goals,
                                           config.calibration.standins, config.calibration.standin_count, scored_nll)
        draws.append({"seed": seed, "documents": {t: len(d) for t, d in retain.items()}, "fraction": fraction,
                      "scales": scales})
        print(f"draw {seed}: documents {' / '.join(str(len(retain[t])) for t in TASKS)}, fraction {fraction:.3f}, "
              + ", ".join(f"{t} scale {s:.3f}" for t, s in scales.items()), flush=True)
    kinds = list(draws[0]["scales"])
    median = {t: statistics.median(d["scales"][t] for d in draws) for t in kinds}
    print(f"\n{'kind':8}{'withheld median':>17}{'scale: median':>15}{'range':>15}")
    for t in kinds:
        found = [d["scales"][t] for d in draws]
        print(f"{t:8}{goals[t]:>17.2f}{median[t]:>15.3f}{f'{min(found):.3f}-{max(found):.3f}':>15}")
    if args.out:
        args.out.write_text(json.dumps({"sizes": sizes or "every", "edited": str(args.edited or ""),
                                        "withheld_median": goals, "median": median, "draws": draws}, indent=2))


if __name__ == "__main__":
    main()
