"""The exported submission on one device and on several: seconds, steps, and whether N ranks edit what one does.

The challenge calls ``unlearn`` once, in one process, on a machine of 8 GPUs; the submission runs RMU
with one rank per GPU (``repedit.launch``). Per process count this script writes the submission with
``repedit.export`` (the ``ascent`` preset's whole-model recipe without the stop rule, so that
every count runs the same ``--steps``), runs it in a fresh interpreter with ``REPEDIT_PROCESSES=N`` on
the same model and sets, and compares each edited tensor's update with the one-process update: cosine,
relative difference (|update_N - update_1| / |update_1|) and largest weight difference.

GPU (2 cards): python bench/submission_gpus.py --model /tmp/7b --forget F --retain R --processes 1,2 \\
    --steps 20 --batch-size 16 --out submission.json     (F, R: directories of forget / retain .parquet)
CPU smoke (gloo ranks): python bench/submission_gpus.py --model TINY --forget F --retain R --processes 1,2 \\
    --layers 3,4,5 --steps 4 --batch-size 4 --max-length 64 --out s.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from repedit.checkpoint import load_tensors, weight_map
from repedit.export import generate_submission
from repedit.methods import preset
from repedit.runtime import card_name, pick_device

RUNNER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("submission", sys.argv[1])
submission = importlib.util.module_from_spec(spec)
spec.loader.exec_module(submission)
print("RESULT " + json.dumps(submission.unlearn(*sys.argv[2:]), default=str))
"""


def recipe(layers: list[int] | None, steps: int, batch_size: int, max_length: int, chunk: int) -> dict:
    """The ascent preset's edit with its whole-model term (retain NLL) and no stop rule: fixed steps."""
    config = {**preset("ascent"), "steps": steps, "batch_size": batch_size, "max_length": max_length,
              "calibration": None, "time_budget": None}
    config["loss"] = {**config["loss"], "forget_ascent": 0.0, "chunk": chunk}  # the ascent needs the stop rule
    return {**config, "layers": layers} if layers else config


def run(file: Path, model: Path, out: Path, forget: Path, retain: Path, processes: int) -> dict:
    """One submission run in a fresh interpreter: what ``unlearn`` returned and the wall seconds."""
    env = {**os.environ, "REPEDIT_PROCESSES": str(processes)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUNNER, str(file), str(model), str(out), str(forget), str(retain)],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    results = [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results or not results[-1]:  # unlearn prints an error and returns []
        raise SystemExit(f"{processes} process(es): exit {done.returncode}\n{done.stderr[-3000:]}")
    return {"seconds": seconds, "summary": results[-1][0]}


def agreement(model: Path, one: Path, other: Path) -> dict[str, dict[str, float]]:
    """Per tensor the run changed: its update's cosine with the one-process update, the relative
    difference of the updates and the largest weight difference."""
    rows = {}
    for name, shard in weight_map(model).items():
        before, a, b = (load_tensors(d / shard, {name})[name].double() for d in (model, one, other))
        update_a, update_b = (a - before).flatten(), (b - before).flatten()
        if not update_a.any():
            continue
        rows[name] = {"cosine": torch.nn.functional.cosine_similarity(update_a, update_b, dim=0).item(),
                      "relative": ((update_b - update_a).norm() / update_a.norm()).item(),
                      "max_abs": (b - a).abs().max().item()}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the target checkpoint")
    parser.add_argument("--forget", type=Path, required=True, help="forget directory, as the challenge passes it")
    parser.add_argument("--retain", type=Path, required=True, help="retain directory")
    parser.add_argument("--processes", default="1,2", help="process counts; the first is the reference")
    parser.add_argument("--layers", help="edited layers (default: the preset's 5,6,7)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16, help="forget rows a step, as many retain rows")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=0, help="the low-memory mode (--chunk of repedit unlearn)")
    parser.add_argument("--work", type=Path, default=Path("submission-gpus"), help="submission file and outputs")
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    layers = [int(i) for i in args.layers.split(",")] if args.layers else None
    args.work.mkdir(parents=True, exist_ok=True)
    file = args.work / "submission.py"
    config = recipe(layers, args.steps, args.batch_size, args.max_length, args.chunk)
    file.write_text(generate_submission(config=config))
    runs = {n: run(file, args.model, args.work / f"out-{n}", args.forget, args.retain, n) for n in counts}
    reference = args.work / f"out-{counts[0]}"
    rows = []
    for n, measured in runs.items():
        summary = measured["summary"]
        compared = agreement(args.model, reference, args.work / f"out-{n}") if n != counts[0] else {}
        rows.append({"processes": n, "seconds": measured["seconds"], "steps": summary.get("steps"),
                     "ranks": summary.get("processes"), "tensors": compared})
    device = card_name(pick_device()[0])
    args.out.write_text(json.dumps({"device": device, "steps": args.steps, "batch_size": args.batch_size,
                                    "max_length": args.max_length, "rows": rows}, indent=2))
    print(f"{device}; {args.steps} steps of {args.batch_size} + {args.batch_size} rows x {args.max_length} tokens")
    print(f"{'processes':>10}{'ranks':>6}{'steps':>6}{'seconds':>9}{'speed-up':>9}{'min cosine':>11}"
          f"{'max rel diff':>13}{'max |dw|':>10}")
    for row in rows:
        t = row["tensors"].values()
        cosine = f"{min(v['cosine'] for v in t):.5f}" if t else "-"
        relative = f"{max(v['relative'] for v in t):.4f}" if t else "-"
        largest = f"{max(v['max_abs'] for v in t):.2e}" if t else "-"
        print(f"{row['processes']:>10}{row['ranks'] or '-':>6}{row['steps'] or '-':>6}{row['seconds']:>9.1f}"
              f"{rows[0]['seconds'] / row['seconds']:>8.2f}x{cosine:>11}{relative:>13}{largest:>10}")


if __name__ == "__main__":
    main()
