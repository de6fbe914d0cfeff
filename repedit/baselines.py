"""Fine-tuning baselines that RMU is compared against: gradient difference, NPO and the winners' recipe.

All three change weights by gradient descent on the answer tokens of forget and retain rows; they
differ only in the loss and in the order the rows are seen, so one loop (``train``) takes a
*schedule* (which forget and retain rows each step uses) and an *objective* (the loss of a step
from each row's answer NLL, ``Rows``) and does the rest: one forward pass over the step's forget and
retain rows, AdamW, the step log, the progress bar, the time budget and the shard-reusing save.

- ``graddiff``: ``-NLL(forget) + NLL(retain)``, as the SemEval-2025 organizers ran it.
- ``npo``: negative preference optimization against the frozen initial model, plus retain NLL.
- ``sugd``: the 1st-placed team's sequential gradient difference: the forget set in chunks, each
  trained with cyclically sampled retain rows, ``0.5 * CE_retain - CE_forget``, top layers only.

Precision: as in RMU, the trained weights become float32 master copies while the rest stays in the
loaded dtype and CUDA computes under bf16 autocast. Plain bf16 weights would not train: an AdamW
step moves a weight by about lr = 1e-5, under half a bf16 step for any weight above about 0.003.

Memory: no method holds a second model. NPO's reference model is the initial model, so its
log-likelihoods (``frozen_logps``) are computed once before the first step. Beyond the model, training needs 14 bytes
per trained bf16 weight; ``check_memory`` refuses a GPU run whose floor does not fit.

>>> unlearn("target/", "data/", "data/", "out/", NPOConfig(epochs=5))
>>> unlearn("target/", "data/", "data/", "out/", SUGDConfig(last_layers=4))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from repedit.baseline_configs import BaselineConfig, NPOConfig
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import IGNORE_INDEX, Example, Row, collate
from repedit.guard import check_step
from repedit.layers import LAYER_PATH, base_model, num_layers
from repedit.rmu import labelled_nll, select_parameters
from repedit.runtime import Budget, Checkpointer, StepLog, UnlearnResult, finish, shuffled_examples
from repedit.schedules import Step

Batch = dict[str, torch.Tensor]  # input_ids, attention_mask, labels (B, T) and index (B,): row positions


class Rows(NamedTuple):
    """One side (forget or retain) of a step: each row's answer NLL, answer length and position."""

    nll: torch.Tensor  # (B,) mean NLL over the row's answer tokens
    tokens: torch.Tensor  # (B,) answer tokens (EOS included)
    positions: torch.Tensor  # (B,) the rows' positions in the forget or retain list


# The losses of one step from its forget and retain rows; the "loss" entry is minimised.
Objective = Callable[[Rows, Rows], dict[str, torch.Tensor]]


def answer_nll(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean NLL over each row's answer tokens (B,) and the number of those tokens (B,). The LM head runs on
    the answer tokens alone: full logits of 64 rows padded to 332 tokens were most of a 19.7 GiB step on the
    sim, and eight such runs did not fit one H200 (BENCHMARKS.md, forty-eighth call)."""
    states = base_model(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               use_cache=False).last_hidden_state
    labels = batch["labels"]
    everyone = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    head = cast(nn.Module, model.lm_head)  # the output embeddings, as RMU's row_nll reads them
    return labelled_nll(head, states, labels, everyone), (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


def _with_retain(losses: dict[str, torch.Tensor], loss: torch.Tensor, retain: Rows,
                 weight: float) -> dict[str, torch.Tensor]:
    """Add ``weight * NLL(retain)`` (at weight 0 the step has no retain rows) and the total."""
    if weight > 0:
        losses["retain_nll"] = retain.nll.mean()
        loss = loss + weight * losses["retain_nll"]
    losses["loss"] = loss
    return losses


def graddiff_objective(retain_weight: float) -> Objective:
    """``-NLL(forget) + retain_weight * NLL(retain)``, NLL the mean over each row's answer tokens."""

    def objective(forget: Rows, retain: Rows) -> dict[str, torch.Tensor]:
        forget_nll = forget.nll.mean()
        return _with_retain({"forget_nll": forget_nll}, -forget_nll, retain, retain_weight)

    return objective


@torch.no_grad()
def sequence_logps(model: nn.Module, batches: list[Batch]) -> torch.Tensor:
    """Summed answer log-likelihood of every row of ``batches``, indexed by the rows' ``index``."""
    total = sum(len(b["index"]) for b in batches)
    logps = torch.zeros(total, device=batches[0]["input_ids"].device)
    for batch in batches:
        mean, count = answer_nll(model, batch)
        logps[batch["index"]] = -(mean * count).float()
    return logps


def npo_objective(beta: float, retain_weight: float, frozen_logps: torch.Tensor) -> Objective:
    """NPO with the initial model's log-likelihoods given: ``frozen_logps[i]`` for forget row ``i``.

    No reference model is held: NPO's reference is the initial model, whose log-likelihoods are
    computed once before the first step (``sequence_logps``), so a 7B run needs one model copy.
    """

    def objective(forget: Rows, retain: Rows) -> dict[str, torch.Tensor]:
        log_ratio = -(forget.nll * forget.tokens) - frozen_logps[forget.positions]  # log(p_theta/p_ref) (B,)
        npo = -(2 / beta) * F.logsigmoid(-beta * log_ratio).mean()
        return _with_retain({"npo": npo, "forget_nll": forget.nll.mean()}, npo, retain, retain_weight)

    return objective


def trainable_parameters(model: nn.Module, config: BaselineConfig) -> dict[str, nn.Parameter]:
    """The weights a baseline trains, by name in the checkpoint (``model.layers.5.mlp.down_proj.weight``)."""
    num_hidden_layers = num_layers(model)
    layers = config.trained_layers(num_hidden_layers)
    if layers is None and not config.params:
        return dict(model.named_parameters())
    layers = layers if layers is not None else tuple(range(num_hidden_layers))
    if config.params:
        return select_parameters(model, layers, config.params)
    prefixes = tuple(LAYER_PATH.format(i) + "." for i in layers)
    return {name: p for name, p in model.named_parameters() if name.startswith(prefixes)}


def check_memory(method: str, trainable: dict[str, nn.Parameter], free_bytes: int | None) -> None:
    """Refuse before training when the trained weights' optimizer state cannot fit (None: not checked).

    Each trained weight costs 4 - its size more bytes for a float32 master copy, 4 for its gradient and
    8 for AdamW's two moments. Activations come on top, so this is a floor and a refusal is certain.
    """
    if free_bytes is None:
        return
    count = sum(p.numel() for p in trainable.values())
    need = sum(p.numel() * (4 - p.element_size() + 12) for p in trainable.values())
    if need > free_bytes:
        raise ValueError(
            f"{method}: training {count / 1e9:.2f}B weights needs {need / 2**30:.1f} GiB more GPU memory "
            f"(float32 weights, gradients, AdamW state) but {free_bytes / 2**30:.1f} GiB is free; "
            "train fewer with --last-layers, --layers or --params"
        )


def _batch(forget: list[Example], retain: list[Example], step: Step, pad_token_id: int,
           device: torch.device) -> Batch:
    """A step's forget rows, then its retain rows: one batch, so one forward pass serves both."""
    batch = collate([forget[i] for i in step.forget] + [retain[i] for i in step.retain], pad_token_id)
    batch["index"] = torch.tensor(step.forget + step.retain)
    return {k: v.to(device) for k, v in batch.items()}


def run_baseline(model_dir: Path, forget_rows: list[Row], retain_rows: list[Row], out: Path,
                 config: BaselineConfig, device: torch.device, dtype: torch.dtype, budget: Budget,
                 log: str | Path | None = None, progress: bool = True) -> UnlearnResult:
    """Load the whole model, pick the trained weights, build the schedule and objective, then ``train``."""
    torch.manual_seed(config.seed)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    tokenizer = load_checkpoint_tokenizer(model_dir)
    model = load_causal_lm(model_dir, dtype, device)  # every baseline reads the LM head
    model.requires_grad_(False)
    trainable = trainable_parameters(model, config)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    check_memory(config.method, trainable, free)
    for param in trainable.values():  # float32 master weights: bf16 would round lr-1e-5 updates away
        param.data = param.data.float()
        param.requires_grad_(True)
    result = UnlearnResult(output_dir=out, method=config.method)
    result.timings["load"] = budget.elapsed()

    pad = tokenizer.pad_token_id
    forget = shuffled_examples(forget_rows, tokenizer, config.max_length, config.seed)
    retain = shuffled_examples(retain_rows, tokenizer, config.max_length, config.seed + 1)
    plan = config.schedule(len(forget), len(retain))[: config.steps]
    if config.retain_weight == 0:  # no retain term: no retain rows to run
        plan = [step._replace(retain=[]) for step in plan]

    def make_batch(step: Step) -> Batch:
        return _batch(forget, retain, step, pad, device)

    if isinstance(config, NPOConfig):
        everyone, size = list(range(len(forget))), config.batch_size
        forget_batches = [make_batch(Step(everyone[i : i + size], [], 0)) for i in everyone[::size]]
        with autocast:
            frozen_logps = sequence_logps(model, forget_batches)
        objective = npo_objective(config.beta, config.retain_weight, frozen_logps)
    else:
        objective = graddiff_objective(config.retain_weight)
    checkpointer = Checkpointer(model_dir, out, model, list(trainable), dtype)
    result.timings["prepare"] = budget.elapsed() - result.timings["load"]

    train(model, plan, make_batch, objective, config, checkpointer, result, budget, autocast, log, progress)
    return finish(result, checkpointer, config, budget)


def train(model: nn.Module, plan: list[Step], make_batch: Callable[[Step], Batch],
          objective: Objective, config: BaselineConfig, checkpointer: Checkpointer, result: UnlearnResult,
          budget: Budget, autocast: torch.autocast, log: str | Path | None, progress: bool) -> None:
    """The loop every baseline shares: one AdamW step on the weights that require grad per ``plan``
    entry, each logged into ``result.losses`` (and ``log``) and shown on the progress bar.

    With a time budget it saves a valid checkpoint once half the budget is spent, and stops early
    when the next step and the final save might not fit.
    """
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    trainable = list(named.values())
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, fused=trainable[0].is_cuda)
    slowest_step = 0.0
    with StepLog(result, len(plan), config.method, ("loss", "forget_nll", "retain_nll", "npo"), log, progress) as steps:
        for number, step in enumerate(plan, start=1):
            if not budget.allows_step(slowest_step, checkpointer.last_seconds):
                result.stopped = "time budget"
                break
            started = time.monotonic()
            batch, n = make_batch(step), len(step.forget)
            with autocast:
                nll, tokens = answer_nll(model, batch)
                forget, retain = (Rows(nll[rows], tokens[rows], batch["index"][rows])
                                  for rows in (slice(0, n), slice(n, None)))
                losses = objective(forget, retain)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            check_step(number, losses, named)
            step_seconds = time.monotonic() - started
            slowest_step = max(slowest_step, step_seconds)
            record = {"step": number, **step.where(), **{k: v.item() for k, v in losses.items()}}
            record["seconds"] = step_seconds
            steps.add(record)
            if budget.wants_early_save(checkpointer.saves):
                checkpointer.save(result, config)  # a valid checkpoint early, replaced atomically later
