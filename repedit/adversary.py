"""Adversarial relearning inside the unlearning loop: a light, first-order TAR (Tamirisa et al. 2024,
"Tamper-resistant safeguards for open-weight LLMs").

Relearning 10% of the forget documents for 30 steps gives back most of the edit's NLL gap on the others
(BENCHMARKS.md): the edit holds at its own weights but not a few fine-tuning steps away, and a flatter edit
(sharpness-aware misdirection) did not help. So each step plays the attacker: from the weights as they are,
``adversary_steps`` fresh AdamW steps down the forget rows' next-token NLL (whole documents under
``forget_tokens="document"``, as ``repedit.attack`` relearns them), then the misdirection term on the *next*
forget batch (documents the attacker did not train on, as the attack measures others) at the attacker's
weights. Its gradient there w.r.t. the trained weights, first-order (the attacker's steps are not
differentiated through), is added to the step's at ``adversary_weight`` times the misdirection weight, and
every weight is put back: the edit must hold after the attacker's steps, not only at its own weights.

The attacker moves the trained weights only (``adversary_moves="edited"``: from the cached prefix, cheap) or
every weight from the embeddings up (``"every"``, as the relearn attack does: on the tiny target the attack
moving layers 0-1 alone gives back 0.75 of the gap, around the edit). One batch at a time; under data
parallelism each process's attacker trains on its own share of the rows. Costs ``adversary_steps`` + 1 more
passes a step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from repedit.layers import run_layers, run_prefix
from repedit.rmu import PrefixBatch, RMUConfig, Total, _same, forget_term, layer_output, row_nll, token_nll


def adversary_gradients(params: list[nn.Parameter], attack_loss: Callable[[], torch.Tensor],
                        loss_after: Callable[[], torch.Tensor], steps: int, lr: float,
                        moved: list[nn.Parameter] | None = None) -> list[torch.Tensor | None]:
    """The gradient of ``loss_after()`` w.r.t. ``params`` at the weights ``steps`` AdamW steps (lr ``lr``,
    fresh state, the relearn attack's optimizer) down ``attack_loss()`` reach, moving ``moved`` (default:
    ``params``); on return every weight, its ``.grad`` and ``requires_grad`` are as they were."""
    moved = params if moved is None else moved
    saved = [(p.detach().clone(), p.grad, p.requires_grad) for p in moved]
    optimizer = torch.optim.AdamW(moved, lr=lr)
    try:
        for p in moved:
            p.requires_grad_(True)
        for _ in range(steps):
            for p, g in zip(moved, torch.autograd.grad(attack_loss(), moved, allow_unused=True), strict=True):
                p.grad = g
            optimizer.step()
        return list(torch.autograd.grad(loss_after(), params, allow_unused=True))
    finally:
        with torch.no_grad():
            for p, (weights, grad, wanted) in zip(moved, saved, strict=True):
                p.copy_(weights)
                p.grad = grad
                p.requires_grad_(wanted)


def _forget_ids(batch: PrefixBatch) -> torch.Tensor:
    if batch.input_ids is None:
        raise ValueError("--adversary-moves every: the batch keeps no tokens (cache it with cache_prefix)")
    return batch.input_ids[: batch.forget_rows]


def forget_nll(model: nn.Module, config: RMUConfig, batch: PrefixBatch) -> torch.Tensor:
    """The attacker's loss: the mean NLL of the batch's forget rows' labelled tokens; from the cached prefix,
    or with ``adversary_moves="every"`` from the embeddings."""
    n = batch.forget_rows
    if config.loss.adversary_moves == "every":
        logits = model(input_ids=_forget_ids(batch), attention_mask=batch.mask[:n], use_cache=False).logits
        return token_nll(logits, batch.labels[:n]).mean()
    hidden = layer_output(model, batch, min(config.layers), config.layer)
    rows = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    rows[:n] = True
    return row_nll(model, hidden, batch, config.layer, rows, config.loss.chunk)[:n].mean()


def forget_hidden(model: nn.Module, config: RMUConfig, batch: PrefixBatch) -> torch.Tensor:
    """h_L of the batch's forget rows; from the embeddings when the attacker moves every weight."""
    first, n = min(config.layers), batch.forget_rows
    if config.loss.adversary_moves == "every":
        hidden, layer_kwargs = run_prefix(model, first, input_ids=_forget_ids(batch), attention_mask=batch.mask[:n])
        return run_layers(model, first, config.layer, hidden, layer_kwargs)
    return layer_output(model, batch, first, config.layer)[:n]


def adversarial_backward(model: nn.Module, config: RMUConfig, params: list[nn.Parameter], attacked: PrefixBatch,
                         measured: PrefixBatch, steering: torch.Tensor, calibrated: torch.Tensor | None = None,
                         destination: torch.Tensor | None = None, autocast: torch.autocast | None = None,
                         total: Total = _same) -> float:
    """Add to ``params``' ``.grad`` the gradient of ``adversary_weight x misdirection x`` the forget term on
    ``measured`` at the weights an attacker reaches relearning ``attacked``'s forget rows; returns that term."""
    autocast = autocast or torch.autocast("cpu", enabled=False)
    weights = config.loss
    value = torch.zeros(())

    def attack_loss() -> torch.Tensor:
        with autocast:
            return forget_nll(model, config, attacked)

    def loss_after() -> torch.Tensor:
        nonlocal value
        with autocast:
            value = forget_term(forget_hidden(model, config, measured), config, measured, steering, calibrated,
                                destination, total)
        return weights.adversary_weight * weights.misdirection * value

    moved = list(model.parameters()) if weights.adversary_moves == "every" else params
    grads = adversary_gradients(params, attack_loss, loss_after, weights.adversary_steps, weights.adversary_lr,
                                moved)
    for p, g in zip(params, grads, strict=True):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
    return float(value.detach())
