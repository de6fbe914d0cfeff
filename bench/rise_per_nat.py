"""What each run's forgetting cost the unseen text of the same kinds, from stored tune results (no model run).

Per run of a tune's ``results.csv``: how far its forget documents' mean NLL rose over the input model's
(``proxy_forget_nll``, nats a token), how far the proxy's reference texts rose (``proxy_reference_nll``: withheld
documents of the forget set's kinds, never trained on), and the second over the first, the rise per nat forgotten.
The attack band on a kind needs its unseen documents to stay near their level while its forget documents reach
theirs, so this ratio, not the rise alone, is what a candidate for the band has to lower: c20's stories' rise was the
same per nat whichever of their tokens were misdirected (BENCHMARKS.md, "Eighty-fifth session").

Each file is read against its own input row, for the reference texts changed between builds; runs that forgot less
than ``--min-forgetting`` nats get no ratio (a small denominator's ratio is noise). Pooled over the kinds: per kind,
``bench/particulars_cpu.py --edited`` reads it from the weights.

    python bench/rise_per_nat.py bench/results/tune-h100-eightyfifth.csv bench/results/tune-h200-thirtyeighth.csv \\
        --method rmu-standins --out per-nat.json
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from repedit.grid import INPUT

COLUMNS = ("proxy_forget_nll", "proxy_reference_nll")


def per_nat(path: Path, method: str | None = None, min_forgetting: float = 1.0) -> list[dict]:
    """``path``'s runs (of ``method`` where given), each with its forgetting, its reference texts' rise (nats and
    share) and their ratio, against the file's input row; a file without that row or those columns is refused."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in ("name", "label", "proxy_final", *COLUMNS) if rows and c not in rows[0]]
    if not rows or missing:
        raise SystemExit(f"{path}: no tune rows with {', '.join(missing or COLUMNS)}; give a tune's results.csv")
    before = next((r for r in rows if r["name"] == INPUT), None)
    if before is None or not all(before[c] for c in COLUMNS):
        raise SystemExit(f"{path}: no scored {INPUT!r} row to measure the runs' rises from")
    forget0, reference0 = (float(before[c]) for c in COLUMNS)
    runs = []
    for row in rows:
        other_method = method is not None and not row["name"].startswith(f"{method}.")
        if row["name"] == INPUT or other_method or not all(row[c] for c in COLUMNS):
            continue  # a failed run has no proxy
        forgot, rose = float(row["proxy_forget_nll"]) - forget0, float(row["proxy_reference_nll"]) - reference0
        runs.append({"file": path.name, "name": row["name"], "label": row["label"], "forgot": forgot, "rose": rose,
                     "rose_share": rose / reference0, "per_nat": rose / forgot if forgot >= min_forgetting else None,
                     "final": float(row["proxy_final"])})
    return runs


def table(runs: list[dict]) -> str:
    """One line a run, each file's runs from the least rise per nat (those without a ratio last)."""
    lines = [f"{'file':<34} {'run':<28} {'per nat':>7} {'forgot':>7} {'rose':>7} {'final':>6}  label"]
    for run in sorted(runs, key=lambda r: (r["file"], r["per_nat"] is None, r["per_nat"] or 0.0)):
        ratio = "-" if run["per_nat"] is None else f"{run['per_nat']:.3f}"
        lines.append(f"{run['file']:<34} {run['name']:<28} {ratio:>7} {run['forgot']:7.2f} "
                     f"{100 * run['rose_share']:+6.1f}% {run['final']:6.3f}  {run['label']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="tune results.csv files (bench/results/tune-*.csv)")
    parser.add_argument("--method", help="only this method's runs (e.g. rmu-standins)")
    parser.add_argument("--min-forgetting", type=float, default=1.0,
                        help="nats a token the forget documents must have risen for a ratio (default 1)")
    parser.add_argument("--out", type=Path, help="the runs as JSON")
    args = parser.parse_args()
    runs = [run for path in args.results for run in per_nat(path, args.method, args.min_forgetting)]
    print(table(runs))
    if args.out:
        args.out.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
