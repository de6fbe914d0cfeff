"""What every unlearning method's loop shares: device and precision, the time budget, the step log,
the atomic shard-reusing save and the run's result.

Nothing here knows a method: ``repedit.rmu_loop`` and ``repedit.baselines`` both build on it, and
``repedit.evaluate`` and the probes read ``pick_device`` from here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from repedit.checkpoint import checkpoint_name, save_edited, weight_map
from repedit.data import Example, Row, load_rows, training_examples
from repedit.guard import check_made_a_step, json_safe
from repedit.options import check_device

try:  # tqdm ships with transformers; the exported submission may run without it
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

logger = logging.getLogger(__name__)


@dataclass
class UnlearnResult:
    output_dir: Path
    method: str
    losses: list[dict] = field(default_factory=list)  # one dict per step
    # seconds: load, prepare, train, save, total (a repaired run's: each part summed over its rounds, and repair)
    timings: dict[str, float] = field(default_factory=dict)
    stopped: str = "steps"  # steps | calibrated | patience | time budget
    coeff: float | None = None  # RMU: the steering coefficient c used
    control_vector: torch.Tensor | None = None  # RMU: u, unit norm
    calibration: list[dict] = field(default_factory=list)  # per check: step, forget NLL, the level (target_nll), AUCs
    standins: dict | None = None  # --calibrate-standins: the swap fraction, the task it was matched on, counts
    kept_shares: dict | None = None  # --destination-keep-margin: each task's share, how far past its level each went
    anchor_texts: list[str] | None = None  # the texts the anchor held, written beside the weights for audit
    # --repair-rounds: each round's edit (steps, stop, seconds) and repair (seconds, median step, first and last KL)
    repairs: list[dict] | None = None
    peak_gib: float | None = None  # CUDA: the most memory the run held at once (GiB); whether it fits a card
    # RMU: the forget batches a run's steps cycle through. A check follows one of them (its record's "batch"), so the
    # phase of each check in that cycle can be read; on the sim the checks' swing turned out to follow the anchor's
    # 17-batch cycle, not this one (BENCHMARKS.md, fiftieth call)
    batches: int | None = None

    def summary(self) -> dict:
        """A JSON-ready record of the run (written into the output checkpoint as unlearn.json)."""
        return {
            "method": self.method, "steps": len(self.losses), "stopped": self.stopped, "coeff": self.coeff,
            "timings": self.timings, "calibration": self.calibration, "standins": self.standins,
            "kept_shares": self.kept_shares,
            "final_losses": json_safe(self.losses[-1]) if self.losses else None, "peak_gib": self.peak_gib,
            "batches": self.batches,
        }


def rmu_run_config(model_dir: str | Path) -> dict | None:
    """The config an RMU run recorded in its checkpoint (``unlearn.json``); None for any other checkpoint, which
    edited no one set of layers and drew no control vector."""
    record_file = Path(model_dir) / "unlearn.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    config = record.get("config", {})
    return config if config.get("method", record.get("method")) == "rmu" else None


def pick_device(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA in bfloat16 when present, else CPU in float32; either can be forced."""
    check_device(device)
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        return chosen, torch.bfloat16 if chosen.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(f"--dtype: {dtype!r} is not one of {sorted(dtypes)}")
    return chosen, dtypes[dtype]


def card_name(device: torch.device) -> str:
    """The accelerator's model ("NVIDIA H100 80GB HBM3"), or "cpu": a seeded run repeats exactly on one card and not
    across two (c20's train proxy 0.821 on an H200, 0.887 on an H100; BENCHMARKS.md, seventieth call)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


@contextmanager
def deterministic_algorithms(on: bool) -> Iterator[None]:
    """Torch's deterministic kernels for one run, the mode as it was after. On one H200 the same seed run twice
    stopped 40 steps apart without them and gave equal weights with them, in the same time (BENCHMARKS.md,
    twenty-ninth call). Strict: a kernel with no deterministic form ends the run with an error naming the option.
    cuBLAS reads its workspace setting when CUDA starts, so a process that used CUDA before sets it itself."""
    if not on:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    except RuntimeError as error:
        if "deterministic" not in str(error):
            raise
        raise RuntimeError(f"--deterministic: {str(error).splitlines()[0]} (run without --deterministic)") from error
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


class Budget:
    """Wall-clock budget of a run, counted from its start; None means unlimited. ``leave_model``: a run
    the budget stops before its first step still writes the (unchanged) model, as the submission must."""

    def __init__(self, seconds: float | None, leave_model: bool = False):
        self.seconds, self.start, self.leave_model = seconds, time.monotonic(), leave_model

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def allows(self, more_seconds: float) -> bool:
        return self.seconds is None or self.elapsed() + more_seconds < self.seconds

    def allows_step(self, slowest_step: float, save_seconds: float) -> bool:
        """Whether a step still fits, keeping room for the step, the final save and 5% slack."""
        return self.allows(1.5 * slowest_step + 2 * save_seconds + 0.05 * (self.seconds or 0) + 0.5)

    def wants_early_save(self, saves: int) -> bool:
        """Half the budget spent and nothing saved yet: write a valid checkpoint now."""
        return self.seconds is not None and saves == 0 and self.elapsed() > self.seconds / 2


class StepLog:
    """Where each step's record goes: ``result.losses``, a JSON line in ``log`` and a progress bar
    showing the values named in ``shown`` (tqdm when present, else a line every 10%). ``total`` None:
    the run stops when it is done (calibration), so the bar counts steps with no estimate against a cap.
    ``append``: the lines go on after those ``log`` holds (a repaired run's later edits), not over them."""

    def __init__(self, result: UnlearnResult, total: int | None, description: str, shown: tuple[str, ...],
                 log: str | Path | None = None, enabled: bool = True, append: bool = False):
        self.result, self.total, self.description, self.shown, self.count = result, total, description, shown, 0
        self.bar = tqdm(total=total, desc=description) if (enabled and tqdm is not None) else None
        self.enabled = enabled
        self.file = open(log, "a" if append else "w") if log else None  # noqa: SIM115 - closed in __exit__

    def __enter__(self) -> StepLog:
        return self

    def add(self, record: dict) -> None:
        self.result.losses.append(record)
        if self.file:
            self.file.write(json.dumps(json_safe(record)) + "\n")
            self.file.flush()
        self.count += 1
        text = {k: f"{v:.4g}" for k, v in record.items() if k in self.shown}
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=False)
            self.bar.update(1)
        elif self.enabled and (self.count % max(1, (self.total or 250) // 10) == 0 or self.count == self.total):
            logger.info("%s %d%s %s", self.description, self.count, f"/{self.total}" if self.total else "", text)

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file:
            self.file.close()


class Checkpointer:
    """Saves edited weights as a full checkpoint at ``out``, atomically, and times each save. ``writes``
    False (a data-parallel run's other processes): saving does nothing, the main process writes."""

    def __init__(self, model_dir: Path, out: Path, model: torch.nn.Module, names: list[str], dtype: torch.dtype,
                 writes: bool = True):
        self.model_dir, self.out, self.dtype, self.writes = Path(model_dir), Path(out), dtype, writes
        checkpoint_names = weight_map(self.model_dir)
        parameters = dict(model.named_parameters())
        self.tensors = {checkpoint_name(self.model_dir, n, checkpoint_names): parameters[n] for n in names}
        self.last_seconds = 0.0
        self.saves = 0

    def save(self, result: UnlearnResult, config) -> None:
        if not self.writes:
            return
        start = time.monotonic()
        edits = {name: p.detach().to(self.dtype) for name, p in self.tensors.items()}
        log = "".join(json.dumps(json_safe(step)) + "\n" for step in result.losses)
        record = {"config": asdict(config), **result.summary()}
        extra = {"unlearn.json": json.dumps(record, indent=2), "unlearn_log.jsonl": log}
        if result.anchor_texts is not None:
            extra["anchor_texts.jsonl"] = "".join(json.dumps({"text": t}) + "\n" for t in result.anchor_texts)
        save_edited(self.model_dir, self.out, edits, extra_files=extra)
        self.last_seconds = time.monotonic() - start
        self.saves += 1


def read_sets(forget: str | Path, retain: str | Path) -> tuple[list[Row], list[Row]]:
    return load_rows(forget, "forget"), load_rows(retain, "retain")


def finish(result: UnlearnResult, checkpointer: Checkpointer, config, budget: Budget) -> UnlearnResult:
    """Record the training time, write the final checkpoint and time it (a run with no step only if
    the budget asks to leave a model)."""
    result.timings["train"] = budget.elapsed() - result.timings["load"] - result.timings["prepare"]
    check_made_a_step(len(result.losses), result.timings, budget.seconds, budget.leave_model)
    if torch.cuda.is_initialized():  # the current device's peak since ``run_method`` reset it
        result.peak_gib = torch.cuda.max_memory_allocated() / 2**30
    started = time.monotonic()
    checkpointer.save(result, config)
    result.timings["save"] = time.monotonic() - started
    result.timings["total"] = budget.elapsed()
    return result


def shuffled(rows: list[Row], seed: int) -> list[Row]:
    """The rows in a seeded random order."""
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in order]


def shuffled_examples(rows: list[Row], tokenizer, max_length: int, seed: int) -> list[Example]:
    """Every row as prompt + answer + EOS (answer tokens labelled), in the order of ``shuffled``."""
    return training_examples(shuffled(rows, seed), tokenizer, max_length)
