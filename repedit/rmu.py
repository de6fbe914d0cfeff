"""RMU, representation misdirection for unlearning (Li et al. 2024, "The WMDP Benchmark").

Per step, with a forget batch and a retain batch, RMU minimises

    mse(h_L(updated, forget), c * u) + alpha * mse(h_L(updated, retain), h_L(frozen, retain))

where h_L is the output of decoder layer L, u a fixed random unit vector and c the steering
coefficient; only a few MLP weights of layers L-2..L change. The layers below the first edited
one never change, so their output is computed once per batch (``cache_prefix``) and a step runs
only the edited layers (``rmu_losses``). ``wmdp_losses`` is the same loss computed the way the
WMDP code does, with full forward passes; the tests hold the two equal.

Options beyond the paper (``repedit.rmu_config.Loss``), each off by default so that published RMU
stays reproducible: ``retain_nll`` (language-modelling loss on retain answers, which keeps
exact-match answers, the EOS after them and the greedy path through a long completion) and, with
calibration (``repedit.calibration``: stop when forget documents become as unlikely as text the
model never saw, which is what a loss-based membership attack compares against), ``forget_ascent``
(raise each forget row's NLL up to that level and no further). The unseen texts can also be the
misdirection's destination (``destination="unseen"``: the frozen model's mean h_L on unseen text of
each forget row's task, a place an attacker sees as "never seen", not an outlier) and be anchored to
the frozen model (``anchor``), so that text of the forget documents' kinds does not move with the
edit. Every term has a weight (``misdirection``, ``alpha``, ``anchor``, ``retain_nll``,
``forget_ascent``); 0 switches it off.

This module imports only torch, ``repedit.layers``, ``repedit.data`` and ``repedit.rmu_config``, so
that ``repedit export`` can inline it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from repedit.calibration_config import Calibration
from repedit.latent import held_in_ball, latent_perturbation
from repedit.layers import base_model, decoder_layers, hidden_of, layer_inputs_for, run_layers, run_prefix
from repedit.rmu_config import FORGET_TOKENS, Loss, RMUConfig

__all__ = ["FORGET_TOKENS", "Calibration", "Loss", "RMUConfig"]  # the config, read where the method is
Total = Callable[[torch.Tensor], torch.Tensor]  # a count of this process's tokens or rows -> the whole batch's


def one_process(count: torch.Tensor) -> torch.Tensor:
    """The ``Total`` of a run in one process: its own counts are the batch's."""
    return count


def control_vector(hidden_size: int, seed: int) -> torch.Tensor:
    """u = r / ||r|| with r ~ Uniform[0, 1)^d, as published (all components positive)."""
    generator = torch.Generator().manual_seed(seed)
    r = torch.rand(hidden_size, generator=generator)
    return r / r.norm()


def masked_mse(hidden: torch.Tensor, goal: torch.Tensor, mask: torch.Tensor,
               count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over every hidden unit of the real (non-pad) tokens.

    hidden: (B, T, D); goal: (B, T, D) or (D,); mask: (B, T) with 1 on real tokens (or a weight).
    ``count``: the denominator, when this batch is a part of the one the mean is over (a process's share,
    a pass of a step); default: ``mask``'s sum.
    """
    per_token = (hidden.float() - goal.float()).pow(2).mean(dim=-1)  # (B, T)
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / (mask.sum() if count is None else count).clamp(min=1)


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
    weights: torch.Tensor | None = None  # (B, T): each label's misdirection weight, when given
    retain_index: torch.Tensor | None = None  # (B - forget_rows,): each retain row's index in the retain set's order


@torch.no_grad()
def cache_prefix(model: nn.Module, batch: dict[str, torch.Tensor], first_layer: int,
                 forget_rows: int = 0) -> PrefixBatch:
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    hidden, layer_kwargs = run_prefix(model, first_layer, input_ids=batch["input_ids"],
                                      attention_mask=batch["attention_mask"])
    return PrefixBatch(hidden, layer_kwargs, batch["attention_mask"], batch["labels"], forget_rows,
                       batch.get("documents"), batch.get("tasks"), batch.get("weights"), batch.get("retain_index"))


def layer_output(model: nn.Module, batch: PrefixBatch, first_layer: int, layer: int) -> torch.Tensor:
    """h_layer for a cached batch, running only layers ``first_layer..layer``."""
    return run_layers(model, first_layer, layer, batch.hidden, batch.layer_kwargs)


def final_hidden(model: nn.Module, hidden: torch.Tensor, batch: PrefixBatch, after_layer: int,
                 recompute: bool = False) -> torch.Tensor:
    """The final-norm hidden states of a causal LM, continuing from the output of layer ``after_layer``.
    ``recompute``: keep only each layer's input for backward and run the layer again there (gradient
    checkpointing), so the layers above L hold one layer's activations instead of all of them."""
    last = len(decoder_layers(model)) - 1
    if recompute and torch.is_grad_enabled():
        for index in range(after_layer + 1, last + 1):
            hidden = cast(torch.Tensor, checkpoint(run_layers, model, index, index, hidden, batch.layer_kwargs,
                                                   use_reentrant=False))
    elif after_layer < last:
        hidden = run_layers(model, after_layer + 1, last, hidden, batch.layer_kwargs)
    return cast(nn.Module, base_model(model).norm)(hidden)


def _head_nll(head: nn.Module, states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each position's NLL of its label. (P, D), (P,) -> (P,)"""
    return F.cross_entropy(head(states).float(), labels, reduction="none")


def row_nll(model: nn.Module, hidden: torch.Tensor, batch: PrefixBatch, after_layer: int,
            rows: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """Per-row mean NLL of the labelled tokens, continuing from layer ``after_layer``; 0 outside ``rows``.

    Only the labelled positions of ``rows`` (bool, (B,)) go through the LM head: logits over the whole
    vocabulary are most of a small model's step. Equals the NLL of the whole logits on those rows. ``chunk`` > 0:
    the layers above ``after_layer`` are recomputed in backward and the head runs on ``chunk``
    positions at a time, its logits recomputed in backward (at 7B, 64+64 rows of 512 tokens would
    otherwise keep ~8 GB of float logits); same values and gradients. Only ``rows`` run the layers above, cut
    to the longest of them (batches are right-padded): a step whose NLL reads its retain rows alone sends none
    of its forget documents, which are longer, through the top of the model.
    """
    if not bool(rows.all()):
        nll = torch.zeros(rows.shape[0], device=hidden.device)
        if bool(rows.any()):
            mask = batch.mask[rows, : int(batch.mask[rows].sum(dim=1).max())]
            picked = PrefixBatch(hidden[rows, : mask.shape[1]], layer_inputs_for(model, mask), mask,
                                 batch.labels[rows, : mask.shape[1]])
            kept = rows.nonzero()[:, 0]
            nll = nll.index_put((kept,), row_nll(model, picked.hidden, picked, after_layer, rows[kept], chunk))
        return nll
    states = final_hidden(model, hidden, batch, after_layer, recompute=chunk > 0)
    return labelled_nll(cast(nn.Module, model.lm_head), states, batch.labels, rows, chunk)


def labelled_nll(head: nn.Module, states: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor,
                 chunk: int = 0) -> torch.Tensor:
    """Per-row mean NLL of the labelled tokens from the final hidden ``states`` (B, T, D); 0 outside ``rows``.
    Only those positions go through the ``head`` (``row_nll``'s ``chunk``)."""
    states, labels = states[:, :-1], labels[:, 1:]
    picked = (labels != -100) & rows.unsqueeze(1)
    if chunk > 0 and torch.is_grad_enabled():
        losses = torch.cat([cast(torch.Tensor, checkpoint(_head_nll, head, s, y, use_reentrant=False))
                            for s, y in zip(states[picked].split(chunk), labels[picked].split(chunk), strict=True)])
    else:
        losses = _head_nll(head, states[picked], labels[picked])
    sums = torch.zeros(labels.shape[0], dtype=losses.dtype, device=losses.device)
    sums.index_add_(0, picked.nonzero()[:, 0], losses)
    return sums / picked.sum(dim=1).clamp(min=1)


def answer_positions(labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) mask of the positions whose next token is a labelled (answer) token: the hidden states
    that produce the answer. Prompt openings that forget and retain rows share are left out. With
    ``weights`` (B, T), each position is weighted by its next token's weight."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    if weights is None:
        return mask
    weighted = torch.zeros_like(weights)
    weighted[:, :-1] = weights[:, 1:]
    return mask * weighted


def _forget_positions(config: RMUConfig, batch: PrefixBatch,
                      calibrated: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The forget term's weight on each forget position ((B_forget, T); 0 on rows of documents already
    ``calibrated``) and the forget rows the ascent raises ((B_forget,): not calibrated, not cut before
    their answer)."""
    n = batch.forget_rows
    rows = torch.ones(n, dtype=torch.bool, device=batch.mask.device)
    if calibrated is not None and batch.documents is not None:
        rows = ~calibrated[batch.documents]
    mask = batch.mask[:n] if config.loss.forget_tokens == "all" else answer_positions(
        batch.labels[:n], None if batch.weights is None else batch.weights[:n])
    return mask * rows.unsqueeze(1), rows & (batch.labels[:n, 1:] != -100).any(dim=1)


def retain_nll_rows(batch: PrefixBatch, stride: int, turn: int) -> torch.Tensor:
    """(B,) bool: the retain rows whose answers the retain NLL reads the ``turn``-th time the loop comes round to
    ``batch``: one in ``stride`` by their ``retain_index`` (their place in the batch where it has none), the next
    one each turn (``--retain-nll-stride``), so a step in passes or processes reads the rows one pass reads."""
    n = batch.forget_rows
    rows = torch.zeros(batch.mask.shape[0], dtype=torch.bool, device=batch.mask.device)
    index = (batch.retain_index.to(rows.device) if batch.retain_index is not None
             else torch.arange(rows.shape[0] - n, device=rows.device))
    rows[n:] = (index + turn) % stride == 0
    return rows


def loss_counts(config: RMUConfig, batch: PrefixBatch, calibrated: torch.Tensor | None = None,
                level: float | torch.Tensor | None = None,
                anchor: Sequence[tuple[PrefixBatch, torch.Tensor]] = (), turn: int = 0) -> dict[str, torch.Tensor]:
    """The denominator of each mean ``rmu_losses`` takes on ``batch`` (tokens or rows). A step taken in
    passes sums them over its passes (and ``total`` over processes), so each pass's loss is its part."""
    n, weights = batch.forget_rows, config.loss
    forget_mask, ascending = _forget_positions(config, batch, calibrated)
    counts = {"forget": forget_mask.float().sum(), "retain": batch.mask[n:].float().sum()}
    if weights.anchor > 0 and anchor:
        counts["anchor"] = torch.stack([held.mask.float().sum() for held, _ in anchor]).sum()
    if weights.retain_nll > 0:
        counts["retain_nll"] = retain_nll_rows(batch, weights.retain_nll_stride, turn).float().sum()
    if weights.forget_ascent > 0 and level is not None:
        counts["forget_ascent"] = ascending.float().sum()
    return counts


def rmu_losses(model: nn.Module, config: RMUConfig, batch: PrefixBatch, frozen_retain: torch.Tensor,
               steering: torch.Tensor, calibrated: torch.Tensor | None = None,
               level: float | torch.Tensor | None = None, destination: torch.Tensor | None = None,
               anchor: Sequence[tuple[PrefixBatch, torch.Tensor]] = (), total: Total = one_process,
               counts: dict[str, torch.Tensor] | None = None,
               forget_goal: torch.Tensor | None = None, turn: int = 0,
               retain_ahead: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The RMU loss of one step on a cached forget+retain batch; ``steering`` is c * u, shape (D,).

    ``frozen_retain`` is the frozen model's h_L on the batch's retain rows, computed before training.
    ``calibrated`` (bool, one per document index) drops the rows of those documents from the forget
    terms; ``level`` is calibration's NLL level, up to which ``forget_ascent`` raises rows: one level,
    or one per task ((len(TASKS),), read through ``batch.tasks``). ``destination`` ((len(TASKS), D), by
    ``batch.tasks``) replaces ``steering`` as the forget term's goal; ``anchor``: batches of unseen texts
    and the frozen model's h_L on them, held there with weight ``config.loss.anchor``. ``total``:
    every mean divides by the whole batch's count when this process holds a share of its rows
    (``repedit.distributed``), so the processes' losses and gradients sum to the one-process ones;
    ``counts``: those whole-batch counts given (``loss_counts`` summed over a step's passes), ``total`` unused.
    ``forget_goal`` ((B_forget, T, D)): each forget token's own goal, in place of ``destination``'s
    (``repedit.subspace.kept_goal``, ``--destination-keep``). ``turn``: how many times the loop has come round to
    ``batch`` before (``retain_nll_rows``). ``retain_ahead``: the retain NLL computed ahead of the step's passes
    (``repedit.retain_ahead``): given the retain rows' h_L, their summed NLL, its gradient entering through h_L.
    """
    first, layer, n, weights = min(config.layers), config.layer, batch.forget_rows, config.loss
    if counts is None:
        counts = {k: total(v) for k, v in loss_counts(config, batch, calibrated, level, anchor).items()}
    forget_mask, ascending = _forget_positions(config, batch, calibrated)
    goal = (forget_goal if forget_goal is not None  # (B_forget, T, D), (D,) or (B_forget, 1, D)
            else steering if destination is None else destination[batch.tasks].unsqueeze(1))
    inputs = batch.hidden  # (B_forget + B_retain, T, D), the cached inputs to the first edited layer
    if weights.latent_epsilon > 0 and n > 0:
        shift = latent_perturbation(model, inputs[:n], layer_inputs_for(model, batch.mask[:n]), first, layer, goal,
                                    forget_mask, weights.latent_epsilon, weights.latent_steps)
        inputs = torch.cat([inputs[:n] + shift, inputs[n:]])
    hidden = run_layers(model, first, layer, inputs, batch.layer_kwargs)  # (B_forget + B_retain, T, D)
    losses = {
        "forget": masked_mse(hidden[:n], goal, forget_mask, counts["forget"]),
        "retain": masked_mse(hidden[n:], frozen_retain, batch.mask[n:], counts["retain"]),
    }
    loss = weights.misdirection * losses["forget"] + weights.alpha * losses["retain"]
    if anchor and weights.anchor > 0:  # every process holds the whole anchor batch: each adds 1/N of it
        def held_output(held: PrefixBatch, frozen: torch.Tensor) -> torch.Tensor:  # --latent-anchor: in its ball
            if weights.latent_anchor > 0:
                return held_in_ball(model, held.hidden, held.mask, held.layer_kwargs, first, layer, frozen,
                                    weights.latent_anchor, weights.latent_steps)
            return layer_output(model, held, first, layer)
        losses["anchor"] = torch.stack([masked_mse(held_output(held, frozen), frozen, held.mask, counts["anchor"])
                                        for held, frozen in anchor]).sum()
        loss = loss + weights.anchor * losses["anchor"]
    ascent_level = level if weights.forget_ascent > 0 else None
    if isinstance(ascent_level, torch.Tensor):
        ascent_level = ascent_level[batch.tasks]  # (B_forget,): each row's task's level
    if weights.retain_nll > 0 or ascent_level is not None:
        scale = steering.pow(2).mean()  # c^2 / hidden size: the misdirection term's size at the start
        rows = (retain_nll_rows(batch, weights.retain_nll_stride, turn) if weights.retain_nll > 0
                else torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device))
        rows[:n] = ascent_level is not None
        rows[n:] &= retain_ahead is None
        nll = row_nll(model, hidden, batch, layer, rows, config.loss.chunk)
        if weights.retain_nll > 0:  # the retain rows' answers (0 outside the rows read)
            summed = nll[n:].sum() if retain_ahead is None else retain_ahead(hidden[n:])
            losses["retain_nll"] = summed / counts["retain_nll"].clamp(min=1)
            loss = loss + weights.retain_nll * scale * losses["retain_nll"]
        if ascent_level is not None:  # forget rows below the level, pushed up to it
            # level * log(level / NLL): the shortfall in nats near the level, larger far below it,
            # where a memorized row's NLL gradient (1 - p) all but vanishes
            goal_nll = torch.as_tensor(ascent_level, dtype=nll.dtype, device=nll.device)
            shortfall = goal_nll * (goal_nll.log() - nll[:n].clamp(min=1e-6).log()).clamp(min=0)
            losses["forget_ascent"] = (shortfall * ascending).sum() / counts["forget_ascent"].clamp(min=1)
            loss = loss + weights.forget_ascent * scale * losses["forget_ascent"]
    losses["loss"] = loss
    return losses


def wmdp_losses(model: nn.Module, frozen: nn.Module, config: RMUConfig, forget: dict, retain: dict,
                     steering: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same loss the way the WMDP code computes it: three full forward passes, hooks on layer L.

    Kept as the readable definition that ``rmu_losses`` is tested against.
    """
    layer = config.layer

    def read(module: nn.Module, batch: dict) -> torch.Tensor:
        captured: dict[str, torch.Tensor] = {}
        handle = decoder_layers(module)[layer].register_forward_hook(
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
    losses["loss"] = losses["forget"] + config.loss.alpha * losses["retain"]
    return losses
