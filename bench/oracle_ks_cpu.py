"""Oracle KS on the tiny target of real documents: runs' forget documents against the retrain oracle's.

The yardstick's oracle KS column (``repedit.collateral``) for the runs ``bench/method_cpu.py --real`` makes: the
two-sample Kolmogorov-Smirnov statistic between a run's whole-document NLLs of the forget documents and the retrain
oracle's (``WORK/oracle``, ``method_cpu.py --oracle``), each kind's and pooled, with each kind's median beside the
oracle's. 0: the forget documents read as if never trained on.

    python bench/oracle_ks_cpu.py --work /tmp/method-real --runs "WORK/runs/NAME seed 0" ... --out ks.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.collateral import ks_statistic, nll_of
from repedit.data import TASKS, load_rows


def oracle_ks(work: Path, runs: list[Path]) -> dict:
    """The oracle's forget-document medians per kind, and each run's KS per kind, pooled, and medians."""
    forget = [r for r in load_rows(work / "data", "forget") if r.kind == "sc"]

    def by_kind(values: list[float]) -> dict[str, list[float]]:
        return {t: [v for v, r in zip(values, forget, strict=True) if r.task == t] for t in TASKS}

    def nlls(model_dir: Path) -> list[float]:
        model, tokenizer = load_causal_lm(model_dir), load_checkpoint_tokenizer(model_dir)
        return nll_of(model, tokenizer, [r.document for r in forget], f"{model_dir}: forget documents", 64)

    oracle = nlls(work / "oracle")
    kinds = by_kind(oracle)
    result: dict = {"oracle_median": {t: statistics.median(v) for t, v in kinds.items()}, "runs": {}}
    for run in runs:
        values = nlls(run)
        mine = by_kind(values)
        result["runs"][str(run)] = {"ks": {t: ks_statistic(mine[t], kinds[t]) for t in TASKS},
                                    "pooled": ks_statistic(values, oracle),
                                    "median": {t: statistics.median(v) for t, v in mine.items()}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="bench/method_cpu.py's --work, with its oracle")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="unlearned checkpoints (WORK/runs/...)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    args = parser.parse_args()
    if not (args.work / "oracle" / "config.json").is_file():
        parser.error(f"--work {args.work}: no oracle at {args.work / 'oracle'}; build it with method_cpu.py --oracle")
    result = oracle_ks(args.work, args.runs)
    args.out.write_text(json.dumps(result, indent=1))
    medians = " / ".join(f"{result['oracle_median'][t]:.2f}" for t in TASKS)
    print(f"{'run':60} {'KS ' + ' / '.join(TASKS):>26} {'pooled':>7}  median (oracle {medians})")
    for run, row in result["runs"].items():
        ks, median = (" / ".join(f"{row[key][t]:.2f}" for t in TASKS) for key in ("ks", "median"))
        print(f"{Path(run).name[-60:]:60} {ks:>26} {row['pooled']:7.2f}  {median}")


if __name__ == "__main__":
    main()
