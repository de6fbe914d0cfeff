"""RMU speed on the released OLMo shapes: repedit against a loop written like the WMDP code.

For each shape (random bf16 weights of the released OLMo-1B / OLMo-7B configurations), both sides
start from the same saved checkpoint and do 150 RMU steps of 4x512 forget + 4x512 retain tokens at
layers 5,6,7, then write a full output checkpoint:

- repedit: ``repedit.unlearn`` (loads layers 0..7 only, caches the frozen prefix, runs the edited
  layers, rewrites only the shards holding edited tensors);
- reference: two full model copies, three full forward passes a step with a hook reading layer 7,
  nothing frozen, ``save_pretrained`` at the end, as in the WMDP code.

Plain RMU only; the recommended preset's whole-model terms are timed by ``bench/recipe_speed.py``.

Usage (one GPU): python bench/speed.py --work /tmp/speed --out results.json [--shapes olmo-1b,olmo-7b]
Prints a table last.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch

from repedit.checkpoint import load_causal_lm
from repedit.layers import capture_outputs
from repedit.rmu import Loss, RMUConfig, control_vector, masked_mse
from repedit.runtime import card_name
from repedit.target import build_target
from repedit.unlearn import unlearn

STEPS, BATCH, TOKENS, LAYERS = 150, 4, 512, (5, 6, 7)
ROWS = 32  # distinct rows per set (8 batches, cycled): the cached prefix stays small


def write_sets(directory: Path, seed: int = 0) -> None:
    """Forget and retain sets whose every row is longer than 512 tokens (random words)."""
    rng = random.Random(seed)
    words = [f"w{rng.randrange(10_000)}" for _ in range(5000)]
    directory.mkdir(parents=True, exist_ok=True)
    for split in ("forget", "retain"):
        with open(directory / f"{split}.jsonl", "w") as handle:
            for i in range(ROWS):
                text = " ".join(rng.choice(words) for _ in range(700))
                row = {"id": f"{split}{i}sc1", "input": text, "output": "end", "task": "Task1"}
                handle.write(json.dumps(row) + "\n")


def reference_run(model_dir: Path, data: Path, out: Path, config: RMUConfig) -> dict:
    """The WMDP-style loop: updated + frozen full models, three full forwards per step."""
    from repedit.checkpoint import load_checkpoint_tokenizer
    from repedit.data import batches, load_rows, training_examples

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    tokenizer = load_checkpoint_tokenizer(model_dir)
    updated = load_causal_lm(model_dir, torch.bfloat16, "cuda")
    frozen = load_causal_lm(model_dir, torch.bfloat16, "cuda")
    loaded = time.perf_counter()
    forget = batches(training_examples(load_rows(data, "forget"), tokenizer, TOKENS), BATCH, tokenizer.pad_token_id)
    retain = batches(training_examples(load_rows(data, "retain"), tokenizer, TOKENS), BATCH, tokenizer.pad_token_id)
    params = [updated.model.layers[i].mlp.down_proj.weight for i in config.layers]
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    steering = (config.coeff * control_vector(updated.config.hidden_size, 0)).cuda()
    step_times = []
    for step in range(STEPS):
        f = {k: v.cuda() for k, v in forget[step % len(forget)].items()}
        r = {k: v.cuda() for k, v in retain[step % len(retain)].items()}
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with capture_outputs(updated, [config.target], detach=False) as h:
            updated(input_ids=f["input_ids"], attention_mask=f["attention_mask"])
            forget_hidden = h[config.target]
            updated(input_ids=r["input_ids"], attention_mask=r["attention_mask"])
            retain_hidden = h[config.target]
        with torch.no_grad(), capture_outputs(frozen, [config.target]) as hf:
            frozen(input_ids=r["input_ids"], attention_mask=r["attention_mask"])
        loss = masked_mse(forget_hidden, steering, f["attention_mask"]) + config.loss.alpha * masked_mse(
            retain_hidden, hf[config.target], r["attention_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
        step_times.append(time.perf_counter() - t0)
    trained = time.perf_counter()
    updated.save_pretrained(out)
    tokenizer.save_pretrained(out)
    end = time.perf_counter()
    return {"total_s": end - start, "load_s": loaded - start, "train_s": trained - loaded, "save_s": end - trained,
            "step_ms": 1000 * sorted(step_times[10:])[len(step_times[10:]) // 2],
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def repedit_run(model_dir: Path, data: Path, out: Path, config: RMUConfig) -> dict:
    """``repedit.unlearn``, with the memory where the prefix below the edited layers is released (the
    peak of loading and caching, what stays resident) beside the whole run's peak."""
    import repedit.rmu_loop

    phases: dict[str, float] = {}
    release = repedit.rmu_loop.release_prefix

    def measured_release(model, first: int) -> None:
        phases["prepare_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        release(model, first)
        phases["resident_gib"] = torch.cuda.memory_allocated() / 2**30

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    repedit.rmu_loop.release_prefix = measured_release
    try:
        result = unlearn(model_dir, data, data, out, config, progress=False)
    finally:
        repedit.rmu_loop.release_prefix = release
    end = time.perf_counter()
    seconds = [r["seconds"] for r in result.losses][10:]
    return {"total_s": end - start, "load_s": result.timings["load"], "prepare_s": result.timings["prepare"],
            "train_s": result.timings["train"], "save_s": result.timings["save"],
            "step_ms": 1000 * sorted(seconds)[len(seconds) // 2],
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, **phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch directory (checkpoints are written here)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    parser.add_argument("--shapes", default="olmo-1b,olmo-7b")
    parser.add_argument("--sides", default="repedit,reference", help="comma-separated: repedit, reference")
    args = parser.parse_args()
    sides = args.sides.split(",")
    if not sides or set(sides) - {"repedit", "reference"}:
        parser.error(f"--sides: {args.sides!r}; give repedit, reference or both")
    torch.backends.cuda.matmul.allow_tf32 = True
    data = args.work / "data"
    write_sets(data)
    config = RMUConfig(layers=LAYERS, steps=STEPS, batch_size=BATCH, max_length=TOKENS, coeff=6.5,
                       loss=Loss(alpha=1200.0))
    results = {"device": card_name(torch.device("cuda")), "torch": torch.__version__, "steps": STEPS,
               "batch": f"{BATCH}x{TOKENS} forget + {BATCH}x{TOKENS} retain", "layers": LAYERS, "shapes": {}}
    for shape in args.shapes.split(","):
        model_dir = args.work / shape
        t0 = time.perf_counter()
        build_target(shape, [], model_dir, random_init=True)
        print(f"{shape}: random checkpoint written in {time.perf_counter() - t0:.1f} s", flush=True)
        runs = {"repedit": repedit_run, "reference": reference_run}
        measured = {}
        for side in sides:
            measured[side] = runs[side](model_dir, data, args.work / f"{shape}-{side}", config)
            print(f"{shape} {side}: {measured[side]}", flush=True)
            torch.cuda.empty_cache()
        if len(measured) == 2:
            measured["speedup_end_to_end"] = measured["reference"]["total_s"] / measured["repedit"]["total_s"]
        results["shapes"][shape] = measured
        for path in (model_dir, args.work / f"{shape}-repedit", args.work / f"{shape}-reference"):
            shutil.rmtree(path, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\n{results['device']}, torch {results['torch']}, {STEPS} steps of {results['batch']}, layers {LAYERS}")
    print(f"{'shape':9} {'side':9} {'total s':>8} {'load s':>7} {'train s':>8} {'save s':>7} {'step ms':>8} "
          f"{'peak GiB':>9}")
    for shape, measured in results["shapes"].items():
        for side in sides:
            r = measured[side]
            print(f"{shape:9} {side:9} {r['total_s']:8.1f} {r['load_s']:7.1f} {r['train_s']:8.1f} {r['save_s']:7.1f} "
                  f"{r['step_ms']:8.1f} {r['peak_gib']:9.2f}")
        if "speedup_end_to_end" in measured:
            print(f"{shape:9} speed-up end to end: {measured['speedup_end_to_end']:.1f}x")


if __name__ == "__main__":
    main()
