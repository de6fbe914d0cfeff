"""Sweep throughput on one GPU against two: the same grid with 1 worker (cuda:0) and 2 workers
(cuda:0, cuda:1), end to end (worker start, every run, its proxy scoring, results on disk).

By default the model is the released OLMo-1B shape with random bf16 weights and the data a
synthetic LUME-shaped set; ``--model`` and ``--data`` run a real checkpoint and set instead. The
grid is 8 RMU configurations (layers 5,6,7; 2 learning rates x 2 coefficients x 2 step counts)
unless ``--grid`` names a grid file; the default proxy reads 8 rows per split, task and kind
(random weights never stop generating, so scoring would otherwise outweigh training).

Usage (two GPUs): python bench/sweep_gpus.py --work /tmp/sweep-bench --out sweep_gpus.json
Prints a table last.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from repedit.grid import expand_grid, read_grid
from repedit.proxy import ProxyConfig
from repedit.runtime import card_name
from repedit.sweep import sweep
from repedit.synth import synthesize
from repedit.target import build_target

GRID = {
    "base": {"method": "rmu", "layers": [5, 6, 7], "loss": {"alpha": 1200.0}, "batch_size": 4, "max_length": 512},
    "grid": {"lr": [5e-5, 1e-4], "adaptive": [2.0, 5.0], "steps": [40, 80]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch: model, data, sweep outputs")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    parser.add_argument("--model", type=Path, help="checkpoint (default: a random OLMo-1B, built in --work)")
    parser.add_argument("--data", type=Path, help="forget and retain sets directory (default: synthetic)")
    parser.add_argument("--grid", type=Path, help="grid JSON (default: 8 RMU configurations)")
    args = parser.parse_args()
    if torch.cuda.device_count() < 2:
        raise SystemExit(f"needs 2 GPUs, found {torch.cuda.device_count()}")
    data = args.data or synthesize(args.work / "data", seed=0, docs=12)
    model = args.model
    if model is None:
        model = args.work / "olmo-1b"
        started = time.perf_counter()
        build_target("olmo-1b", [], model, random_init=True)
        print(f"random OLMo-1B checkpoint written in {time.perf_counter() - started:.1f} s", flush=True)
    candidates, proxy = read_grid(args.grid) if args.grid else (expand_grid(GRID), ProxyConfig(max_rows=8))
    runs = {}
    for devices in (["cuda:0"], ["cuda:0", "cuda:1"]):
        out = args.work / f"sweep-{len(devices)}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        result = sweep(model, data, data, candidates, out, proxy, devices=devices, keep="none")
        seconds = time.perf_counter() - started
        runs[len(devices)] = {
            "devices": devices, "seconds": seconds, "configs": len(candidates),
            "ok": sum(r["status"] == "ok" for r in result.results if r["config"] is not None),
            "best": result.best and result.best["name"],
            "proxy": {r["name"]: r["proxy"]["final"] for r in result.results if r["status"] == "ok"},
            "run_seconds": {r["name"]: r.get("seconds") for r in result.results},
        }
        print(f"{len(devices)} worker(s): {seconds:.1f} s", flush=True)
    one, two = runs[1], runs[2]
    shared = set(one["proxy"]) & set(two["proxy"])
    results = {
        "devices": [card_name(torch.device("cuda", i)) for i in range(2)], "torch": torch.__version__,
        "model": str(model), "data": str(data), "grid": [c.label for c in candidates], "runs": runs,
        "speedup": one["seconds"] / two["seconds"],
        "max_proxy_difference": max((abs(one["proxy"][n] - two["proxy"][n]) for n in shared), default=None),
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{results['devices'][0]} x2, torch {results['torch']}, "
          f"{len(candidates)} configurations and the input model")
    print(f"{'workers':>7} {'configs ok':>10} {'seconds':>8} {'s/config':>8} {'speed-up':>8}  best")
    for count, run in runs.items():
        print(f"{count:>7} {run['ok']:>4} / {run['configs']:<3} {run['seconds']:8.1f} "
              f"{run['seconds'] / run['configs']:8.1f} {one['seconds'] / run['seconds']:8.2f}  {run['best']}")
    print(f"largest proxy difference between the two sweeps: {results['max_proxy_difference']}")


if __name__ == "__main__":
    main()
