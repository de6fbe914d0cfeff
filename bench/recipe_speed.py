"""Where a step of a preset (or a grid's method) goes, on the OLMo-1B and OLMo-7B shapes.

The ``ascent`` preset (the README's recipe before #23) reads the whole model (retain NLL, forget ascent and
calibration run the layers above L and the LM head), unlike plain RMU (``bench/speed.py``). Per shape (random weights of
the released configuration, ``build_target(shape, [], dir, random_init=True)``) and one batch of
``--rows`` forget + ``--rows`` retain rows of ``--tokens`` tokens, edited where the preset edits:

- edited ms: a step of the misdirection and retain terms only (layers first..L, AdamW; and the anchor,
  where the method has one);
- above-L ms: the same step continued through the layers above L and the final norm (a stand-in
  loss), minus the first;
- head ms: the recipe's whole step (``rmu_losses``: LM head and cross-entropy on labelled
  positions, forget ascent) minus the two before;
- kernel ms (``--profile``): how long the whole step keeps the device busy in kernels, by torch's profiler: near
  the step's ms the arithmetic bounds it, far under it the host issuing the kernels (a floor per pass that fewer
  rows do not lower; BENCHMARKS.md "Seventy-second call");
- check ms: one calibration check, the forget NLL of ``--check-docs`` documents (forward only);
- peak GiB (CUDA) over the whole step; a part that runs out of memory is reported as "oom";
- projected s: 1,500 steps of 64 rows a set (the step scaled by 64 / rows, as accumulated batches)
  plus a check every ``every`` steps of the preset.

``--world-size 1,2,...`` adds one end-to-end row per process count: the preset calibrated
against random unseen texts, ``--steps`` steps through ``torchrun --nproc_per_node N -m repedit.cli
unlearn``, median step seconds from its log and the run's peak from its ``unlearn.json`` (CUDA): what the rows
above leave out, the anchor's stored texts (``--invented-anchors``' documents and their frozen activations). A step
that meets its batch for the first time takes about twice as long as it does later (new shapes), so give ``--steps``
past the run's batches (twice them): the projection then reads the steps after the first pass, which is reported
beside it. The rows run the preset as it ships (its ``chunk`` and ``offload``) unless told otherwise. The whole run
(``run_s``) adds to the projected steps and checks what the row's wall held besides its steps and checks (the
process's start, the loads, preparation and saves) and each edit's first pass over its batches.

``--config bench/grids/rmu-withheld.json`` times a grid's base instead (its destination and anchor batch
included, its texts random), ``--projected-steps`` the steps its projection counts. ``--micro-batch m`` runs the
end-to-end rows' steps in passes of m rows a set (``--rows 64 --micro-batch 8``: the preset's batch in a pass's
memory), ``--world-only`` skips the component rows, whose one pass of ``--rows`` may not fit. ``--data SPLIT
--unseen FILE`` gives the end-to-end rows real sets (the challenge's train split, the public nonmembers as Task3's
unseen texts) in place of random ones, so the run's peak holds the caches of a real split. ``--variants`` runs
several end-to-end settings in turn (``--chunk``, ``--micro-batch``, ``--offload`` each), writing the results after
each, so a command cut short by a device's limit keeps the rows it finished. ``--candidate c46`` times a grid's
candidate; a repaired one (``--repair-rounds``) runs in one process, not through ``torchrun`` (the repair refuses
it), each edit ``--steps`` steps and each repair ``--repair-steps``, and its whole run is projected with its repairs
at the recipe's steps (their median step from ``unlearn.json``'s ``repairs``) and the peak over every edit and repair:
the 7B question "does a repaired run end inside the hour on a 40 GB card" in one command.

Usage (GPU): python bench/recipe_speed.py --work /tmp/recipe --out recipe.json [--rows 8] [--world-size 1,2]
    [--chunk 4096: the low-memory mode, layers above L recomputed and the LM head chunked]
    [--config bench/grids/rmu-withheld.json --projected-steps 700] [--deterministic: torch's deterministic kernels]
Smoke (CPU, seconds): python bench/recipe_speed.py --work /tmp/r --out r.json --shapes sim --rows 2 \
    --tokens 64 --check-docs 4 --device cpu --world-size 1,2 --steps 3
Repaired (CPU smoke): python bench/recipe_speed.py --work /tmp/r --out r.json --shapes sim --rows 2 --tokens 64 \
    --device cpu --world-size 1 --world-only --steps 4 --config bench/grids/rmu-standins.json --candidate c46 \
    --repair-steps 3 --projected-steps 2400
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from repedit.calibration import unseen_texts
from repedit.checkpoint import load_causal_lm, read_config
from repedit.config_fields import nest
from repedit.data import TASKS, write_jsonl
from repedit.document_scores import document_nlls
from repedit.grid import expand_grid
from repedit.methods import config_from_dict, preset
from repedit.rmu import (
    RMUConfig,
    cache_prefix,
    control_vector,
    final_hidden,
    layer_output,
    masked_mse,
    rmu_losses,
    select_parameters,
)
from repedit.runtime import card_name, deterministic_algorithms
from repedit.target import build_target

STEPS_64, ROWS_64 = 1500, 64  # the yardstick: 1,500 steps of 64 rows a set


def recipe_values(name: str, candidate: str | None = None) -> dict:
    """A preset's JSON form, or a grid's base (``bench/grids/*.json``) or its ``candidate`` (``c46``, as the tune
    names them), nested."""
    if not name.endswith(".json"):
        return nest(preset(name))
    grid = json.loads(Path(name).read_text())
    if candidate is None:
        return nest(grid["base"])
    named = {c.name: c.config for c in expand_grid({"base": grid["base"], "configs": grid["configs"]}, name)}
    if candidate not in named:
        raise ValueError(f"--candidate {candidate}: {name} has c0 to c{len(named) - 1}")
    return nest(named[candidate])


def recipe(layers: int, values: dict) -> RMUConfig:
    """``recipe_values``' config without the files it names (unseen and anchor texts), its layers moved down
    where a small shape lacks them (layers above L kept)."""
    kept = {k: v for k, v in values.items() if k != "calibration"}
    kept["loss"] = {k: v for k, v in values.get("loss", {}).items() if k != "anchor_texts"}
    config = config_from_dict(kept)
    assert isinstance(config, RMUConfig)
    if max(config.layers) >= layers - 1:
        config = replace(config, layers=tuple(range(max(0, layers - 4), layers - 1)))
    return config


def random_batch(rows: int, tokens: int, vocab: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``rows`` forget rows (every token labelled, as ``forget_tokens="document"``) then ``rows``
    retain rows (the second half labelled, an answer)."""
    ids = torch.randint(3, vocab, (2 * rows, tokens), generator=generator)
    labels = ids.clone()
    labels[rows:, : tokens // 2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


class Timer:
    def __init__(self, device: torch.device, repeats: int):
        self.device, self.repeats = device, repeats

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def ms(self, fn) -> float | str:
        """Median milliseconds of ``fn`` after one warm-up call; "oom" if it runs out of memory."""
        try:
            fn()
            times = []
            for _ in range(self.repeats):
                self.sync()
                start = time.perf_counter()
                fn()
                self.sync()
                times.append(1000 * (time.perf_counter() - start))
            return statistics.median(times)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return "oom"


def kernel_ms(step, device: torch.device, table: Path, repeats: int = 3) -> float:
    """The milliseconds a step keeps the device busy in kernels (mean of ``repeats`` under torch's profiler, its
    operators' table written to ``table``). Beside the step's wall time (timed unprofiled) it says what bounds the
    step: near it, the arithmetic; far under it, the host issuing the kernels, a floor that fewer rows do not lower.
    On CPU: the operators' own time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    step()  # warm-up: the allocator and kernels meet the shapes
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as run:
        for _ in range(repeats):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    events = run.key_averages()
    table.write_text(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=30))
    busy = sum(e.self_device_time_total if cuda else e.self_cpu_time_total for e in events)
    return busy / repeats / 1000  # microseconds -> ms


def components(model_dir: Path, rows: int, tokens: int, check_docs: int, device: torch.device,
               dtype: torch.dtype, repeats: int, chunk: int | None = None, name: str = "ascent",
               projected_steps: int = STEPS_64, profile: Path | None = None, candidate: str | None = None) -> dict:
    n_layers = read_config(model_dir).num_hidden_layers
    values = recipe_values(name, candidate)
    base = recipe(n_layers, values)
    config = base if chunk is None else replace(base, loss=replace(base.loss, chunk=chunk))
    first, layer = min(config.layers), config.layer
    plain = replace(config, loss=replace(config.loss, retain_nll=0.0, forget_ascent=0.0))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = load_causal_lm(model_dir, dtype, device)
    model.requires_grad_(False)
    trainable = select_parameters(model, config.layers, config.params)
    for param in trainable.values():  # as the loop: float32 master weights
        param.data = param.data.float()
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.lr, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    with autocast:
        batch = cache_prefix(model, {**random_batch(rows, tokens, vocab, generator),
                                     "tasks": torch.zeros(rows, dtype=torch.long)}, first, rows)
        with torch.no_grad():
            frozen = layer_output(model, batch, first, layer)[rows:]
        # a grid's method may misdirect to per-task means and anchor a batch of unseen texts (layers <= L)
        extras: dict = {}
        if config.loss.destination == "unseen":
            extras["destination"] = torch.randn(len(TASKS), model.config.hidden_size, generator=generator).to(device)
        if config.loss.anchor > 0:
            texts = cache_prefix(model, random_batch(rows, tokens, vocab, generator), first)
            with torch.no_grad():
                extras["anchor"] = [(texts, layer_output(model, texts, first, layer))]
        docs = [cache_prefix(model, random_batch(max(1, rows), tokens, vocab, generator), first)
                for _ in range(-(-check_docs // (2 * max(1, rows))))]
    steering = (30.0 * control_vector(model.config.hidden_size, 0)).to(device)

    def step(loss_of) -> None:
        with autocast:
            loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def above() -> torch.Tensor:
        """The edited layers' two terms on one pass (as ``edited``), then the layers above L and the final
        norm under a stand-in loss: ``whole`` minus this is the LM head's part."""
        hidden = layer_output(model, batch, first, layer)
        mask = batch.mask.to(hidden.dtype)
        terms = masked_mse(hidden[:rows], steering, mask[:rows]) + masked_mse(hidden[rows:], frozen, mask[rows:])
        if "anchor" in extras:
            [(texts, held)] = extras["anchor"]
            terms = terms + masked_mse(layer_output(model, texts, first, layer), held, texts.mask)
        return terms + final_hidden(model, hidden, batch, layer, config.loss.chunk > 0).float().pow(2).mean()

    def whole_step() -> None:
        step(lambda: rmu_losses(model, config, batch, frozen, steering, level=5.0, **extras)["loss"])

    timer = Timer(device, repeats)
    edited = timer.ms(lambda: step(lambda: rmu_losses(model, plain, batch, frozen, steering, **extras)["loss"]))
    through = timer.ms(lambda: step(above))
    whole = timer.ms(whole_step)

    def check() -> None:
        with autocast:
            document_nlls(model, docs, first, layer)

    checked = timer.ms(check)
    numbers = [edited, through, whole]
    result: dict = {"config": name, "layers": list(config.layers), "chunk": config.loss.chunk, "rows": rows,
                    "tokens": tokens, "check_docs": check_docs,
                    "step_ms": whole, "edited_ms": edited, "check_ms": checked,
                    "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    if all(isinstance(x, float) for x in numbers):
        result["above_ms"], result["head_ms"] = through - edited, whole - through  # type: ignore[operator]
    if profile is not None:
        result["kernel_ms"] = kernel_ms(whole_step, device, profile)
    if isinstance(whole, float) and isinstance(checked, float):
        every = values["calibration"]["every"]
        result["projected_steps"] = projected_steps
        result["projected_s"] = (projected_steps * whole * ROWS_64 / rows + projected_steps // every * checked) / 1000
    return result  # the model and its caches go with this frame


def write_sets(directory: Path, rows: int, words: int) -> None:
    """Forget and retain sets of rows of ``words`` random words, the three kinds in turn (a PII biography opening
    with a two-word name, as ``loss.recombined_pii_anchors`` needs), and as many unseen texts with their kinds, for
    the end-to-end rows."""
    generator = torch.Generator().manual_seed(1)
    directory.mkdir(parents=True, exist_ok=True)
    for split in ("forget", "retain", "unseen"):
        with open(directory / f"{split}.jsonl", "w") as handle:
            for i in range(rows):
                task = TASKS[i % len(TASKS)]
                text = " ".join(f"w{int(x)}" for x in torch.randint(10_000, (words,), generator=generator))
                if task == "Task2":
                    text = f"Ada{chr(97 + i % 26)} Moss{chr(97 + i // 26 % 26)} was born {text}"
                row = ({"text": text, "task": task} if split == "unseen" else
                       {"id": f"{split}{i}sc1", "input": text, "output": "end", "task": task})
                handle.write(json.dumps(row) + "\n")


def edits_s(parts: dict, steps: int, every: int, rows_scale: float = 1.0) -> float:
    """The edits' steps and checks from an end-to-end row's measured ``parts``: ``steps`` steps in all (every
    round's), each ``rows_scale`` times the row's (accumulated batches), a check every ``every``."""
    return steps * parts["step_s"] * rows_scale + steps // every * parts["check_s"]


def whole_run_s(parts: dict, steps: int, every: int, repair_steps: int, rows_scale: float = 1.0) -> float:
    """The whole run: ``edits_s``, each round's repair of ``repair_steps`` steps, and the row's own fixed costs
    (process start, loads, preparation, saves) and each edit's first meeting of its batches as measured."""
    return (parts["fixed_s"] + parts["first_meetings_s"] + edits_s(parts, steps, every, rows_scale)
            + parts["rounds"] * repair_steps * parts["repair_step_s"])


def run_parts(log: list[dict], record: dict, wall_s: float, repair_steps: int) -> dict:
    """What a run's time is made of, read from its ``unlearn_log.jsonl`` steps and ``unlearn.json``: the median step
    after each edit's first pass over its batches (a step meeting a batch for the first time is slower: new shapes
    for the allocator and the kernels, 1.74 s against 1.04 s at 7B, BENCHMARKS.md "Fifty-sixth call"), a check (the
    training less its steps, one check an edit), a repair's median step, and the rest of the wall (``fixed_s``)."""
    by_round: dict[int, list[float]] = {}
    for step in log:
        by_round.setdefault(step.get("round", 0), []).append(step["seconds"])
    batches, repairs = record["batches"], record.get("repairs") or []
    later = [x for seconds in by_round.values() for x in seconds[batches:]]
    first_pass = [x for seconds in by_round.values() for x in seconds[1:batches]] or [s["seconds"] for s in log]
    step_s, first_pass_s = statistics.median(later or first_pass), statistics.median(first_pass)
    trained = record["timings"]["train"]  # a repaired run's: every edit's summed
    stepped = sum(step["seconds"] for step in log)
    repair_step_s = statistics.mean(r["repair_step_seconds"] for r in repairs) if repairs else 0.0
    return {"rounds": len(repairs), "step_s": step_s, "first_pass_step_s": first_pass_s,
            "check_s": (trained - stepped) / len(by_round), "repair_step_s": repair_step_s,
            "first_meetings_s": len(by_round) * batches * max(0.0, first_pass_s - step_s),
            "fixed_s": wall_s - trained - len(repairs) * repair_steps * repair_step_s}


def end_to_end(model_dir: Path, data: Path, out: Path, processes: int, rows: int, tokens: int, steps: int,
               device: str, chunk: int | None = None, name: str = "ascent", projected_steps: int = STEPS_64,
               micro_batch: int | None = None, offload: bool | None = None, candidate: str | None = None,
               repair_steps: int | None = None) -> dict:
    """The preset (or grid candidate) for ``steps`` steps an edit through ``torchrun`` (a repaired recipe,
    ``--repair-rounds``, in one plain process: its edits, repairs of ``repair_steps`` steps and saves), calibrated
    against random unseen texts, with one check an edit, after its last step: on random weights every document sits
    at the unseen level from the start, so an earlier check would end the run there. Its parts (``run_parts``) and
    the whole run projected at ``projected_steps`` edit steps of 64 rows a set, a check every ``every`` steps of the
    recipe and its own repair steps (``whole_run_s``)."""
    unseen, values = str(data / "unseen.jsonl"), recipe_values(name, candidate)
    calibration = {**values["calibration"], "unseen": unseen, "tolerance": 0.0, "every": steps}
    config = {**asdict(recipe(read_config(model_dir).num_hidden_layers, values)), "steps": steps, "batch_size": rows,
              "micro_batch": micro_batch, "max_length": tokens, "time_budget": None, "calibration": calibration}
    config["offload"] = config["offload"] if offload is None else offload  # None: the preset's own
    anchor_texts = unseen if values.get("loss", {}).get("anchor_texts") else None
    config["loss"] = {**config["loss"], "chunk": config["loss"]["chunk"] if chunk is None else chunk,
                      "anchor_texts": anchor_texts}
    repaired, own_repair_steps = config["repair"]["rounds"] > 0, config["repair"]["steps"]
    config["repair"]["steps"] = repair_steps or own_repair_steps
    if repaired and processes > 1:
        raise ValueError(f"--world-size {processes}: a repaired recipe (--repair-rounds) runs in one process")
    config_file = out.with_suffix(".json")
    config_file.write_text(json.dumps(config))
    launch = [] if repaired else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [sys.executable, *launch, "-m", "repedit.cli", "unlearn", "--model", str(model_dir), "--forget",
               str(data), "--retain", str(data), "--out", str(out), "--config", str(config_file)]
    # no --log: torchrun reads it as its own --log-dir
    if device == "cpu":
        command += ["--device", "cpu"]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    wall_s = time.perf_counter() - started
    log = [json.loads(line) for line in (out / "unlearn_log.jsonl").read_text().splitlines()]
    record = json.loads((out / "unlearn.json").read_text())  # rank 0's peak (every edit's and repair's), anchors in
    shutil.rmtree(out, ignore_errors=True)
    parts = run_parts(log, record, wall_s, config["repair"]["steps"])
    every = values["calibration"]["every"]
    return {"processes": processes, "rows_per_set": rows, "chunk": config["loss"]["chunk"],
            "micro_batch": record["config"]["micro_batch"], "offload": config["offload"], "steps": len(log),
            "repair_steps": config["repair"]["steps"] if repaired else 0, "wall_s": wall_s,
            "batches": record["batches"], "step_ms": 1000 * parts["step_s"],
            "first_pass_step_ms": 1000 * parts["first_pass_step_s"], "check_s": parts["check_s"], "parts": parts,
            "peak_gib": record["peak_gib"], "timings": record["timings"],
            # the steps and checks; run_s: the whole run, the row's fixed costs and repairs at the recipe's steps too
            "projected_s": edits_s(parts, projected_steps, every, ROWS_64 / rows),
            "run_s": whole_run_s(parts, projected_steps, every, own_repair_steps, ROWS_64 / rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch directory (checkpoints are written here)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    parser.add_argument("--shapes", default="olmo-1b,olmo-7b", help="target presets (sim: a CPU smoke run)")
    parser.add_argument("--rows", type=int, default=8, help="forget rows (and as many retain rows) a step")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--check-docs", type=int, default=256, help="documents a calibration check scores")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--world-size", default="", help="process counts for end-to-end rows, e.g. 1,2,4")
    parser.add_argument("--steps", type=int, default=20, help="steps of each end-to-end row")
    parser.add_argument("--chunk", type=int, help="the low-memory mode (RMUConfig.loss.chunk), e.g. 4096, 0 off; "
                        "default: the preset's")
    parser.add_argument("--config", default="ascent", help="a preset, or a grid whose base is timed "
                        "(e.g. bench/grids/rmu-withheld.json; its named texts replaced by random ones)")
    parser.add_argument("--candidate", help="with a grid's --config: time its candidate of this name (c46, as the "
                        "tune names them) instead of its base; a repaired one (--repair-rounds) end to end in one "
                        "process, its repairs included")
    parser.add_argument("--repair-steps", type=int, help="a repaired recipe's end-to-end rows: each repair this many "
                        "steps (default: the recipe's); the whole run is projected at the recipe's")
    parser.add_argument("--projected-steps", type=int, default=STEPS_64, help="steps of 64 rows a set the "
                        "projection counts (the ascent recipe needed 1,500 on the sim; rmu-withheld 80-690)")
    parser.add_argument("--micro-batch", type=int, help="the end-to-end rows' --micro-batch: each step's --rows "
                        "in passes of this many (e.g. --rows 64 --micro-batch 8, the preset's batch on a 40 GB card)")
    parser.add_argument("--offload", action=argparse.BooleanOptionalAction, help="the end-to-end rows' --offload: "
                        "their cached batches and anchor texts in host memory, each moved to the card for its step; "
                        "default: the preset's")
    parser.add_argument("--variants", help="end-to-end variants run in turn, ';'-separated, each of chunk=, "
                        "micro_batch= and offload= (e.g. 'chunk=4096,micro_batch=8;chunk=0,micro_batch=8,offload=1'); "
                        "default: the one --chunk, --micro-batch and --offload give. Results are written after each")
    parser.add_argument("--world-only", action="store_true", help="only the end-to-end rows: the components "
                        "take --rows in one pass, which may not fit where the run in passes does")
    parser.add_argument("--deterministic", action="store_true", help="time the components under torch's "
                        "deterministic kernels, as `repedit unlearn --deterministic` runs")
    parser.add_argument("--data", type=Path, help="the end-to-end rows' forget.jsonl and retain.jsonl (e.g. the "
                        "challenge's train split) instead of random sets: the memory its cached batches take")
    parser.add_argument("--unseen", type=Path, help="with --data: the unseen texts (.jsonl: text or document), "
                        "calibrated on as Task3's, e.g. the public nonmembers (Wikipedia biographies)")
    parser.add_argument("--profile", type=Path, help="the components' step under torch's profiler too: its kernels' "
                        "busy time (kernel ms) beside its wall time, and its operators' table in PROFILE-SHAPE.txt")
    args = parser.parse_args()
    if (args.data is None) != (args.unseen is None):
        parser.error("--data and --unseen go together")
    if args.candidate and not args.config.endswith(".json"):
        parser.error(f"--candidate {args.candidate}: names a grid's candidate; give the grid as --config "
                     "(e.g. bench/grids/rmu-standins.json)")
    variants = [{"chunk": args.chunk, "micro_batch": args.micro_batch, "offload": args.offload}]
    if args.variants:
        try:
            variants = [{**{"chunk": None, "micro_batch": None, "offload": None},
                         **{key: int(value) for key, value in (pair.split("=") for pair in variant.split(","))}}
                        for variant in args.variants.split(";")]
        except ValueError:
            parser.error(f"--variants {args.variants!r}: give key=integer pairs, e.g. chunk=0,micro_batch=8,offload=1")
        unknown = {key for variant in variants for key in variant} - {"chunk", "micro_batch", "offload"}
        if unknown:
            parser.error(f"--variants: unknown {', '.join(sorted(unknown))} (chunk, micro_batch, offload)")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = True
    results: dict = {"device": card_name(device),
                     "torch": torch.__version__, "shapes": {}}
    for shape in args.shapes.split(","):
        model_dir = args.work / shape
        if not (model_dir / "config.json").is_file():
            build_target(shape, [], model_dir, random_init=True, progress=False)
        row: dict = {"deterministic": args.deterministic}
        results["shapes"][shape] = row  # filled in place, written after each end-to-end row
        if not args.world_only:
            with deterministic_algorithms(args.deterministic):
                row |= components(model_dir, args.rows, args.tokens, args.check_docs, device, dtype, args.repeats,
                                  args.chunk, args.config, args.projected_steps,
                                  args.profile and args.profile.with_name(f"{args.profile.stem}-{shape}.txt"),
                                  args.candidate)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.world_size:
            data = args.work / "data"
            if args.data:  # the given sets, and the unseen texts as Task3's (the public nonmembers' kind)
                data.mkdir(parents=True, exist_ok=True)
                for split in ("forget", "retain"):
                    shutil.copyfile(args.data / f"{split}.jsonl", data / f"{split}.jsonl")
                texts = unseen_texts(str(args.unseen))
                write_jsonl(data / "unseen.jsonl", [{"text": text, "task": "Task3"} for text in texts])
            else:  # a quarter as many words as tokens: the retain answers fit in max_length (a word is 2-3 tokens);
                # 8 a kind at least: stand-ins are matched on 4 retain documents of a kind
                rows = max(4 * args.rows * max(int(n) for n in args.world_size.split(",")), 8 * len(TASKS))
                write_sets(data, rows, args.tokens // 4)
            row["world"] = []
            for variant in variants:
                for n in args.world_size.split(","):
                    row["world"].append(end_to_end(
                        model_dir, data, args.work / f"{shape}-ddp{n}", int(n), args.rows, args.tokens, args.steps,
                        args.device, variant["chunk"], args.config, args.projected_steps, variant["micro_batch"],
                        None if variant["offload"] is None else bool(variant["offload"]), args.candidate,
                        args.repair_steps))
                    args.out.write_text(json.dumps(results, indent=2))  # a later row cut short loses only itself
        print(f"{shape}: {row}", flush=True)
    args.out.write_text(json.dumps(results, indent=2))

    def cell(value, width: int, digits: int = 1) -> str:
        return f"{value:{width}.{digits}f}" if isinstance(value, float) else f"{value!s:>{width}}"

    print(f"\n{results['device']}, torch {results['torch']}, {args.config}, {args.rows}+{args.rows} rows "
          f"x {args.tokens} tokens a step")
    print(f"{'shape':9} {'step ms':>8} {'edited':>8} {'above L':>8} {'head':>8} {'kernels':>8} {'check':>8} "
          f"{'peak GiB':>9} {f'{args.projected_steps}x64 s':>10}")
    for shape, r in results["shapes"].items():
        columns = [cell(r.get(k, "-"), 8) for k in ("step_ms", "edited_ms", "above_ms", "head_ms", "kernel_ms",
                                                     "check_ms")]
        print(f"{shape:9} {' '.join(columns)} {cell(r.get('peak_gib', '-'), 9, 2)} "
              f"{cell(r.get('projected_s', '-'), 10, 0)}")
        for w in r.get("world", []):
            peak = "-" if w["peak_gib"] is None else f"{w['peak_gib']:.2f}"
            passes = (f" in passes of {w['micro_batch']}" if w.get("micro_batch") else "") + (
                f", chunk {w['chunk']}" if w.get("chunk") else "") + (", offloaded" if w.get("offload") else "")
            rounds = w["parts"]["rounds"]
            repairs = (f", {rounds} repairs of {w['repair_steps']} steps at {w['parts']['repair_step_s']:.2f} s a step"
                       if rounds else "")
            print(f"{shape:9}   {w['processes']} process(es), {w['rows_per_set']} rows a set{passes}, end to end: "
                  f"step {w['step_ms']:.1f} ms ({w['first_pass_step_ms']:.1f} over the first pass), "
                  f"a check {w['check_s']:.1f} s{repairs}, peak {peak} GiB, wall {w['wall_s']:.0f} s; "
                  f"{args.projected_steps}x64 projected {w['projected_s']:.0f} s, the whole run {w['run_s']:.0f} s "
                  f"(its loads, preparation, saves{' and repairs' if rounds else ''} too)")


if __name__ == "__main__":
    main()
