"""Where each kind's attack AUC comes from: its forget documents' level against the oracle's, or the rise of its
unseen documents against the target's.

The loss attack's per-kind AUC (``all_kind_auc``) reads where a run's forget documents sit among the withheld unseen
documents of their kind, both scored under the run. A run can leave its forget documents where the retrain oracle
has them and still read as a member, because the edit raised the unseen ones too: the twenty-seventh build's c20 left
forget stories at the oracle's median and its unseen stories 0.8 nats up, AUC 0.76-0.81. From a quality report's
stored NLLs (no model runs), per row and kind, medians in nats a token:

- ``shortfall``: the oracle's forget median less the run's (> 0: forgotten less far than the oracle);
- ``rise``: the run's unseen median less the target's (the edit's collateral on the kind);
- ``gap``: the run's unseen median less its forget median, what the AUC reads (the oracle's own beside it).

    python bench/kind_gaps.py bench/results/quality-h100-eightythird.json.xz \\
        bench/results/quality-h100-eightyfourth.json.xz --out gaps.json
"""

from __future__ import annotations

import argparse
import json
import lzma
import statistics
from pathlib import Path

from quality import ORACLE_ROW as ORACLE
from quality import TARGET_ROW as TARGET

NAME_WIDTH = 60  # the table's run column; longer names end in "~"


def read_rows(paths: list[Path]) -> dict[str, dict]:
    """Every report's rows by name (.json or .json.xz). The oracle and target rows repeat in every report of one
    build and must agree; a run's name that two reports give different runs (a baseline whose choice train moved
    between them) gets its report's file name after it."""
    rows: dict[str, dict] = {}
    for path in paths:
        opener = lzma.open if path.suffix == ".xz" else open
        with opener(path, "rt") as handle:
            report = json.load(handle)
        if "rows" not in report:
            raise SystemExit(f"{path}: no 'rows': not a report of bench/quality.py")
        for row in report["rows"]:
            name, earlier = row["name"], rows.get(row["name"])
            if earlier is not None and earlier != row:
                if name in (ORACLE, TARGET):
                    raise SystemExit(f"{path}: its '{name}' row differs from an earlier report's: two builds")
                name = f"{name} ({path.name})"
            rows[name] = row
    for needed in (ORACLE, TARGET):
        if needed not in rows:
            raise SystemExit(f"{', '.join(map(str, paths))}: no '{needed}' row, which every gap is measured from")
    return rows


def kind_gaps(rows: dict[str, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Each row's (the oracle's and target's too) shortfall, rise, gap and AUC per kind."""
    oracle, target = rows[ORACLE]["collateral"], rows[TARGET]["collateral"]
    gaps: dict[str, dict[str, dict[str, float]]] = {}
    for name, row in rows.items():
        collateral = row["collateral"]
        gaps[name] = {}
        for kind, forget in collateral["forget_nll"].items():
            run_forget, run_unseen = statistics.median(forget), statistics.median(collateral["withheld_nll"][kind])
            gaps[name][kind] = {
                "shortfall": statistics.median(oracle["forget_nll"][kind]) - run_forget,
                "rise": run_unseen - statistics.median(target["withheld_nll"][kind]),
                "gap": run_unseen - run_forget,
                "auc": collateral["all_kind_auc"][kind]}
    return gaps


def print_table(gaps: dict[str, dict[str, dict[str, float]]]) -> None:
    kinds = sorted({kind for row in gaps.values() for kind in row})
    width = min(max(len(name) for name in gaps), NAME_WIDTH) + 2
    print(f"{'run':{width}}" + "".join(f"{kind + ': shortfall  rise   gap   AUC':>37}" for kind in kinds))
    for name, row in gaps.items():
        short = name if len(name) <= NAME_WIDTH else name[:NAME_WIDTH - 1] + "~"
        print(f"{short:{width}}" + "".join(
            f"{row[k]['shortfall']:>21.2f}{row[k]['rise']:>6.2f}{row[k]['gap']:>6.2f}{row[k]['auc']:>6.2f}"
            if k in row else f"{'-':>37}" for k in kinds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", type=Path, nargs="+", help="quality reports of one build (.json or .json.xz)")
    parser.add_argument("--out", type=Path, help="the gaps as JSON")
    args = parser.parse_args()
    gaps = kind_gaps(read_rows(args.reports))
    print_table(gaps)
    if args.out:
        args.out.write_text(json.dumps(gaps, indent=2))


if __name__ == "__main__":
    main()
