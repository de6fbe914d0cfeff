"""The RMU loop: cache the frozen prefix, then train the named weights on the edited layers only.

Readable in one sitting: the loss is ``repedit.rmu.rmu_losses``, the stop rule ``repedit.calibration``,
the budget, log and save ``repedit.runtime``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import torch

from repedit.calibration import (
    calibration_gap,
    calibration_level,
    document_batches,
    document_goals,
    document_nlls,
    farthest_from_chance,
    task_aucs,
    task_levels,
    unseen_destination,
    unseen_tasks,
    unseen_texts,
)
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer, load_prefix
from repedit.data import TASKS, Row, training_examples
from repedit.guard import check_step
from repedit.rmu import (
    PrefixBatch,
    RMUConfig,
    cache_prefix,
    control_vector,
    layer_output,
    mean_activation_norm,
    paired_batches,
    rmu_losses,
    select_parameters,
)
from repedit.runtime import Budget, Checkpointer, StepLog, UnlearnResult, finish, shuffled, shuffled_examples


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
        texts = unseen_texts(config.calibrate)[:256]
        text_tasks = unseen_tasks(config.calibrate)
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
            calibration_cache = [cache_prefix(model, b, first) for b in document_batches(
                [r.document for r in scored], tokenizer, config.max_length, config.batch_size)]
            reference_cache = [cache_prefix(model, b, first) for b in document_batches(
                texts, tokenizer, config.max_length, config.batch_size)]
            if config.calibrate_by == "document":
                calibrated = torch.zeros(len(scored) + 1, dtype=torch.bool, device=device)
            reference_nll = document_nlls(model, reference_cache, first, target)
            target_nll = (calibration_level(config, reference_nll) if text_tasks is None
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
                    nlls = document_nlls(model, calibration_cache, first, target)
                    if text_tasks is None:  # one level for all: scored anew, as the edit changes unseen text too
                        reference_nll = document_nlls(model, reference_cache, first, target)
                        target_nll = calibration_level(config, reference_nll)
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
