"""RMU, representation misdirection for unlearning (Li et al. 2024, "The WMDP Benchmark").

Per step, with a forget batch and a retain batch, RMU minimises

    mse(h_L(updated, forget), c * u) + alpha * mse(h_L(updated, retain), h_L(frozen, retain))

where h_L is the output of decoder layer L, u a fixed random unit vector and c the steering
coefficient; only a few MLP weights of layers L-2..L change. The layers below the first edited
one never change, so their output is computed once per batch (``cache_prefix``) and a step runs
only the edited layers (``rmu_losses``). ``reference_losses`` is the same loss computed the way the
WMDP code does, with full forward passes; the tests hold the two equal.

Options beyond the paper, each off by default so that published RMU stays reproducible:
``retain_nll`` (language-modelling loss on retain answers, which keeps exact-match answers, the
EOS after them and the greedy path through a long completion), forget calibration (``calibrate``:
stop when forget documents become as unlikely as text the model never saw, which is what a
loss-based membership attack compares against) and, with it, ``forget_ascent`` (raise each forget
row's NLL up to that level and no further). The reference texts can also be the misdirection's
destination (``destination="unseen"``: the frozen model's mean h_L on unseen text of each forget
row's task, a place an attacker sees as "never seen", not an outlier) and be anchored to the frozen
model (``anchor``), so that text of the forget documents' kinds does not move with the edit. Every term
has a weight (``misdirection``, ``alpha``, ``anchor``, ``retain_nll``, ``forget_ascent``); 0 switches it off.

This module imports only torch, ``repedit.layers`` and ``repedit.data``, so that ``repedit export``
can inline it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from repedit.data import Example, collate
from repedit.layers import base_model, decoder_layers, hidden_of, run_layers, run_prefix

FORGET_TOKENS = ("all", "answer", "document")
CALIBRATE_BY = ("mean", "document")
DESTINATIONS = ("control", "unseen")


@dataclass
class RMUConfig:
    """Everything an RMU run depends on. Defaults are the paper's Zephyr-7B settings."""

    layers: tuple[int, ...] = (5, 6, 7)  # edited layers: the paper's L-2, L-1, L with L = 7
    target_layer: int | None = None  # L, whose output is misdirected; default: the last of ``layers``
    params: tuple[str, ...] = ("mlp.down_proj",)  # modules trained inside each edited layer
    coeff: float | None = 6.5  # c, the paper's Zephyr-7B value; must exceed typical norms at L
    adaptive: float | None = None  # beta: c = beta * mean ||h_L(frozen, forget)|| (adaptive RMU); overrides coeff
    alpha: float = 1200.0  # retain weight; large because mse averages over every hidden unit
    misdirection: float = 1.0  # weight of the forget (misdirection) term; 0 switches it off, for ablations
    # Where forget activations are sent: "control", c * u (published); "unseen", the frozen model's mean h_L
    # over the reference texts (--calibrate) of the forget row's task, reachable and what unseen text
    # looks like there (c then only sets the units of retain_nll and forget_ascent).
    destination: str = "control"
    # Weight of keeping h_L of the reference texts (--calibrate) at the frozen model's, as alpha does for
    # the retain rows: unseen text of the forget documents' kinds must not move with the edit.
    anchor: float = 0.0
    lr: float = 5e-5
    steps: int = 150
    batch_size: int = 4
    max_length: int = 512
    seed: int = 0
    # Weight of the retain answers' language-modelling loss (needs the whole model), in the units of
    # forget_ascent (c^2 / hidden size per nat), the term it has to hold back.
    retain_nll: float = 0.0
    # Forget tokens misdirected: "all"; "answer": those that predict each row's answer, not the prompts
    # that forget and retain rows share; "document": answers of QA rows, and every token of a sentence-
    # completion row, whose input and output make the whole document that a membership attack scores.
    forget_tokens: str = "all"
    # Reference texts the model never saw (.jsonl, field text/document). When every row has a ``task``,
    # each task's calibration level is measured once, on the frozen model, from that task's texts;
    # otherwise one level for all, re-measured at every check (see calibrate_by).
    calibrate: str | None = None
    calibrate_margin: float = 1.0  # stop when forget NLL >= margin * reference NLL
    # "mean": stop when the mean forget-document NLL reaches the reference mean; "document": each forget
    # document's rows leave the forget terms once its NLL reaches the reference median, and the run stops
    # once a loss attack tells no task's forget documents from the reference (every task's AUC within
    # calibrate_tolerance of 0.5; see calibrate_tasks) or every document is there, keeping the checked
    # weights whose worst task came closest to 0.5: near the target, documents swing across it from one
    # check to the next.
    # The reference is scored at every check with the model as edited so far, since an edit that
    # misdirects the forget documents also makes unseen text of their kind less likely.
    calibrate_by: str = "mean"
    calibrate_tolerance: float = 0.05  # "document": an attack AUC this close to 0.5 is chance (MIA score 0.9)
    # "document": the tasks whose forget documents the reference texts are like (None: all). Only
    # theirs must land within the tolerance from either side; any other task's need only stop looking
    # more familiar than the reference (AUC <= 0.5 + tolerance): how unlikely unseen text of its own
    # kind is, a reference of another kind cannot say (Wikipedia text, of stories).
    calibrate_tasks: tuple[str, ...] | None = None
    calibrate_every: int = 5  # steps between calibration checks
    # Weight of a bounded ascent: the mean over forget rows of target * log(target / row NLL) while the
    # row is below target, calibration's target (the reference level at the last check). Misdirection
    # alone stalls short of the unseen level; this takes each row there, never past it. In units of
    # c^2 / hidden size, the size of the misdirection term at the start, so a value carries across models.
    forget_ascent: float = 0.0
    time_budget: float | None = None  # seconds; a valid checkpoint exists before it ends
    method: str = field(default="rmu", init=False)

    @property
    def target(self) -> int:
        return self.target_layer if self.target_layer is not None else max(self.layers)

    def trained_layers(self, num_hidden_layers: int) -> tuple[int, ...]:
        """The decoder layers whose weights train (as ``BaselineConfig.trained_layers``)."""
        return self.layers

    @property
    def needs_whole_model(self) -> bool:
        """Only the retain NLL term and calibration need the layers above L and the LM head."""
        return self.retain_nll > 0 or self.forget_ascent > 0 or self.calibrate is not None

    def validate(self, num_hidden_layers: int) -> None:
        """Raise a ValueError naming the offending option."""
        if not self.layers:
            raise ValueError("--layers: give at least one layer")
        bad = [i for i in self.layers if not 0 <= i < num_hidden_layers]
        if bad:
            raise ValueError(f"--layers: layer(s) {bad} out of range; the model has layers 0..{num_hidden_layers - 1}")
        if not 0 <= self.target < num_hidden_layers:
            raise ValueError(f"--target-layer: {self.target} out of range 0..{num_hidden_layers - 1}")
        if self.target < max(self.layers):
            raise ValueError(
                f"--target-layer: {self.target} is below edited layer {max(self.layers)}; "
                "an edit above the target layer cannot change its output"
            )
        if self.coeff is None and self.adaptive is None:
            raise ValueError("--coeff or --adaptive: one is required")
        for name in ("steps", "batch_size", "max_length", "calibrate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be at least 1")
        if self.lr <= 0:
            raise ValueError("--lr: must be positive")
        if self.calibrate_margin <= 0:
            raise ValueError("--calibrate-margin: must be positive")
        if not 0 <= self.calibrate_tolerance < 0.5:
            raise ValueError("--calibrate-tolerance: must be in [0, 0.5)")
        if self.calibrate_by not in CALIBRATE_BY:
            raise ValueError(f"--calibrate-by: {self.calibrate_by!r}; choose one of {', '.join(CALIBRATE_BY)}")
        if self.calibrate_by != "mean" and self.calibrate is None:
            raise ValueError(f"--calibrate-by {self.calibrate_by}: needs --calibrate (reference texts)")
        if self.calibrate_tasks is not None and self.calibrate_by != "document":
            raise ValueError("--calibrate-tasks: needs --calibrate-by document (a loss attack task by task)")
        if self.forget_ascent < 0 or self.retain_nll < 0:
            raise ValueError("--forget-ascent, --retain-nll: weights must be >= 0")
        if self.misdirection < 0 or self.alpha < 0 or self.anchor < 0:
            raise ValueError("--misdirection, --alpha, --anchor: weights must be >= 0")
        if self.destination not in DESTINATIONS:
            raise ValueError(f"--destination: {self.destination!r}; choose one of {', '.join(DESTINATIONS)}")
        if (self.destination == "unseen" or self.anchor > 0) and self.calibrate is None:
            raise ValueError("--destination unseen, --anchor: need --calibrate (the reference texts)")
        if self.forget_ascent > 0 and self.calibrate is None:
            raise ValueError("--forget-ascent: needs --calibrate (its target is the reference texts' NLL)")
        if self.forget_tokens not in FORGET_TOKENS:
            raise ValueError(f"--forget-tokens: {self.forget_tokens!r}; choose one of {', '.join(FORGET_TOKENS)}")
        if self.calibrate is not None and not Path(self.calibrate).is_file():
            raise ValueError(f"--calibrate: {self.calibrate}: no such file")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> RMUConfig:
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(values) - known - {"method"})
        if unknown:
            raise ValueError(f"RMU config: unknown key(s) {unknown}; known: {sorted(known)}")
        if values.get("method", "rmu") != "rmu":
            raise ValueError(f"RMU config: method is {values['method']!r}, expected 'rmu'")
        return cls(**typed_values(cls, values))


_JSON_TYPES: dict[str, tuple[type, ...]] = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,),
                                            "None": (type(None),)}


def typed_values(cls, values: dict) -> dict:
    """The values of a config's JSON form that are fields of dataclass ``cls``, lists made tuples.

    A value whose type its field does not take (``"alpha": "x"``, ``"layers": 5``) raises a ValueError
    naming the option, so that a bad grid fails when it is read, not when its run starts.
    """
    annotations = {f.name: str(f.type) for f in fields(cls) if f.init}
    clean = {}
    for key, value in values.items():
        if key not in annotations:
            continue
        for kind in (part.strip() for part in annotations[key].split("|")):
            if kind.startswith("tuple["):
                items = _JSON_TYPES[kind[len("tuple["):].split(",")[0]]
                if isinstance(value, list | tuple) and all(_is(v, items) for v in value):
                    value = tuple(value)
                    break
            elif _is(value, _JSON_TYPES[kind]):
                break
        else:
            raise ValueError(f"--{key.replace('_', '-')}: got {value!r}, expected {annotations[key]}")
        clean[key] = value
    return clean


def _is(value, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))  # true is no number


def control_vector(hidden_size: int, seed: int) -> torch.Tensor:
    """u = r / ||r|| with r ~ Uniform[0, 1)^d, as published (all components positive)."""
    generator = torch.Generator().manual_seed(seed)
    r = torch.rand(hidden_size, generator=generator)
    return r / r.norm()


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every hidden unit of the real (non-pad) tokens.

    hidden: (B, T, D); target: (B, T, D) or (D,); mask: (B, T) with 1 on real tokens.
    """
    per_token = (hidden.float() - target.float()).pow(2).mean(dim=-1)  # (B, T)
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def select_parameters(model: nn.Module, layers: tuple[int, ...], params: tuple[str, ...]) -> dict[str, nn.Parameter]:
    """The weights RMU trains, by name relative to ``model`` (e.g. ``layers.5.mlp.down_proj.weight``)."""
    stack = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is stack)
    selected = {}
    for index in layers:
        layer = stack[index]
        for module_name in params:
            try:
                module = layer.get_submodule(module_name)
            except AttributeError:
                known = sorted(n for n, m in layer.named_modules() if n and isinstance(m, nn.Linear))
                raise ValueError(f"--params: layer {index} has no module {module_name!r}; known: {known}") from None
            for param_name, param in module.named_parameters():
                selected[f"{prefix}.{index}.{module_name}.{param_name}"] = param
    return selected


@dataclass
class PrefixBatch:
    """One batch as it enters the first edited layer, computed once with frozen weights.

    A training batch holds a forget batch in its first ``forget_rows`` rows and a retain batch in
    the rest, so one pass through the edited layers serves both terms of the loss.
    """

    hidden: torch.Tensor  # (B, T, D): the input of the first edited layer
    layer_kwargs: dict  # attention mask, rotary embeddings, ... as the model passes them to a layer
    mask: torch.Tensor  # (B, T): 1 on real tokens
    labels: torch.Tensor  # (B, T): token ids where a language-modelling loss is taken, else -100
    forget_rows: int = 0
    documents: torch.Tensor | None = None  # (forget_rows,): each forget row's document index, when given
    tasks: torch.Tensor | None = None  # (forget_rows,): each forget row's index in data.TASKS, when given


def paired_batches(forget: list[Example], retain: list[Example], batch_size: int, count: int,
                   pad_token_id: int, documents: list[int] | None = None,
                   tasks: list[int] | None = None) -> list[tuple[dict[str, torch.Tensor], int]]:
    """Batch j = forget batch j then retain batch j, each set cycling; at most ``count`` batches.

    Both sets keep their answer labels: the retain rows' feed the retain NLL term, the forget rows'
    say which tokens ``forget_tokens`` "answer" and "document" misdirect. ``documents`` and ``tasks`` (one
    index per forget example) become each batch's ``documents`` and ``tasks``. Returns (batch, forget rows).
    """
    n_forget, n_retain = -(-len(forget) // batch_size), -(-len(retain) // batch_size)
    paired = []
    for j in range(min(count, max(n_forget, n_retain))):
        f = (j % n_forget) * batch_size
        r = (j % n_retain) * batch_size
        forget_part = list(forget[f : f + batch_size])
        batch = collate(forget_part + list(retain[r : r + batch_size]), pad_token_id)
        for name, values in (("documents", documents), ("tasks", tasks)):
            if values is not None:
                batch[name] = torch.tensor(values[f : f + batch_size])
        paired.append((batch, len(forget_part)))
    return paired


@torch.no_grad()
def cache_prefix(model: nn.Module, batch: dict[str, torch.Tensor], first_layer: int,
                 forget_rows: int = 0) -> PrefixBatch:
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    hidden, layer_kwargs = run_prefix(model, first_layer, input_ids=batch["input_ids"],
                                      attention_mask=batch["attention_mask"])
    return PrefixBatch(hidden, layer_kwargs, batch["attention_mask"], batch["labels"], forget_rows,
                       batch.get("documents"), batch.get("tasks"))


def layer_output(model: nn.Module, batch: PrefixBatch, first_layer: int, layer: int) -> torch.Tensor:
    """h_layer for a cached batch, running only layers ``first_layer..layer``."""
    return run_layers(model, first_layer, layer, batch.hidden, batch.layer_kwargs)


def final_hidden(model: nn.Module, hidden: torch.Tensor, batch: PrefixBatch, after_layer: int) -> torch.Tensor:
    """The final-norm hidden states of a causal LM, continuing from the output of layer ``after_layer``."""
    last = len(decoder_layers(model)) - 1
    if after_layer < last:
        hidden = run_layers(model, after_layer + 1, last, hidden, batch.layer_kwargs)
    return cast(nn.Module, base_model(model).norm)(hidden)


def row_nll(model: nn.Module, hidden: torch.Tensor, batch: PrefixBatch, after_layer: int,
            rows: torch.Tensor) -> torch.Tensor:
    """Per-row mean NLL of the labelled tokens, continuing from layer ``after_layer``; 0 outside ``rows``.

    Only the labelled positions of ``rows`` (bool, (B,)) go through the LM head: logits over the whole
    vocabulary are most of a small model's step. Equals ``token_nll`` on those rows.
    """
    states = final_hidden(model, hidden, batch, after_layer)[:, :-1]
    labels = batch.labels[:, 1:]
    picked = (labels != -100) & rows.unsqueeze(1)
    losses = F.cross_entropy(cast(nn.Module, model.lm_head)(states[picked]).float(), labels[picked], reduction="none")
    sums = torch.zeros(labels.shape[0], dtype=losses.dtype, device=losses.device)
    sums.index_add_(0, picked.nonzero()[:, 0], losses)
    return sums / picked.sum(dim=1).clamp(min=1)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean next-token NLL over labelled positions. (B, T, V), (B, T) -> (B,)"""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    losses = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")
    counts = (shift_labels != -100).sum(dim=1).clamp(min=1)
    return losses.sum(dim=1) / counts


@torch.no_grad()
def mean_activation_norm(model: nn.Module, batches: list[PrefixBatch], first_layer: int, layer: int) -> float:
    """Mean L2 norm of h_layer over the real tokens of ``batches`` (of their forget rows, in a
    forget+retain batch); adaptive RMU sets c against it."""
    total, count = 0.0, 0
    for batch in batches:
        rows = slice(0, batch.forget_rows or None)
        norms = layer_output(model, batch, first_layer, layer)[rows].float().norm(dim=-1)  # (B, T)
        mask = batch.mask[rows]
        total += (norms * mask).sum().item()
        count += int(mask.sum().item())
    return total / max(count, 1)


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) mask of the positions whose next token is a labelled (answer) token: the hidden states
    that produce the answer. Prompt openings that forget and retain rows share are left out."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask


def rmu_losses(model: nn.Module, config: RMUConfig, batch: PrefixBatch, frozen_retain: torch.Tensor,
               steering: torch.Tensor, calibrated: torch.Tensor | None = None,
               target_nll: float | torch.Tensor | None = None, destination: torch.Tensor | None = None,
               anchor: tuple[PrefixBatch, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The RMU loss of one step on a cached forget+retain batch; ``steering`` is c * u, shape (D,).

    ``frozen_retain`` is the frozen model's h_L on the batch's retain rows, computed before training.
    ``calibrated`` (bool, one per document index) drops the rows of those documents from the forget
    terms; ``target_nll`` is calibration's target, up to which ``forget_ascent`` raises rows: one level,
    or one per task ((len(TASKS),), read through ``batch.tasks``). ``destination`` ((len(TASKS), D), by
    ``batch.tasks``) replaces ``steering`` as the forget term's target; ``anchor`` is a batch of reference
    texts and the frozen model's h_L on it, held there with weight ``config.anchor``.
    """
    first, target, n = min(config.layers), config.target, batch.forget_rows
    hidden = layer_output(model, batch, first, target)  # (B_forget + B_retain, T, D)
    forget_rows = torch.ones(n, dtype=torch.bool, device=hidden.device)
    if calibrated is not None and batch.documents is not None:
        forget_rows = ~calibrated[batch.documents]
    forget_mask = batch.mask[:n] if config.forget_tokens == "all" else answer_positions(batch.labels[:n])
    goal = steering if destination is None else destination[batch.tasks].unsqueeze(1)  # (D,) or (B_forget, 1, D)
    losses = {
        "forget": masked_mse(hidden[:n], goal, forget_mask * forget_rows.unsqueeze(1)),
        "retain": masked_mse(hidden[n:], frozen_retain, batch.mask[n:]),
    }
    loss = config.misdirection * losses["forget"] + config.alpha * losses["retain"]
    if anchor is not None and config.anchor > 0:
        reference, frozen_reference = anchor
        losses["anchor"] = masked_mse(layer_output(model, reference, first, target), frozen_reference, reference.mask)
        loss = loss + config.anchor * losses["anchor"]
    ascent_target = target_nll if config.forget_ascent > 0 else None
    if isinstance(ascent_target, torch.Tensor):
        ascent_target = ascent_target[batch.tasks]  # (B_forget,): each row's task's level
    if config.retain_nll > 0 or ascent_target is not None:
        scale = steering.pow(2).mean()  # c^2 / hidden size: the misdirection term's size at the start
        rows = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        rows[n:], rows[:n] = config.retain_nll > 0, ascent_target is not None
        nll = row_nll(model, hidden, batch, target, rows)
        if config.retain_nll > 0:  # the retain rows' answers
            losses["retain_nll"] = nll[n:].mean()
            loss = loss + config.retain_nll * scale * losses["retain_nll"]
        if ascent_target is not None:  # forget rows below the target, pushed up to it
            # target * log(target / NLL): the shortfall in nats near the target, larger far below it,
            # where a memorized row's NLL gradient (1 - p) all but vanishes
            level = torch.as_tensor(ascent_target, dtype=nll.dtype, device=nll.device)
            shortfall = level * (level.log() - nll[:n].clamp(min=1e-6).log()).clamp(min=0)
            ascending = forget_rows & (batch.labels[:n, 1:] != -100).any(dim=1)  # rows cut before their answer: none
            losses["forget_ascent"] = (shortfall * ascending).sum() / ascending.sum().clamp(min=1)
            loss = loss + config.forget_ascent * scale * losses["forget_ascent"]
    losses["loss"] = loss
    return losses


def reference_losses(model: nn.Module, frozen: nn.Module, config: RMUConfig, forget: dict, retain: dict,
                     steering: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same loss the way the WMDP code computes it: three full forward passes, hooks on layer L.

    Kept as the readable definition that ``rmu_losses`` is tested against.
    """
    target = config.target

    def read(module: nn.Module, batch: dict) -> torch.Tensor:
        captured: dict[str, torch.Tensor] = {}
        handle = decoder_layers(module)[target].register_forward_hook(
            lambda _m, _a, output: captured.__setitem__("h", hidden_of(output)))
        try:
            module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        finally:
            handle.remove()
        return captured["h"]

    with torch.no_grad():
        frozen_retain = read(frozen, retain)
    losses = {
        "forget": masked_mse(read(model, forget), steering, forget["attention_mask"]),
        "retain": masked_mse(read(model, retain), frozen_retain, retain["attention_mask"]),
    }
    losses["loss"] = losses["forget"] + config.alpha * losses["retain"]
    return losses
