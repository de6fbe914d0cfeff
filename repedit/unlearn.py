"""``unlearn``: run one method on a checkpoint and write the edited checkpoint.

What every method shares lives here: reading the sets, choosing device and precision, the time
budget, the step log and the atomic, shard-reusing save. The RMU loop is below, readable in one
sitting; the baselines' loops live in ``repedit.baselines``.

>>> result = unlearn("target/", "data/", "data/", "out/", RMUConfig(layers=(5, 6, 7), adaptive=5.0))
>>> result.output_dir, result.losses[-1]
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import torch

from repedit.checkpoint import (
    check_modules,
    check_output_path,
    checkpoint_name,
    load_causal_lm,
    load_checkpoint_tokenizer,
    load_prefix,
    read_config,
    save_edited,
    weight_map,
)
from repedit.data import TASKS, Example, Row, collate, load_rows, training_examples
from repedit.guard import check_made_a_step, check_options, check_step, json_safe
from repedit.options import check_device
from repedit.proxy import chance_distances, farthest_from_chance, task_aucs
from repedit.rmu import (
    PrefixBatch,
    RMUConfig,
    cache_prefix,
    control_vector,
    layer_output,
    mean_activation_norm,
    paired_batches,
    rmu_losses,
    row_nll,
    select_parameters,
)

try:  # tqdm ships with transformers; the exported submission may run without it
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


@dataclass
class UnlearnResult:
    output_dir: Path
    method: str
    losses: list[dict] = field(default_factory=list)  # one dict per step
    timings: dict[str, float] = field(default_factory=dict)  # seconds: load, prepare, train, save, total
    stopped: str = "steps"  # steps | calibrated | time budget
    coeff: float | None = None  # RMU: the steering coefficient c used
    control_vector: torch.Tensor | None = None  # RMU: u, unit norm
    calibration: list[dict] = field(default_factory=list)  # step, forget NLL, target NLL

    def summary(self) -> dict:
        """A JSON-ready record of the run (written into the output checkpoint as unlearn.json)."""
        return {
            "method": self.method, "steps": len(self.losses), "stopped": self.stopped, "coeff": self.coeff,
            "timings": self.timings, "calibration": self.calibration,
            "final_losses": json_safe(self.losses[-1]) if self.losses else None,
        }


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
    the run stops when it is done (calibration), so the bar counts steps with no estimate against a cap."""

    def __init__(self, result: UnlearnResult, total: int | None, description: str, shown: tuple[str, ...],
                 log: str | Path | None = None, enabled: bool = True):
        self.result, self.total, self.description, self.shown, self.count = result, total, description, shown, 0
        self.bar = tqdm(total=total, desc=description) if (enabled and tqdm is not None) else None
        self.enabled = enabled
        self.file = open(log, "w") if log else None  # noqa: SIM115 - closed in __exit__

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
            print(f"{self.description} {self.count}{f'/{self.total}' if self.total else ''} {text}", flush=True)

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file:
            self.file.close()


class Checkpointer:
    """Saves edited weights as a full checkpoint at ``out``, atomically, and times each save."""

    def __init__(self, model_dir: Path, out: Path, model: torch.nn.Module, names: list[str], dtype: torch.dtype):
        self.model_dir, self.out, self.dtype = Path(model_dir), Path(out), dtype
        checkpoint_names = weight_map(self.model_dir)
        parameters = dict(model.named_parameters())
        self.tensors = {checkpoint_name(self.model_dir, n, checkpoint_names): parameters[n] for n in names}
        self.last_seconds = 0.0
        self.saves = 0

    def save(self, result: UnlearnResult, config) -> None:
        start = time.monotonic()
        edits = {name: p.detach().to(self.dtype) for name, p in self.tensors.items()}
        log = "".join(json.dumps(json_safe(step)) + "\n" for step in result.losses)
        record = {"config": asdict(config), **result.summary()}
        save_edited(self.model_dir, self.out, edits,
                    extra_files={"unlearn.json": json.dumps(record, indent=2), "unlearn_log.jsonl": log})
        self.last_seconds = time.monotonic() - start
        self.saves += 1


def config_from_dict(values: dict):
    """A method's config from its JSON form; ``method`` picks the class (default ``rmu``)."""
    method = values.get("method", "rmu")
    if method == "rmu":
        return RMUConfig.from_dict(values)
    from repedit.baselines import baseline_config_from_dict

    return baseline_config_from_dict(values)


def read_sets(forget: str | Path, retain: str | Path) -> tuple[list[Row], list[Row]]:
    return load_rows(forget, "forget"), load_rows(retain, "retain")


def unlearn(model: str | Path, forget: str | Path, retain: str | Path, out: str | Path, config,
            device: str | None = None, dtype: str | None = None, log: str | Path | None = None,
            progress: bool = True) -> UnlearnResult:
    """Unlearn ``forget`` from the checkpoint ``model`` while keeping ``retain``; write to ``out``.

    ``config`` selects the method: ``RMUConfig`` for RMU, or a baseline's config
    (``repedit.baselines``). ``log`` streams one JSON line per step.
    """
    budget = Budget(getattr(config, "time_budget", None))
    model, out = Path(model), check_output_path(Path(out))
    if out.resolve() == model.resolve():
        raise ValueError(f"--out: {out} is the input checkpoint; write the edit elsewhere")
    model_config = read_config(model)
    check_options(config)
    config.validate(model_config.num_hidden_layers)
    n_layers = model_config.num_hidden_layers
    layers = config.layers if config.method == "rmu" else config.trained_layers(n_layers)
    check_modules(model, tuple(range(n_layers)) if layers is None else layers, config.params)  # before loading
    forget_rows, retain_rows = read_sets(forget, retain)
    device_, dtype_ = pick_device(device, dtype)
    return run_method(model, forget_rows, retain_rows, out, config, device_, dtype_, budget, log, progress)


def run_method(model_dir: Path, forget_rows: list[Row], retain_rows: list[Row], out: Path, config,
               device: torch.device, dtype: torch.dtype, budget: Budget, log: str | Path | None = None,
               progress: bool = True) -> UnlearnResult:
    """The method's loop for rows already read (``config.method`` picks it), writing ``out``."""
    if config.method == "rmu":
        return run_rmu(model_dir, forget_rows, retain_rows, out, config, device, dtype, budget, log, progress)
    from repedit.baselines import run_baseline

    return run_baseline(model_dir, forget_rows, retain_rows, out, config, device, dtype, budget, log, progress)


def finish(result: UnlearnResult, checkpointer: Checkpointer, config, budget: Budget) -> UnlearnResult:
    """Record the training time, write the final checkpoint and time it (a run with no step only if
    the budget asks to leave a model)."""
    result.timings["train"] = budget.elapsed() - result.timings["load"] - result.timings["prepare"]
    check_made_a_step(len(result.losses), result.timings, budget.seconds, budget.leave_model)
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


def reference_texts(path: str) -> list[str]:
    from repedit.data import DataError, load_documents

    try:
        return load_documents(path, "text")
    except DataError:
        return load_documents(path, "document")


def reference_tasks(path: str) -> list[str] | None:
    """Each reference text's ``task``, when every row has one (else None: one level for all tasks)."""
    from repedit.data import TASKS, DataError, load_documents

    try:
        tasks = load_documents(path, "task")
    except DataError:
        return None
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"--calibrate: {path}: unknown task(s) {unknown}; expected some of {', '.join(TASKS)}")
    return tasks


def _document_batches(texts: list[str], tokenizer, max_length: int, batch_size: int) -> list[dict]:
    """Whole documents with every token labelled, as the membership attack scores them."""
    examples = []
    for text in texts:
        ids = tokenizer(text)["input_ids"][:max_length]
        examples.append(Example(ids, list(ids)))
    return [collate(examples[i : i + batch_size], tokenizer.pad_token_id) for i in range(0, len(examples), batch_size)]


def calibration_target(config: RMUConfig, reference: torch.Tensor) -> float:
    """The NLL forget documents are brought to: the reference texts' median when documents are
    calibrated one by one (members at the median give a loss attack AUC 0.5), else their mean."""
    level = reference.median() if config.calibrate_by == "document" else reference.mean()
    return config.calibrate_margin * level.item()


@torch.no_grad()
def unseen_destination(model, cached: list[PrefixBatch], tasks: list[str] | None, first: int,
                       target: int) -> torch.Tensor:
    """(len(TASKS), D): the frozen model's mean h_target over the real tokens of each task's reference
    texts; a task without texts (every task, for a reference without tasks) gets the mean over all."""
    sums = torch.zeros(len(TASKS), model.config.hidden_size, device=cached[0].hidden.device)
    counts = torch.zeros(len(TASKS), device=sums.device)
    row = 0
    for batch in cached:
        hidden = layer_output(model, batch, first, target).float()  # (B, T, D)
        mask = batch.mask.to(hidden.dtype)
        mine = tasks[row : row + len(mask)] if tasks else [TASKS[0]] * len(mask)
        index = torch.tensor([TASKS.index(t) for t in mine], device=sums.device)
        sums.index_add_(0, index, torch.einsum("btd,bt->bd", hidden, mask).float())  # autocast: bf16
        counts.index_add_(0, index, mask.sum(dim=1))
        row += len(mask)
    means = sums / counts.clamp(min=1).unsqueeze(1)
    overall = sums.sum(dim=0) / counts.sum().clamp(min=1)
    return torch.where(counts.unsqueeze(1) > 0, means, overall)


def task_levels(config: RMUConfig, reference: torch.Tensor, text_tasks: list[str]) -> torch.Tensor:
    """(len(TASKS),): ``calibration_target`` of each task's reference texts (of all, for a task with none)."""
    return torch.tensor([calibration_target(config, reference[[i for i, t in enumerate(text_tasks) if t == task]]
                                            if task in text_tasks else reference) for task in TASKS])


def document_goals(target_nll: float | torch.Tensor, tasks: list[str]) -> torch.Tensor:
    """Each scored document's calibration target (float64, CPU): the one level, or its task's."""
    if isinstance(target_nll, torch.Tensor):
        return target_nll.double().cpu()[[TASKS.index(t) for t in tasks]]
    return torch.full((len(tasks),), target_nll, dtype=torch.float64)


def calibration_gap(check: dict, tasks: Collection[str] | None) -> tuple[float, float, float]:
    """How far a by-document check is from the target, as checks are ranked: the worst task's attack
    distance from chance (``chance_distances``: both ways for ``tasks``), the tasks' mean distance, then
    the mean forget NLL's distance from the target."""
    distances = chance_distances(check["task_auc"], tasks)
    return max(distances), sum(distances) / len(distances), abs(check["forget_nll"] - check["target_nll"])


@torch.no_grad()
def _document_nlls(model, cached: list[PrefixBatch], first: int, target: int) -> torch.Tensor:
    """Each document's mean token NLL, from cached prefixes (the LM head on real tokens only)."""
    values = []
    for batch in cached:
        every_row = torch.ones(batch.labels.shape[0], dtype=torch.bool, device=batch.labels.device)
        hidden = layer_output(model, batch, first, target)
        values.append(row_nll(model, hidden, batch, target, every_row).float().cpu())
    return torch.cat(values)


def run_rmu(model_dir: Path, forget_rows: list[Row], retain_rows: list[Row], out: Path, config: RMUConfig,
            device: torch.device, dtype: torch.dtype, budget: Budget, log: str | Path | None = None,
            progress: bool = True) -> UnlearnResult:
    """The RMU loop: cache the frozen prefix, then train the named weights on the edited layers only."""
    result = UnlearnResult(output_dir=out, method="rmu")
    first, target = min(config.layers), config.target
    torch.manual_seed(config.seed)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    # Calibration scores whole documents: each sentence completion's (every row's, where a set has none).
    scored = [r for r in forget_rows if r.kind == "sc"] or forget_rows
    tasks = [r.task for r in scored]
    missing = sorted(set(config.calibrate_tasks or ()) - set(tasks))
    if missing:
        raise ValueError(f"--calibrate-tasks: {', '.join(missing)}: no forget documents of that task "
                         f"(the forget set's: {', '.join(sorted(set(tasks)))})")
    texts: list[str] = []
    text_tasks: list[str] | None = None  # the reference texts' tasks, if they have them
    if config.calibrate is not None:
        texts = reference_texts(config.calibrate)[:256]
        text_tasks = reference_tasks(config.calibrate)
        if text_tasks is not None:
            text_tasks = text_tasks[:256]
            lacking = sorted(set(tasks) - set(text_tasks))
            if lacking:
                raise ValueError(f"--calibrate: {config.calibrate}: no reference texts of {', '.join(lacking)}, a "
                                 "task of the forget documents (give every task's, or no task field at all)")

    # Load only what the method needs: embeddings and layers 0..L, unless a term reads the LM head.
    tokenizer = load_checkpoint_tokenizer(model_dir)
    if config.needs_whole_model:
        model = load_causal_lm(model_dir, dtype, device)
    else:
        model = load_prefix(model_dir, target, dtype, device)
    model.requires_grad_(False)
    trainable = select_parameters(model, config.layers, config.params)
    for param in trainable.values():  # float32 master weights: bf16 would round lr-sized updates away
        param.data = param.data.float()
        param.requires_grad_(True)
    result.timings["load"] = budget.elapsed()

    # Cache every batch a step will use as it enters the first edited layer, and the frozen targets.
    forget_order = shuffled(forget_rows, config.seed)
    forget_examples = training_examples(forget_order, tokenizer, config.max_length,
                                        whole_documents=config.forget_tokens == "document")
    retain_examples = shuffled_examples(retain_rows, tokenizer, config.max_length, config.seed + 1)
    document_of: list[int] | None = None  # per forget example: its document's index; len(scored) for none
    if config.calibrate is not None and config.calibrate_by == "document":
        index = {r.document_id: i for i, r in enumerate(scored)}
        document_of = [index.get(r.document_id, len(scored)) for r in forget_order]
    task_of = [TASKS.index(r.task) for r in forget_order]
    with autocast:
        cache = [cache_prefix(model, b, first, n) for b, n in paired_batches(
            forget_examples, retain_examples, config.batch_size, config.steps, tokenizer.pad_token_id, document_of,
            task_of)]
        with torch.no_grad():
            frozen_retain = [layer_output(model, b, first, target)[b.forget_rows:] for b in cache]
        norm = mean_activation_norm(model, cache, first, target)
        calibration_cache: list[PrefixBatch] = []
        reference_cache: list[PrefixBatch] = []
        frozen_reference: list[torch.Tensor] = []  # the anchor's targets: frozen h_L of the reference texts
        destination = None  # destination="unseen": (len(TASKS), D)
        calibrated = None  # calibrate_by="document": which documents are at the target (and one never is)
        # Calibration's target: one level, re-measured at every check, or, for a reference with tasks, one
        # level per task ((len(TASKS),)) measured here once, so that it cannot rise with the edit.
        target_nll: float | torch.Tensor | None = None
        if config.calibrate is not None:
            calibration_cache = [cache_prefix(model, b, first) for b in _document_batches(
                [r.document for r in scored], tokenizer, config.max_length, config.batch_size)]
            reference_cache = [cache_prefix(model, b, first) for b in _document_batches(
                texts, tokenizer, config.max_length, config.batch_size)]
            if config.calibrate_by == "document":
                calibrated = torch.zeros(len(scored) + 1, dtype=torch.bool, device=device)
            reference_nll = _document_nlls(model, reference_cache, first, target)
            target_nll = (calibration_target(config, reference_nll) if text_tasks is None
                          else task_levels(config, reference_nll, text_tasks).to(device))
            if config.anchor > 0:
                with torch.no_grad():
                    frozen_reference = [layer_output(model, b, first, target) for b in reference_cache]
            if config.destination == "unseen":
                destination = unseen_destination(model, reference_cache, text_tasks, first, target)

    coeff = config.adaptive * norm if config.adaptive is not None else float(config.coeff or 0.0)
    result.coeff, result.control_vector = coeff, control_vector(model.config.hidden_size, config.seed)
    steering = (coeff * result.control_vector).to(device)
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.lr, fused=device.type == "cuda")
    result.timings["prepare"] = budget.elapsed() - result.timings["load"]

    checkpointer = Checkpointer(model_dir, out, model, list(trainable), dtype)
    # When calibrating, (distance to the target, weights) of the closest check: how far the worst task's
    # attack AUC is from 0.5, then the tasks' mean distance (calibrate_by="document"; else 0 and 0), then
    # how far the mean forget NLL is from the target.
    best: tuple[tuple[float, float, float], dict[str, torch.Tensor]] | None = None
    step_seconds = slowest_step = 0.0
    shown = ("forget", "retain", "anchor", "retain_nll", "forget_ascent", "forget_nll")
    until = None if config.calibrate else config.steps  # calibration ends the run, steps only cap it
    with StepLog(result, until, "rmu steps" + (" until calibrated" if until is None else ""), shown, log,
                 progress) as steps:
        for step in range(config.steps):
            if not budget.allows_step(slowest_step, checkpointer.last_seconds):
                result.stopped = "time budget"
                break
            started = time.monotonic()
            with autocast:
                anchor = ((reference_cache[step % len(reference_cache)], frozen_reference[step % len(reference_cache)])
                          if frozen_reference else None)
                losses = rmu_losses(model, config, cache[step % len(cache)], frozen_retain[step % len(cache)],
                                    steering, calibrated, target_nll, destination, anchor)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            check_step(step + 1, losses, trainable)
            record = {"step": step + 1, **{k: v.item() for k, v in losses.items()}}
            step_seconds = time.monotonic() - started
            slowest_step = max(slowest_step, step_seconds)
            record["seconds"] = step_seconds
            done = False
            if calibration_cache and ((step + 1) % config.calibrate_every == 0 or step + 1 == config.steps):
                with autocast:
                    nlls = _document_nlls(model, calibration_cache, first, target)
                    if text_tasks is None:  # one level for all: scored anew, as the edit changes unseen text too
                        reference_nll = _document_nlls(model, reference_cache, first, target)
                        target_nll = calibration_target(config, reference_nll)
                goals = document_goals(cast(float | torch.Tensor, target_nll), tasks)
                record["forget_nll"] = forget_nll = nlls.mean().item()
                check: dict = {"step": step + 1, "forget_nll": forget_nll,
                               "target_nll": target_nll if isinstance(target_nll, float) else goals.mean().item()}
                if calibrated is not None:
                    reached = nlls >= goals
                    calibrated[:-1] = reached.to(device)  # a document that falls back below rejoins
                    aucs = task_aucs(nlls.tolist(), tasks, (config.calibrate_margin * reference_nll).tolist(),
                                     text_tasks)
                    check.update(calibrated_documents=int(reached.sum()),
                                 auc=farthest_from_chance(aucs, config.calibrate_tasks), task_auc=aucs)
                    gap = calibration_gap(check, config.calibrate_tasks)
                    done = gap[0] <= config.calibrate_tolerance or bool(reached.all())
                else:
                    gap, done = (0.0, 0.0, abs(forget_nll - check["target_nll"])), forget_nll >= check["target_nll"]
                result.calibration.append(check)
                if best is None or gap < best[0]:
                    best = (gap, {n: p.detach().clone() for n, p in trainable.items()})
            steps.add(record)
            if done:
                result.stopped = "calibrated"
                break
            if budget.wants_early_save(checkpointer.saves):
                checkpointer.save(result, config)  # a valid checkpoint early, replaced atomically later
    if best is not None:  # back off to the checked point that came closest to the target
        for name, weights in best[1].items():
            trainable[name].data.copy_(weights)
    return finish(result, checkpointer, config, budget)
