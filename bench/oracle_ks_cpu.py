"""Oracle KS on the tiny target of real documents: runs' forget documents against the retrain oracle's.

The yardstick's oracle KS column (``repedit.collateral``) for the runs ``bench/method_cpu.py --real`` makes: the
two-sample Kolmogorov-Smirnov statistic between a run's whole-document NLLs of the forget documents and the retrain
oracle's (``WORK/oracle``, ``method_cpu.py --oracle``), each kind's and pooled, with each kind's median beside the
oracle's. 0: the forget documents read as if never trained on. Beside it the same KS against each model's own
level (``own_ks``): each model's forget NLLs less its own level of each kind's reference texts (the stop rule's
median, ``task_levels``; ``WORK/reference.jsonl``), the oracle's alike, as the tune's proxy reads train's oracle
(``oracle_ks_relative``): what an attacker who calibrates on the model's unseen text sees, where the absolute KS also
asks for the oracle's level of the whole domain.

    python bench/oracle_ks_cpu.py --work /tmp/method-real --runs "WORK/runs/NAME seed 0" ... --out ks.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.collateral import nll_of, oracle_ks
from repedit.data import TASKS, load_rows
from repedit.proxy import kind_levels


def runs_against_oracle(work: Path, runs: list[Path]) -> dict:
    """The oracle's forget-document medians and reference levels per kind, and each run's KS per kind, pooled, and
    medians, and its KS against own levels (``own_ks``, per kind and ``"all"``) with its levels."""
    forget = [r for r in load_rows(work / "data", "forget") if r.kind == "sc"]
    reference = [json.loads(line) for line in (work / "reference.jsonl").read_text().splitlines() if line.strip()]

    def by_kind(values: list[float]) -> dict[str, list[float]]:
        return {t: [v for v, r in zip(values, forget, strict=True) if r.task == t] for t in TASKS}

    def nlls(model_dir: Path) -> tuple[list[float], dict[str, float]]:
        model, tokenizer = load_causal_lm(model_dir), load_checkpoint_tokenizer(model_dir)
        unseen = nll_of(model, tokenizer, [r["text"] for r in reference], f"{model_dir}: reference texts", 64)
        return (nll_of(model, tokenizer, [r.document for r in forget], f"{model_dir}: forget documents", 64),
                kind_levels(unseen, [r["task"] for r in reference]))

    def from_level(values: list[float], level: dict[str, float]) -> dict[str, list[float]]:
        return {t: [v - level[t] for v in vs] for t, vs in by_kind(values).items()}

    oracle, oracle_level = nlls(work / "oracle")
    kinds = by_kind(oracle)
    result: dict = {"oracle_median": {t: statistics.median(v) for t, v in kinds.items()}, "oracle_level": oracle_level,
                    "runs": {}}
    for run in runs:
        values, level = nlls(run)
        mine = by_kind(values)
        absolute = oracle_ks(mine, kinds)
        result["runs"][str(run)] = {"ks": {t: absolute[t] for t in TASKS}, "pooled": absolute["all"],
                                    "median": {t: statistics.median(v) for t, v in mine.items()},
                                    "own_ks": oracle_ks(from_level(values, level), from_level(oracle, oracle_level)),
                                    "level": level}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="bench/method_cpu.py's --work, with its oracle")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="unlearned checkpoints (WORK/runs/...)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    args = parser.parse_args()
    if not (args.work / "oracle" / "config.json").is_file():
        parser.error(f"--work {args.work}: no oracle at {args.work / 'oracle'}; build it with method_cpu.py --oracle")
    result = runs_against_oracle(args.work, args.runs)
    args.out.write_text(json.dumps(result, indent=1))
    medians = " / ".join(f"{result['oracle_median'][t]:.2f}" for t in TASKS)
    print(f"{'run':60} {'KS ' + ' / '.join(TASKS):>26} {'pooled':>7}  {'own-level KS':>18} {'pooled':>7}  "
          f"median (oracle {medians})")
    for run, row in result["runs"].items():
        ks, own, median = (" / ".join(f"{row[key][t]:.2f}" for t in TASKS) for key in ("ks", "own_ks", "median"))
        print(f"{Path(run).name[-60:]:60} {ks:>26} {row['pooled']:7.2f}  {own:>18} {row['own_ks']['all']:7.2f}  "
              f"{median}")


if __name__ == "__main__":
    main()
