"""Calibrated RMU's step rate by batch size: how many steps, and rows, a run's time budget buys.

Runs ``--steps`` steps of one RMU configuration at each batch size on one target, one run at a time,
and reports the median step, the time of a calibration check (every forget document and the
reference scored) and the steps and forget rows a second overall. On a card, a small model's step
is mostly kernel launches, so more rows a step may come almost free; this measures it. Usage:

    python bench/step_rate.py --target sim/ --data semeval25/train --config rmu.json \\
        --reference reference.jsonl --batch-sizes 16,32,64 --steps 150 --work W --out step_rate.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

from repedit.rmu import RMUConfig
from repedit.runtime import card_name, pick_device
from repedit.unlearn import unlearn


def measure(target: Path, data: Path, out: Path, config: RMUConfig) -> dict:
    result = unlearn(target, data, data, out, config, progress=False)
    steps = [record["seconds"] for record in result.losses]
    checks = len(result.calibration)
    train = result.timings["train"]
    return {"batch_size": config.batch_size, "steps": len(steps), "stopped": result.stopped,
            "step_ms": 1000 * statistics.median(steps), "checks": checks,
            "check_s": (train - sum(steps)) / checks if checks else None, "train_s": train,
            "steps_per_s": len(steps) / train, "forget_rows_per_s": config.batch_size * len(steps) / train,
            "prepare_s": result.timings["prepare"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, required=True, help="checkpoint to unlearn")
    parser.add_argument("--data", type=Path, required=True, help="set directory (forget + retain)")
    parser.add_argument("--config", type=Path, required=True, help="RMU configuration (JSON)")
    parser.add_argument("--reference", type=Path, help="unseen texts to calibrate against (sets calibration.unseen)")
    parser.add_argument("--batch-sizes", default="16,32,64", help="comma-separated forget (and retain) rows a step")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--work", type=Path, required=True, help="scratch: output checkpoints")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    args = parser.parse_args()
    try:
        values = json.loads(args.config.read_text())
        if args.reference is not None:
            values = {**values, "calibration.unseen": str(args.reference)}
        base = RMUConfig.from_dict(values)
        sizes = [int(size) for size in args.batch_sizes.split(",")]
    except (OSError, ValueError) as error:
        parser.error(f"{error}")
    device = card_name(pick_device()[0])
    runs = []
    for size in sizes:
        config = replace(base, batch_size=size, steps=args.steps, time_budget=None)
        runs.append(measure(args.target, args.data, args.work / f"batch{size}", config))
        print(json.dumps(runs[-1]), flush=True)
    args.out.write_text(json.dumps({"device": device, "config": json.loads(base.to_json()), "runs": runs}, indent=2))
    print(f"\n{device}, {args.steps} steps, check every {base.calibration.every if base.calibration else '-'}")
    print(f"{'batch':>5} {'step ms':>8} {'check s':>8} {'steps/s':>8} {'forget rows/s':>14} {'stopped':>10}")
    for run in runs:
        check = "" if run["check_s"] is None else f"{run['check_s']:.2f}"
        print(f"{run['batch_size']:>5} {run['step_ms']:>8.1f} {check:>8} {run['steps_per_s']:>8.2f} "
              f"{run['forget_rows_per_s']:>14.1f} {run['stopped']:>10}")


if __name__ == "__main__":
    main()
