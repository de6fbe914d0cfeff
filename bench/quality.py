"""Unlearning quality on a simulated target: every method, one table, one card.

Builds (or reuses) the ``sim`` target from the public train + validation sets with the general-text
warm-up, then unlearns the public *train* forget set (keeping the train retain set) with:

- ``rmu-published``: RMU with the paper's hyperparameters (layers 5,6,7, c 6.5, alpha 1200, lr 5e-5,
  150 steps of 4 rows);
- ``rmu-calibrated``: repedit's RMU, stopped by calibration against reference text of the forget
  set's kind that the target never saw: the first 75 public MIA nonmembers (the held-out general
  passages are not that: on ``sim`` their NLL is 11.4 against 8.7 for the nonmember biographies).
  Its settings are searched by ``repedit.sweep`` (``calibrated_grid``, or ``--grid``; one worker per
  GPU, or ``--workers``) with the proxy score, which reads the forget and retain sets and the same
  reference texts (never MMLU); the best run's checkpoint is the one evaluated;
- ``graddiff``, ``npo``, ``sugd``: the baselines with their published defaults.

Each checkpoint is scored with ``repedit.evaluate`` on the train split, the public MIA files and
full MMLU. Usage:

    python bench/quality.py --work /tmp/quality --out quality.json [--target DIR] [--methods a,b]
    python bench/quality.py --work W --target W/sim --methods rmu-calibrated --skip-target \
        --grid bench/grids/sim-explore.json --workers 8 --out part.json  # several processes share a GPU
    python bench/quality.py --merge part1.json part2.json --out quality.json  # one table of split runs
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch

from repedit.assets import shared_path
from repedit.baselines import GradDiffConfig, NPOConfig, SUGDConfig
from repedit.data import load_documents
from repedit.evaluate import evaluate
from repedit.proxy import ProxyConfig
from repedit.rmu import RMUConfig
from repedit.sweep import Candidate, expand_grid, sweep
from repedit.target import build_target, format_card
from repedit.unlearn import config_from_dict, unlearn

PUBLISHED = RMUConfig(layers=(5, 6, 7), coeff=6.5, alpha=1200.0, lr=5e-5, steps=150, batch_size=4,
                      max_length=512)
METHODS = {"rmu-published": lambda: PUBLISHED, "rmu-calibrated": None, "graddiff": GradDiffConfig,
           "npo": NPOConfig, "sugd": SUGDConfig}  # rmu-calibrated: searched, see calibrated_grid
EVAL_BATCH = 256  # prompts per generation batch: a 36 MB model is launch-bound, not memory-bound

REFERENCE_DOCS = 75
# The public MIA nonmembers are Simple-Wikipedia biographies: the kind of Task3's documents, the public
# attack's members. Against them only Task3 can overshoot; stories and PII biographies need only stop
# looking more familiar (calibrate_tasks, and the proxy's mia_tasks).
REFERENCE_TASKS = ["Task3"]


def calibrated_grid() -> dict:
    """The default calibrated-RMU search space handed to the sweep (base config + configurations to
    try); ``--grid FILE`` replaces it. Calibration's reference file is added by ``calibrated_search``.

    Forget and retain rows are documents of the same kinds, so the edited MLPs must learn which
    documents are to be forgotten. Measured on one H200 (BENCHMARKS.md, grids in bench/grids/):
    layers 5-7 with every MLP weight forget most and keep most; the bounded ascent brings forget
    documents to the unseen level, and the retain answers' NLL, weighted like it, keeps the retain set
    (retain terms 0.94-1.00, task aggregate 0.94-0.97, against 0.59 without it). Near the target the
    documents swing across it from one check to the next (mean forget NLL 11 <-> 13 at lr 1.5e-3: the
    documents trained on last are the ones above it), so a check every 10 steps (0.1 s each), or 5,
    gives the stop more chances to land. Ascent 0.03 left Task2's regurgitation at 0.52 (task aggregate
    0.88); with 0.1, lr 1e-3 kept the retain set best (0.949) but, stopped on every task against
    Wikipedia text, took Task3 past it (official AUC 0.37): hence ``REFERENCE_TASKS``.
    """
    return {
        "base": {"method": "rmu", "layers": [5, 6, 7], "adaptive": 3.0, "alpha": 100.0, "lr": 1e-3,
                 "steps": 100000, "batch_size": 64, "max_length": 512,
                 "params": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"], "forget_tokens": "document",
                 "calibrate_by": "document", "calibrate_every": 10, "calibrate_tolerance": 0.05,
                 "forget_ascent": 0.1, "retain_nll": 1.0, "time_budget": 180.0},
        "configs": [{}, {"lr": 1.5e-3}, {"calibrate_every": 5}],
    }


def calibrated_search(grid_file: Path | None, reference: Path) -> list[Candidate]:
    """The candidates of ``grid_file`` (default: ``calibrated_grid``), each calibrated on ``reference``."""
    if grid_file is None:
        grid = calibrated_grid()
    else:
        try:
            grid = json.loads(grid_file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"--grid: {grid_file}: {error}") from None
        if not isinstance(grid, dict):
            raise ValueError(f"--grid: {grid_file}: expected a JSON object with base and grid or configs")
    grid = {**grid, "base": {**grid.get("base", {}), "calibrate": str(reference), "calibrate_tasks": REFERENCE_TASKS}}
    return expand_grid(grid, str(grid_file or "calibrated_grid"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="scratch: target, reference texts, checkpoints, evaluations")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    parser.add_argument("--target", type=Path, help="an already built sim target (default: build one)")
    parser.add_argument("--mmlu-limit", type=int, default=None, help="MMLU subsample (default: all 14,042)")
    parser.add_argument("--no-sweep", action="store_true", help="take the grid's first configuration")
    parser.add_argument("--grid", type=Path, help="rmu-calibrated: search space (JSON, as for repedit sweep; "
                        "calibrate is set here; default: calibrated_grid)")
    parser.add_argument("--workers", type=int, help="rmu-calibrated: sweep workers (default: one per GPU; "
                        "a small target leaves a GPU idle between kernel launches, so several can share one)")
    parser.add_argument("--evaluate-runs", action="store_true", help="rmu-calibrated: run the official "
                        "evaluation of every searched configuration, not only of the best (the ranking then "
                        "uses it: report the proxy's choice beside it)")
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    parser.add_argument("--skip-target", action="store_true", help="do not evaluate the untouched target")
    parser.add_argument("--merge", type=Path, nargs="+", help="only join these results files (runs split "
                        "across cards or calls) into --out and print the table")
    args = parser.parse_args()
    if args.merge:
        reports = [json.loads(path.read_text()) for path in args.merge]
        merged = {**reports[0], "parts": [str(p) for p in args.merge],
                  "methods": {k: v for r in reports for k, v in r["methods"].items()},
                  "sweep": next((r["sweep"] for r in reports if r.get("sweep")), None)}
        args.out.write_text(json.dumps(merged, indent=2, default=str))
        print_table(merged["methods"])
        return
    if args.work is None:
        parser.error("--work is required unless --merge is given")
    chosen = args.methods.split(",") if args.methods else list(METHODS)
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; known: {list(METHODS)}")
    if args.grid is not None:  # a bad grid fails here, not after the target is built
        try:
            calibrated_search(args.grid, Path("reference.jsonl"))
        except ValueError as error:
            parser.error(str(error))
    torch.backends.cuda.matmul.allow_tf32 = True
    semeval = shared_path("semeval25")
    train, mia, mmlu = semeval / "train", semeval / "mia_data", shared_path("mmlu")
    target = args.target
    if target is None:
        target = args.work / "sim"
        card = build_target("sim", [train, semeval / "validation"], target,
                            general=shared_path("general", "passages.jsonl"), mia=mia)
        print(format_card(card), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "target": str(target), "mmlu_limit": args.mmlu_limit, "sweep": None, "methods": {}}
    rows = report["methods"]

    def score(model_dir: Path, name: str) -> dict:
        return evaluate(model_dir, train, args.work / f"eval-{name}", mia_dir=mia, mmlu_dir=mmlu,
                        mmlu_limit=args.mmlu_limit, batch_size=EVAL_BATCH)

    def record(name: str, model_dir: Path, row: dict) -> None:
        rows[name] = {**row, "scores": row["scores"] if "scores" in row else score(model_dir, name)}
        args.out.write_text(json.dumps(report, indent=2, default=str))  # after each method: partial runs count
        print_table(rows)

    if not args.skip_target:
        record("target (not unlearned)", target, {"unlearn_s": 0.0})
    for name in chosen:
        try:
            if name == "rmu-calibrated" and not args.no_sweep:
                evaluation = {"data": str(train), "mia": str(mia), "mmlu": str(mmlu), "mmlu_limit": args.mmlu_limit}
                model_dir, row = calibrated_by_sweep(target, train, mia, args.work, report, args.grid, args.workers,
                                                     evaluation if args.evaluate_runs else None)
            else:
                model_dir, row = run_one(target, train, args.work / name,
                                         method_config(name, args.work, mia, args.grid))
            print(f"{name}: {row['steps']} steps ({row['stopped']}) in {row['unlearn_s']:.1f} s", flush=True)
            record(name, model_dir, row)
        except Exception:  # one method's failure, its evaluation's too, must not cost the others' rows
            traceback.print_exc()


def reference_file(work: Path, mia: Path) -> tuple[Path, list[str]]:
    """The calibration and proxy reference: the first public MIA nonmembers, written as a .jsonl of
    texts (calibration reads the file), and the texts themselves (the proxy takes them)."""
    reference = work / "reference.jsonl"
    texts = load_documents(mia / "nonmember.jsonl")[:REFERENCE_DOCS]
    reference.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return reference, texts


def method_config(name: str, work: Path, mia: Path, grid_file: Path | None = None):
    if name == "rmu-calibrated":  # --no-sweep: the grid's first configuration
        return config_from_dict(dict(calibrated_search(grid_file, reference_file(work, mia)[0])[0].config))
    return METHODS[name]()


def run_one(target: Path, train: Path, out: Path, config) -> tuple[Path, dict]:
    start = time.perf_counter()
    result = unlearn(target, train, train, out, config, progress=False)
    return result.output_dir, {"unlearn_s": time.perf_counter() - start, "steps": len(result.losses),
                               "stopped": result.stopped, "config": json.loads(config.to_json()),
                               "calibration": result.calibration}


def calibrated_by_sweep(target: Path, train: Path, mia: Path, work: Path, report: dict, grid_file: Path | None,
                        workers: int | None, evaluation: dict | None) -> tuple[Path, dict]:
    """Search the calibrated grid with the proxy (and ``evaluation``, when given, of every run) and keep
    the best run's checkpoint; an evaluated best run brings its scores along."""
    reference, texts = reference_file(work, mia)
    start = time.perf_counter()
    found = sweep(target, train, train, calibrated_search(grid_file, reference), work / "sweep",
                  ProxyConfig(mia_tasks=tuple(REFERENCE_TASKS)), reference=texts, workers=workers, keep="best",
                  evaluate=evaluation)
    report["sweep"] = {"seconds": time.perf_counter() - start, "results": found.results}
    if found.best is None:
        raise RuntimeError("every calibrated configuration failed")
    best = found.best
    row = {"unlearn_s": best["train_seconds"], "steps": best["steps"], "stopped": best["stopped"],
           "config": best["config"], "proxy": best["proxy"], "calibration": best["calibration"]}
    if best.get("evaluation"):
        row["scores"] = best["evaluation"]
    return Path(best["dir"]), row


def print_table(rows: dict) -> None:
    """method, the 12 terms, task aggregate, MIA, MMLU, final score, unlearning wall time."""
    terms = [f"{split[0]}-{task}-{kind}" for split in ("forget", "retain") for task in ("T1", "T2", "T3")
             for kind in ("rg", "kn")]
    print("\n" + f"{'method':24}" + "".join(f"{t:>10}" for t in terms)
          + f"{'task agg':>9}{'MIA AUC':>8}{'MIA':>7}{'MMLU':>7}{'final':>7}{'time s':>8}")
    for name, row in rows.items():
        s = row["scores"]
        values = "".join(f"{v:10.3f}" for v in s["aggregated-terms"])
        mmlu = s.get("mmlu_average")
        final = s.get("aggregate-score")
        print(f"{name:24}{values}{s['harmonic-mean-task-aggregate']:9.3f}{s['mia_loss_acc']:8.3f}"
              f"{s['mia_final_score']:7.3f}{(mmlu if mmlu is not None else float('nan')):7.3f}"
              f"{(final if final is not None else float('nan')):7.3f}{row['unlearn_s']:8.1f}")


if __name__ == "__main__":
    main()
