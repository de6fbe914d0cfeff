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

Memory: no method holds a second model. NPO's frozen reference is the initial model, so its
log-likelihoods are computed once before the first step. Beyond the model, training needs 14 bytes
per trained bf16 weight; ``check_memory`` refuses a GPU run whose floor does not fit.

>>> unlearn("target/", "data/", "data/", "out/", NPOConfig(epochs=5))
>>> unlearn("target/", "data/", "data/", "out/", SUGDConfig(last_layers=4))
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import IGNORE_INDEX, Example, Row, collate
from repedit.guard import check_step
from repedit.layers import LAYER_PATH, num_layers
from repedit.rmu import select_parameters, token_nll, typed_values
from repedit.runtime import Budget, Checkpointer, StepLog, UnlearnResult, finish, shuffled_examples

Batch = dict[str, torch.Tensor]  # input_ids, attention_mask, labels (B, T) and index (B,): row positions


class Rows(NamedTuple):
    """One side (forget or retain) of a step: each row's answer NLL, answer length and position."""

    nll: torch.Tensor  # (B,) mean NLL over the row's answer tokens
    tokens: torch.Tensor  # (B,) answer tokens (EOS included)
    positions: torch.Tensor  # (B,) the rows' positions in the forget or retain list


# The losses of one step from its forget and retain rows; the "loss" entry is minimised.
Objective = Callable[[Rows, Rows], dict[str, torch.Tensor]]


def _require_positive(config, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be at least 1")


@dataclass
class BaselineConfig:
    """Options every baseline shares.

    Trained weights: the decoder ``layers`` if given, else the top ``last_layers`` (all layers when
    the model has fewer), else the whole model, embeddings and head included; within a trained
    layer only the modules named in ``params`` (e.g. ``mlp.down_proj``) when given.
    """

    lr: float = 1e-5  # the organizers' and the winners' value
    epochs: int = 10  # passes over the forget set (sugd: over each chunk); the organizers ran 10
    steps: int | None = None  # stop after this many optimizer steps; None: the epochs decide
    batch_size: int = 32  # forget rows per step, the organizers' batch
    max_length: int = 512  # tokens per row; SemEval rows are far shorter
    seed: int = 0  # row order
    retain_weight: float = 1.0  # weight of NLL(retain); gradient difference as published weighs both terms 1
    layers: tuple[int, ...] | None = None  # decoder layers trained; overrides last_layers
    last_layers: int | None = None  # the top k decoder layers trained
    params: tuple[str, ...] = ()  # modules trained inside each trained layer; empty: all of them
    time_budget: float | None = None  # seconds; a valid checkpoint exists before it ends
    method: str = field(default="", init=False)

    def trained_layers(self, num_hidden_layers: int) -> tuple[int, ...] | None:
        """The decoder layers whose weights train, or None for the whole model."""
        if self.layers is None and self.last_layers is not None:
            return tuple(range(max(0, num_hidden_layers - self.last_layers), num_hidden_layers))
        return self.layers

    def validate(self, num_hidden_layers: int) -> None:
        """Raise a ValueError naming the offending option."""
        if self.layers is not None:
            bad = [i for i in self.layers if not 0 <= i < num_hidden_layers]
            if not self.layers or bad:
                raise ValueError(f"--layers: layer(s) {bad} out of range or none given; "
                                 f"the model has layers 0..{num_hidden_layers - 1}")
        elif self.last_layers is not None:
            _require_positive(self, ("last_layers",))
        _require_positive(self, ("epochs", "batch_size", "max_length"))
        if self.steps is not None:
            _require_positive(self, ("steps",))
        if self.lr <= 0:
            raise ValueError("--lr: must be positive")
        if self.retain_weight < 0:
            raise ValueError("--retain-weight: must not be negative")

    def schedule(self, n_forget: int, n_retain: int) -> list[Step]:
        return epoch_schedule(n_forget, n_retain, self.batch_size, self.epochs, self.seed)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> BaselineConfig:
        """The config from its JSON form; keys of other methods (RMU's ``coeff``, ...) are refused."""
        method = cls().method
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(values) - known - {"method"})
        if unknown:
            options = ", ".join(f"{k} (--{k.replace('_', '-')})" for k in unknown)
            raise ValueError(f"{method}: option(s) {options} do not apply to {method}; "
                             f"its options: {sorted(known)}")
        if values.get("method", method) != method:
            raise ValueError(f"{method} config: method is {values['method']!r}, expected {method!r}")
        return cls(**typed_values(cls, values))


@dataclass
class GradDiffConfig(BaselineConfig):
    """Gradient difference, ``-NLL(forget) + retain_weight * NLL(retain)``, over the whole model by
    default: the organizers' baseline (10 epochs, batch 32, lr 1e-5)."""

    method: str = field(default="graddiff", init=False)


@dataclass
class NPOConfig(BaselineConfig):
    """NPO (Zhang et al. 2024), ``-(2/beta) logsigmoid(-beta (logp(forget) - logp_ref(forget)))`` on
    summed answer log-likelihoods, plus ``retain_weight * NLL(retain)``; otherwise as graddiff."""

    beta: float = 0.1  # the NPO paper's and the organizers' value
    method: str = field(default="npo", init=False)

    def validate(self, num_hidden_layers: int) -> None:
        super().validate(num_hidden_layers)
        if self.beta <= 0:
            raise ValueError("--beta: must be positive")


@dataclass
class SUGDConfig(BaselineConfig):
    """The 1st-placed team's sequential gradient difference: ``0.5 * CE_retain - CE_forget`` chunk by
    chunk, each forget row trained beside ``retain_ratio`` retain rows, the top layers only."""

    epochs: int = 5  # per chunk; not given in the notes: a starting point to tune
    batch_size: int = 4  # forget rows per step; with 7 retain rows each, 32 rows: the organizers' batch
    retain_weight: float = 0.5  # the team's 0.5 * CE_retain
    last_layers: int | None = 8  # the team trained only the last layers
    chunk_size: int = 32  # the team's chunk
    retain_ratio: int = 7  # retain rows per forget row, the team's ratio
    method: str = field(default="sugd", init=False)

    def validate(self, num_hidden_layers: int) -> None:
        super().validate(num_hidden_layers)
        _require_positive(self, ("chunk_size", "retain_ratio"))

    def schedule(self, n_forget: int, n_retain: int) -> list[Step]:
        return chunk_schedule(n_forget, n_retain, self.chunk_size, self.retain_ratio, self.batch_size,
                              self.epochs)


class Step(NamedTuple):
    """The rows one optimizer step trains on, as positions in the (shuffled) forget and retain lists."""

    forget: list[int]
    retain: list[int]
    epoch: int
    chunk: int | None = None

    def where(self) -> dict[str, int]:
        """The step's place in the schedule, for the log."""
        return {"epoch": self.epoch} if self.chunk is None else {"chunk": self.chunk, "epoch": self.epoch}


def _cyclic(start: int, count: int, n: int) -> list[int]:
    """``count`` positions from ``start`` onwards, wrapping around a list of ``n``."""
    return [(start + j) % n for j in range(count)]


def epoch_schedule(n_forget: int, n_retain: int, batch_size: int, epochs: int, seed: int) -> list[Step]:
    """Each epoch the forget rows in a new seeded order, each batch beside as many retain rows, taken
    cyclically so that every retain row is used before any repeats."""
    generator = torch.Generator().manual_seed(seed)
    steps, cursor = [], 0
    for epoch in range(epochs):
        order = torch.randperm(n_forget, generator=generator).tolist()
        for start in range(0, n_forget, batch_size):
            forget = order[start : start + batch_size]
            steps.append(Step(forget, _cyclic(cursor, len(forget), n_retain), epoch))
            cursor += len(forget)
    return steps


def chunk_schedule(n_forget: int, n_retain: int, chunk_size: int, retain_ratio: int, batch_size: int,
                   epochs: int) -> list[Step]:
    """The winners' sequence: chunk after chunk of the forget rows, each chunk's rows given
    ``retain_ratio`` retain rows apiece (taken cyclically, continuing across chunks) and trained for
    ``epochs`` passes before the next chunk starts; a step keeps each forget row with its retain rows.
    """
    steps, cursor = [], 0
    for chunk, first in enumerate(range(0, n_forget, chunk_size)):
        members = list(range(first, min(first + chunk_size, n_forget)))
        partners = _cyclic(cursor, retain_ratio * len(members), n_retain)  # members[i]'s: [i*r, (i+1)*r)
        cursor += len(partners)
        for epoch in range(epochs):
            for start in range(0, len(members), batch_size):
                retain = partners[start * retain_ratio : (start + batch_size) * retain_ratio]
                steps.append(Step(members[start : start + batch_size], retain, epoch, chunk))
    return steps


def answer_nll(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean NLL over each row's answer tokens (B,) and the number of those tokens (B,)."""
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return token_nll(output.logits, batch["labels"]), (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)


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


def npo_objective(beta: float, retain_weight: float, reference: torch.Tensor) -> Objective:
    """NPO with the frozen reference's log-likelihoods given: ``reference[i]`` for forget row ``i``.

    No reference model is held: the reference is the initial model, whose log-likelihoods are
    computed once before the first step (``sequence_logps``), so a 7B run needs one model copy.
    """

    def objective(forget: Rows, retain: Rows) -> dict[str, torch.Tensor]:
        log_ratio = -(forget.nll * forget.tokens) - reference[forget.positions]  # log(p_theta/p_ref) (B,)
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
        reference_batches = [make_batch(Step(everyone[i : i + size], [], 0)) for i in everyone[::size]]
        with autocast:
            reference = sequence_logps(model, reference_batches)
        objective = npo_objective(config.beta, config.retain_weight, reference)
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
