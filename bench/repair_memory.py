"""The repair's cost (``--repair-rounds``, ``repedit.repair.distil_above``) on the OLMo-1B and OLMo-7B shapes: its
peak memory and seconds a step, by how many layers above L it trains (``--repair-layers``).

Random weights of the released configuration (``build_target(shape, [], dir, random_init=True)``), edited at the
``standins`` preset's layers (moved down where a shape lacks them), the "edited" checkpoint the input itself; texts of
random words, ``--max-length`` tokens each, so every step reads full batches. Each count runs in a fresh process, so
its peak is its own (the CUDA allocator's over the whole repair: the model's load, the frozen weights, the trained
MLPs in float32 with AdamW's moments, the two passes). The seconds a step: a repair of ``--steps`` less one of 2 steps
run before it (the load and the first steps cancel; a first repair warms files, imports and kernels), over the steps
between; 200 steps, the preset's, projected.

    PYTHONPATH=$PWD python bench/repair_memory.py --work /tmp/repair --out repair.json [--shapes olmo-7b] \
        [--counts 2,4,all] [--micro-batch 4]
Smoke (CPU, seconds): python bench/repair_memory.py --work /tmp/r --out r.json --shapes sim --counts 1,all \
    --steps 6 --batch-size 2 --max-length 32 --device cpu
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from recipe_speed import recipe, recipe_values

from repedit.checkpoint import read_config
from repedit.repair import distil_above, repaired_layers
from repedit.repair_config import Repair
from repedit.runtime import card_name
from repedit.target import build_target

PROJECTED_STEPS = 200  # Repair().steps
WARM_STEPS = 2  # a repair of these first, whose time (the load and the first steps) the measured one less it cancels


def measure(model_dir: Path, count: int | None, steps: int, batch_size: int, max_length: int, device: str,
            micro_batch: int | None = None) -> dict:
    """One repair of ``steps`` steps training ``count`` layers above L (None: every one): peak GiB and s a step."""
    layers = read_config(model_dir).num_hidden_layers
    repair = Repair(rounds=1, steps=steps, layers=count, batch_size=batch_size, max_length=max_length,
                    micro_batch=micro_batch)
    config = replace(recipe(layers, recipe_values("standins")), repair=repair)
    generator = random.Random(0)
    texts = [" ".join(f"w{generator.randrange(10_000)}" for _ in range(max_length)) for _ in range(4 * batch_size)]
    dtype, cuda = (torch.bfloat16, True) if device.startswith("cuda") else (torch.float32, False)

    def repair_s(steps: int) -> tuple[float, list[float]]:
        start = time.perf_counter()
        kls = distil_above(model_dir, model_dir, texts, texts, replace(config, repair=replace(repair, steps=steps)),
                           torch.device(device), dtype, progress=False).kls
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, kls

    repair_s(WARM_STEPS)  # files, imports, kernels and the allocator warm (the first load pays for them)
    short_s, _ = repair_s(WARM_STEPS)  # its load and first steps, which the measured repair's less it cancels
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds, kls = repair_s(steps)
    step_s = (seconds - short_s) / (steps - WARM_STEPS)
    return {"layers_above": count if count is not None else "all",
            "trained": list(repaired_layers(config.layer, count, layers)), "edited": list(config.layers),
            "micro_batch": micro_batch, "steps": steps, "kl_first": kls[0], "seconds": seconds, "step_s": step_s,
            "load_s": short_s - WARM_STEPS * step_s,
            f"projected_{PROJECTED_STEPS}_s": short_s + (PROJECTED_STEPS - WARM_STEPS) * step_s,
            "device": card_name(torch.device(device)),
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch directory (the shapes' checkpoints)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    parser.add_argument("--shapes", default="olmo-1b,olmo-7b", help="target presets (sim: a CPU smoke run)")
    parser.add_argument("--counts", default="2,4,all", help="layers above L trained, comma-separated (all: every one)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=Repair.batch_size)
    parser.add_argument("--max-length", type=int, default=Repair.max_length)
    parser.add_argument("--micro-batch", type=int, help="texts a pass (--repair-micro-batch; default: the whole batch)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # SHAPE:COUNT, in the child process
    args = parser.parse_args()
    try:
        counts = [None if c == "all" else int(c) for c in args.counts.split(",")]
    except ValueError:
        parser.error(f"--counts {args.counts!r}: give whole numbers or 'all', e.g. 2,4,all")
    if any(c is not None and c < 1 for c in counts):
        parser.error(f"--counts {args.counts!r}: a repair trains one layer above L at the least")
    if args.one:
        shape, count = args.one.split(":")
        print(json.dumps(measure(args.work / shape, None if count == "all" else int(count), args.steps,
                                 args.batch_size, args.max_length, args.device, args.micro_batch)))
        return
    if args.steps <= WARM_STEPS:
        parser.error(f"--steps {args.steps}: more than {WARM_STEPS}, the warm-up repair's")
    results: dict = {"device": None, "torch": torch.__version__,
                     "batch_size": args.batch_size, "max_length": args.max_length, "micro_batch": args.micro_batch,
                     "rows": []}
    print(f"torch {results['torch']}, {args.batch_size} texts x {args.max_length} tokens a step"
          f"{f', in passes of {args.micro_batch}' if args.micro_batch else ''}; each row as it is measured", flush=True)
    print(f"{'shape':9} {'above L':>8} {'trained':>10} {'peak GiB':>9} {'s/step':>7} {'load s':>7} "
          f"{f'{PROJECTED_STEPS} steps s':>11}", flush=True)
    for shape in args.shapes.split(","):
        if not (args.work / shape / "config.json").is_file():  # at 7B minutes: say so, so a run cut short says where
            print(f"{shape}: random weights written to {args.work / shape} ...", end=" ", flush=True)
            start = time.perf_counter()
            # on the CPU: this process holds nothing on the device the children measure
            build_target(shape, [], args.work / shape, random_init=True, device="cpu", progress=False)
            print(f"{time.perf_counter() - start:.0f} s", flush=True)
        for count in counts:
            named = "all" if count is None else count
            child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", f"{shape}:{named}"],
                                   capture_output=True, text=True)
            row = ({"layers_above": named, "error": child.stderr.strip().splitlines()[-1:]}
                   if child.returncode else json.loads(child.stdout.strip().splitlines()[-1]))
            results["rows"].append({"shape": shape, **row})
            results["device"] = results["device"] or row.get("device")
            args.out.write_text(json.dumps(results, indent=2))  # a later row cut short loses only itself
            print(row_line(results["rows"][-1]), flush=True)
    print(f"device: {results['device']}")


def row_line(r: dict) -> str:
    """One measured count's line of the table (or why it failed)."""
    if "error" in r:
        return f"{r['shape']:9} {r['layers_above']!s:>8} failed: {' '.join(r['error'])}"
    trained = f"{r['trained'][0]}-{r['trained'][-1]}"
    peak = f"{r['peak_gib']:9.1f}" if r["peak_gib"] is not None else f"{'-':>9}"
    return (f"{r['shape']:9} {r['layers_above']!s:>8} {trained:>10} {peak} {r['step_s']:7.3f} {r['load_s']:7.1f} "
            f"{r[f'projected_{PROJECTED_STEPS}_s']:11.1f}")


if __name__ == "__main__":
    main()
