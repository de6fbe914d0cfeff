"""The stop rule's level of each kind beside unseen documents of that kind, as the retain set the stand-ins come from
shrinks.

On the sim's validation split the stop rule's PII level sat 4-22% below the target's withheld PII biographies on every
build read (stories within 4%, Wikipedia biographies within 2%), and the held-out attack read the PII biographies as
less forgotten than the stop rule's own attack did (BENCHMARKS.md, "Fortieth call"). The PII scale of the preset
(``--calibrate-standin-scales``) was measured on train, whose retain set gives the stand-ins 24 PII documents where
validation's gives 6. This makes the stand-ins as a run makes them (``read_unseen`` and ``with_standins`` under the
preset's configuration, the frozen target) from each retain set cut to its first n documents a kind, and prints each
kind's level (``task_levels``: the median NLL of its stand-ins, or of its given texts) beside the median NLL of
withheld documents of that kind: if the PII level falls as n falls, the scale measured on one retain set does not
carry to a smaller one. ``--scales`` (or ``--grid``) gives the levels at each set of stand-in scales a grid tunes:
at the preset's, the tune's proxy attack on train read stories and PII biographies as under-forgotten (AUC above
0.55) in 88% and 68% of 95 calibrated runs over nineteen calls, Wikipedia biographies, whose texts are real, in 38%.
``--counts`` reads them at each number of stand-ins a kind (``--calibrate-standin-count``): the level is a median over
random swaps, and a few documents swapped with the same few seeds read low or high by the seeds' chance.

Each row also reads the spread, what ``--calibrate-goals`` asks: the KS distance of the withheld documents from the
stop rule's texts of their kind (a forget set at its quantile goals is distributed as those texts) and from the same
documents each lifted to the level at least (the least a forget set at the median goals is): on the forty-second
build's train split, 0.12 / 0.26 / 0.12 against 0.40 / 0.48 / 0.50 (BENCHMARKS.md, "Forty-second call").

    PYTHONPATH=$PWD python bench/standin_levels.py --target T --unseen U.jsonl --retain train=R1 validation=R2 \
        --withheld train=W1 validation=W2 [--sizes 6,13,26] [--scales 0.94,0.63,1 1.1,0.7,1 | --grid G.json] \
        [--counts 24,96] [--layers 5,6,7] [--device cuda] [--out levels.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from repedit.calibration import read_unseen, task_levels, unseen_tasks, unseen_texts, with_standins
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer, read_config
from repedit.collateral import ks_statistic, nll_of
from repedit.data import TASKS, Row, load_rows
from repedit.document_scores import cache_documents, document_nlls
from repedit.methods import config_from_dict, preset
from repedit.standins import retain_documents


def first_documents(rows: list[Row], size: int | None) -> list[Row]:
    """``rows`` of each task's first ``size`` documents (every one for None), in order."""
    kept = {task: set(ids[:size]) for task, ids in document_ids(rows).items()}
    return [r for r in rows if r.document_id in kept.get(r.task, ())]


def document_ids(rows: list[Row]) -> dict[str, list[str]]:
    """Each task's document ids, in the order the rows first give them."""
    ids: dict[str, list[str]] = {}
    for r in rows:
        if r.document_id not in ids.setdefault(r.task, []):
            ids[r.task].append(r.document_id)
    return ids


@torch.no_grad()
def levels(model, tokenizer, config, rows: list[Row]) -> dict:
    """Each task's level, the NLLs of the texts the stop rule scores and the fractions its stand-ins were swapped at,
    as a run on ``rows`` would set them."""
    unseen, made = with_standins(model, tokenizer, config, read_unseen(config, list(TASKS), rows), rows,
                                 list(TASKS))
    first, layer = min(config.layers), config.layer
    cached = cache_documents(model, unseen.texts, tokenizer, config.max_length, config.pass_rows, first)
    nlls = cached.in_given_order(document_nlls(model, cached.batches, first, layer))
    found, values = task_levels(nlls, unseen.tasks), nlls.tolist()
    documents = retain_documents(rows)
    return {"documents": {t: len(documents.get(t, [])) for t in TASKS}, "fractions": made.fractions,
            "matched_on": made.matched_on, "level": dict(zip(TASKS, found.tolist(), strict=True)),
            "texts_nll": {t: [v for v, k in zip(values, unseen.tasks, strict=True) if k == t] for t in TASKS}}


def withheld_nlls(model, tokenizer, path: Path) -> dict[str, list[float]]:
    """Each task's document NLLs over the texts of ``path`` (.jsonl, each with a task)."""
    texts, tasks = unseen_texts(str(path)), unseen_tasks(str(path))
    if tasks is None:
        raise SystemExit(f"--withheld: {path}: the texts need a task field")
    nlls = nll_of(model, tokenizer, texts, str(path))
    return {t: [n for n, k in zip(nlls, tasks, strict=True) if k == t] for t in TASKS if t in tasks}


def spread(row: dict, withheld: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each task's KS distance of the withheld documents from the stop rule's texts (quantile goals) and from
    themselves lifted to the level at least (the median goals' floor)."""
    return {"quantile goals": {t: ks_statistic(nll, row["texts_nll"][t]) for t, nll in withheld.items()},
            "median floor": {t: ks_statistic(nll, [max(v, row["level"][t]) for v in nll])
                             for t, nll in withheld.items()}}


def scales(value: str) -> tuple[float, ...]:
    """Comma-separated numbers; whether they are stand-in scales the library's validation says (``main``)."""
    try:
        return tuple(float(x) for x in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give one number a task, e.g. 0.94,0.63,1") from None


def grid_scales(path: Path) -> list[tuple[float, ...]]:
    """Each configuration's stand-in scales in a grid file (its own, else the base's), once each, in order."""
    grid = json.loads(path.read_text())
    base = grid.get("base", {}).get("calibration", {}).get("standin_scales")
    found = [entry.get("calibration.standin_scales", entry.get("calibration", {}).get("standin_scales", base))
             for entry in grid.get("configs", [{}])]
    if None in found:
        raise SystemExit(f"--grid: {path}: a configuration without stand-in scales (calibration.standin_scales)")
    return list(dict.fromkeys(tuple(float(x) for x in scaled) for scaled in found))


def named(value: str) -> tuple[str, Path]:
    name, _, path = value.partition("=")
    if not path:
        raise argparse.ArgumentTypeError(f"{value!r}: give NAME=PATH")
    return name, Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, required=True, help="the checkpoint before unlearning")
    parser.add_argument("--unseen", type=Path, required=True, help="the calibration texts (.jsonl with a task)")
    parser.add_argument("--retain", type=named, nargs="+", required=True, help="retain sets, as NAME=PATH")
    parser.add_argument("--withheld", type=named, nargs="+", required=True,
                        help="unseen documents with a task, as NAME=PATH")
    parser.add_argument("--sizes", default="", help="documents a kind to cut each retain set to (every one as well)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--scales", type=scales, nargs="+",
                       help="stand-in scales to read the levels at, one comma-separated value a task (default: the "
                            "preset's)")
    which.add_argument("--grid", type=Path, help="or the stand-in scales of each of this grid's configurations "
                                                  "(a bench/grids file)")
    parser.add_argument("--counts", default="", help="stand-ins a kind to read the levels at, comma-separated "
                        "(default: the preset's)")
    parser.add_argument("--layers", help="the edited layers (default: the preset's); the NLLs do not depend on them")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="JSON results")
    args = parser.parse_args()
    base = {**preset("standins"), "calibration.unseen": str(args.unseen),
            **({"layers": [int(x) for x in args.layers.split(",")]} if args.layers else {})}
    wanted = args.scales or (grid_scales(args.grid) if args.grid else [base["calibration"]["standin_scales"]])
    counts = [int(x) for x in args.counts.split(",") if x] or [config_from_dict(base).calibration.standin_count]
    configs = {(tuple(s), n): config_from_dict({**base, "calibration.standin_scales": list(s),
                                                "calibration.standin_count": n})
               for s in wanted for n in counts}
    layers = read_config(args.target).num_hidden_layers
    for config in configs.values():  # every set of scales checked as a run checks it, before the model loads
        try:
            config.validate(layers)
        except ValueError as error:
            raise SystemExit(str(error)) from None
    sizes = [int(x) for x in args.sizes.split(",") if x]
    sets = {name: load_rows(path, "retain") for name, path in args.retain}
    tokenizer = load_checkpoint_tokenizer(args.target)
    model = load_causal_lm(args.target, torch.float32, args.device)
    model.requires_grad_(False)
    unseen = {name: withheld_nlls(model, tokenizer, path) for name, path in args.withheld}
    medians = {name: {t: statistics.median(nll) for t, nll in each.items()} for name, each in unseen.items()}
    found: dict[str, dict] = {}
    for name, rows in sets.items():
        most = max(len(ids) for ids in document_ids(rows).values())
        for size in [*sorted(s for s in sizes if s < most), None]:
            for (scaled, count), each in configs.items():
                label = (f"{name}, {size or 'every'} a kind"
                         + (f", scales {','.join(map(str, scaled))}" if len(wanted) > 1 else "")
                         + (f", {count} stand-ins" if len(counts) > 1 else ""))
                found[label] = levels(model, tokenizer, each, first_documents(rows, size))
                found[label]["spread"] = {held: spread(found[label], nll) for held, nll in unseen.items()}
    print(f"{'retain set':44}{'documents T1/T2/T3':>20}{'fraction T1/T2/T3':>20}{'level T1/T2/T3':>22}  "
          + "  ".join(f"against {n} withheld" for n in unseen))
    for label, row in found.items():
        joined = {key: " / ".join(form.format(row[key][t]) for t in TASKS)
                  for key, form in (("documents", "{}"), ("fractions", "{:.2f}"), ("level", "{:.2f}"))}
        versus = "  ".join(" / ".join(f"{100 * (row['level'][t] / med[t] - 1):+5.1f}%" for t in TASKS if t in med)
                           for med in medians.values())
        print(f"{label:44}{joined['documents']:>20}{joined['fractions']:>20}{joined['level']:>22}  {versus}")
    print(f"\n{'KS of the withheld documents from':44}" + "".join(
        f"{name + ': texts / median floor':>44}" for name in unseen))
    for label, row in found.items():
        cells = [" / ".join(f"{ks:.2f}" for ks in row["spread"][name][goals].values())
                 for name in unseen for goals in ("quantile goals", "median floor")]
        print(f"{label:44}" + "".join(f"{cells[i] + '  |  ' + cells[i + 1]:>44}" for i in range(0, len(cells), 2)))
    if args.out:
        args.out.write_text(json.dumps({"withheld": medians, "levels": found}, indent=2))


if __name__ == "__main__":
    main()
