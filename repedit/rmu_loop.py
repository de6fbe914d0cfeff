"""The RMU loop: cache the frozen prefix, then train the named weights on the edited layers only.

Readable in one sitting: the loss is ``repedit.rmu.rmu_losses``, the stop rule ``repedit.calibration``,
the budget, log and save ``repedit.runtime``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import torch

from repedit.calibration import Calibrator, read_unseen, with_standins
from repedit.calibration_config import Calibration
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer, load_prefix
from repedit.data import TASKS, Row, training_examples
from repedit.distributed import all_reduce_grads, broadcast, is_main, joined, share, total
from repedit.guard import check_step
from repedit.layers import release_prefix
from repedit.offload import to_device, to_host
from repedit.particulars import TokenClasses, particular_weights
from repedit.retain_ahead import retain_nll_ahead
from repedit.rmu import (
    RMUConfig,
    control_vector,
    loss_counts,
    rmu_losses,
    select_parameters,
)
from repedit.runtime import Budget, Checkpointer, StepLog, UnlearnResult, finish, shuffled
from repedit.step_cache import cached_passes, mean_norm, paired_batches
from repedit.subspace import kept_goal


def run_rmu(model_dir: Path, forget_rows: list[Row], retain_rows: list[Row], out: Path, config: RMUConfig,
            device: torch.device, dtype: torch.dtype, budget: Budget, log: str | Path | None = None,
            progress: bool = True, warmup: int = 0, edit_round: int | None = None) -> UnlearnResult:
    """The RMU loop; under ``torchrun`` or ``accelerate launch``, data-parallel (``repedit.distributed``).
    ``warmup``: the learning rate rises linearly to ``config.lr`` over that many steps (``--repair-later-warmup``).
    ``edit_round``: a repaired run's round (``repedit.repair``), which each step's record carries; a later round's
    steps go on in ``log`` after the earlier rounds'."""
    with joined(device) as here:
        main = is_main()
        return _run_rmu(model_dir, forget_rows, retain_rows, out, config, here, dtype, budget,
                        log if main else None, progress and main, warmup, edit_round)


def _run_rmu(model_dir: Path, forget_rows: list[Row], retain_rows: list[Row], out: Path, config: RMUConfig,
             device: torch.device, dtype: torch.dtype, budget: Budget, log: str | Path | None,
             progress: bool, warmup: int, edit_round: int | None) -> UnlearnResult:
    """The RMU loop: cache the frozen prefix, then train the named weights on the edited layers only."""
    result = UnlearnResult(output_dir=out, method="rmu")
    first, layer = min(config.layers), config.layer
    torch.manual_seed(config.seed)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    # Calibration scores whole documents: each sentence completion's (every row's, where a set has none).
    scored = [r for r in forget_rows if r.kind == "sc"] or forget_rows
    unseen = read_unseen(config, [r.task for r in scored], retain_rows) if config.calibration else None

    # Load only what the method needs: embeddings and layers 0..L, unless a term reads the LM head.
    tokenizer = load_checkpoint_tokenizer(model_dir)
    if config.needs_whole_model:
        model = load_causal_lm(model_dir, dtype, device)
    else:
        model = load_prefix(model_dir, layer, dtype, device)
    model.requires_grad_(False)
    config = config.fitted(model.config.hidden_size)  # passes that fit where --micro-batch is not given
    trainable = select_parameters(model, config.layers, config.params)
    for param in trainable.values():  # float32 master weights: bf16 would round lr-sized updates away
        param.data = param.data.float()
        param.requires_grad_(True)
    result.timings["load"] = budget.elapsed()

    # Cache every batch a step will use as it enters the first edited layer, and the frozen model's h_L.
    forget_order = shuffled(forget_rows, config.seed)
    forget_examples = training_examples(forget_order, tokenizer, config.max_length,
                                        whole_documents=config.loss.forget_tokens in ("document", "particulars"))
    retain_order = shuffled(retain_rows, config.seed + 1)
    retain_examples = training_examples(retain_order, tokenizer, config.max_length)
    if config.loss.forget_tokens == "particulars":  # the template every document of a kind shares stays put
        classes = TokenClasses.of(forget_examples + retain_examples,
                                  [r.document_id for r in forget_order + retain_order], config.loss.particulars_ngram)
        forget_examples = [particular_weights(e, classes) for e in forget_examples]
    document_of: list[int] | None = None  # per forget example: its document's index; len(scored) for none
    if unseen is not None:
        index = {r.document_id: i for i, r in enumerate(scored)}
        document_of = [index.get(r.document_id, len(scored)) for r in forget_order]
    task_of = [TASKS.index(r.task) for r in forget_order]
    calibrator = None
    with autocast:
        shares = [share(b, n) for b, n in paired_batches(
            forget_examples, retain_examples, config.batch_size, config.steps, tokenizer.pad_token_id, document_of,
            task_of)]  # this process's rows of each batch: all of them in one process
        kept = to_host if config.offload else (lambda item: item)
        cache, sums = [], torch.zeros(2, dtype=torch.float64)
        for b, n in shares:  # each batch in the passes of its step, with the retain rows' goals: the frozen h_L
            parts, norms = cached_passes(model, b, n, config.passes, first, layer, config.loss.keeps_directions)
            cache.append(kept(parts))
            sums += norms
        norm = mean_norm(sums, total)
        result.batches = len(cache)
        if unseen is not None and cast(Calibration, config.calibration).standins is not None:
            own = len(unseen.anchors or [])
            unseen, made = with_standins(model, tokenizer, config, unseen, retain_rows, [r.task for r in scored])
            result.standins = {"fraction": made.fraction, "matched_on": made.matched_on, "fractions": made.fractions,
                               "texts": len(made.texts), "anchors": len(made.anchors),
                               "anchors_held": len(unseen.anchors or []) - own, "held": len(unseen.held)}
        if unseen is not None:
            calibrator = Calibrator(model, config, scored, unseen, tokenizer, device,
                                    [r.document for r in retain_rows])
            result.kept_shares = calibrator.kept_shares
            if config.loss.anchor > 0:
                result.anchor_texts = calibrator.anchor_texts
            calibrator.anchors = kept(calibrator.anchors)
    if not config.needs_whole_model:  # nothing below the first edited layer runs again
        release_prefix(model, first)

    coeff = config.adaptive * norm if config.adaptive is not None else float(config.coeff or 0.0)
    result.coeff, result.control_vector = coeff, control_vector(model.config.hidden_size, config.seed)
    steering = (coeff * result.control_vector).to(device)
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.lr, fused=device.type == "cuda")
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / warmup)) if warmup else None
    # every rank checks (each scores its share of the documents): each keeps the frozen weights the scaled edits scale
    scaled = calibrator is not None and bool(calibrator.calibration.edit_scales)
    frozen_weights = {name: param.detach().clone() for name, param in trainable.items()} if scaled else {}
    # --calibrate-average: the edited weights averaged over about that many steps, which the checks score
    span = calibrator.calibration.average if calibrator is not None else None
    average = {name: param.detach().clone() for name, param in trainable.items()} if span else {}
    result.timings["prepare"] = budget.elapsed() - result.timings["load"]

    checkpointer = Checkpointer(model_dir, out, model, list(trainable), dtype, writes=is_main())
    step_seconds = slowest_step = 0.0
    shown = ("forget", "retain", "anchor", "retain_nll", "forget_ascent", "forget_nll")
    until = None if calibrator else config.steps  # calibration ends the run, steps only cap it
    with StepLog(result, until, "rmu steps" + (" until calibrated" if until is None else ""), shown, log,
                 progress, append=bool(edit_round)) as steps:
        for step in range(config.steps):
            if budget.seconds is not None and not broadcast(  # the ranks stop together
                    budget.allows_step(slowest_step, checkpointer.last_seconds)):
                result.stopped = "time budget"
                break
            started = time.monotonic()
            parts, held = to_device((cache[step % len(cache)], calibrator.anchor(step) if calibrator else []), device)
            passes = [(batch, frozen, held[j :: len(parts)]) for j, (batch, frozen) in enumerate(parts)]
            calibrated, level, destination, projectors = (
                (calibrator.calibrated, calibrator.level, calibrator.destination, calibrator.projectors)
                if calibrator else (None, None, None, None))
            # every mean's denominator over the step's whole batch: each pass's loss is its part of the step's,
            # and the passes' gradients sum to the gradient of the batch in one pass
            counts: dict[str, torch.Tensor] = {}
            turn = step // len(cache)  # the times the loop came round to this batch before
            for batch, _, anchor in passes:
                for name, count in loss_counts(config, batch, calibrated, level, anchor, turn).items():
                    counts[name] = counts.get(name, 0) + count
            counts = {name: total(count) for name, count in counts.items()}
            optimizer.zero_grad(set_to_none=True)
            losses: dict[str, torch.Tensor] = {}  # the batch's values: its passes' summed
            aheads: list = [None] * len(passes)
            # validate: only with --retain-nll; in one pass the top already runs once, where the ahead would buy less
            # padding with h_L computed twice (untimed), and the sim's one-pass reports ran without it
            if config.loss.retain_nll_tokens > 0 and len(passes) > 1:
                with autocast:
                    aheads = [ahead.term for ahead in retain_nll_ahead(model, config, [p[0] for p in passes], turn)]
            for (batch, frozen, anchor), ahead in zip(passes, aheads, strict=True):
                goal = None
                if config.loss.keeps_directions:  # the cache holds every row's frozen h_L, the forget rows' first
                    goal = kept_goal(cast(torch.Tensor, destination), cast(torch.Tensor, projectors),
                                     frozen[: batch.forget_rows], cast(torch.Tensor, batch.tasks))
                    frozen = frozen[batch.forget_rows :]
                with autocast:
                    part = rmu_losses(model, config, batch, frozen, steering, calibrated, level, destination, anchor,
                                      counts=counts, forget_goal=goal, turn=turn, retain_ahead=ahead)
                part["loss"].backward()
                for name, value in part.items():
                    losses[name] = losses.get(name, 0) + value.detach()
            all_reduce_grads(trainable.values())
            optimizer.step()
            if schedule is not None:
                schedule.step()
            if span:
                for name, param in trainable.items():
                    average[name].lerp_(param.detach(), 1 / span)
            losses = dict(zip(losses, total(torch.stack(list(losses.values()))), strict=True))  # every process's
            check_step(step + 1, losses, trainable)
            record = {"step": step + 1, **({} if edit_round is None else {"round": edit_round}),
                      **{k: v.item() for k, v in losses.items()}}
            step_seconds = time.monotonic() - started
            slowest_step = max(slowest_step, step_seconds)
            record["seconds"] = step_seconds
            stop = None
            if calibrator is not None and calibrator.due(step + 1):
                with autocast, swapped_in(trainable, average):  # the same gathered scores: the same decision
                    check, stop = calibrator.check(model, step + 1, trainable)
                record["forget_nll"] = check["forget_nll"]
                result.calibration.append({**check, "batch": step % len(cache)})  # the batch the check follows
            steps.add(record)
            if stop:
                result.stopped = stop
                break
            if budget.wants_early_save(checkpointer.saves):
                checkpointer.save(result, config)  # a valid checkpoint early, replaced atomically later
    if calibrator is not None:
        calibrator.restore(trainable)
        if scaled:
            with autocast:
                result.calibration += calibrator.scale_edit(model, trainable, frozen_weights, len(result.losses))
    return finish(result, checkpointer, config, budget)


@contextmanager
def swapped_in(trainable: dict[str, torch.nn.Parameter], weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """The trainable parameters hold ``weights`` (those it names) inside the block, their own values after: the
    tensors are exchanged, not copied."""
    for name, held in weights.items():
        trainable[name].data, weights[name] = held, trainable[name].data
    try:
        yield
    finally:
        for name, held in weights.items():
            trainable[name].data, weights[name] = held, trainable[name].data
