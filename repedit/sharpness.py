"""Sharpness-aware misdirection: the forget term's gradient taken at the worst weights near the current ones.

SAM for unlearning (Fan et al. 2025, "Towards LLM unlearning resilient to relearning attacks: a
sharpness-aware minimization perspective"): min over theta of max over |eps| <= rho of L_forget(theta + eps),
plus the other terms at theta. One ascent step approximates the max, eps = rho * g / |g| with g the forget
term's gradient, so each step costs one more pass through the edited layers. Here rho is a share of the trained
weights' norm, so one value carries across model sizes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from repedit.distributed import all_reduce_grads


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors]))


def sharpness_aware_backward(loss: torch.Tensor, forget: torch.Tensor, forget_at: Callable[[], torch.Tensor],
                             params: list[torch.nn.Parameter], share: float) -> None:
    """Leave in ``params``' ``.grad`` the gradient of ``loss - forget`` at the weights plus that of ``forget``
    at the weights moved by ``eps = share * |weights| * g / |g|`` (g: ``forget``'s gradient, summed over
    processes), then put the weights back. ``forget`` is the weighted forget term inside ``loss``;
    ``forget_at()`` computes it again at the weights as they are. Grads start empty; not yet reduced over
    processes on return (as after a plain ``backward``)."""
    forget.backward(retain_graph=True)
    all_reduce_grads(params)  # every process moves the weights by the same eps
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    norm = _norm(grads)
    for p in params:
        p.grad = None
    (loss - forget).backward()
    if norm.item() == 0:  # no forget row left in the batch: nothing to be sharp about
        return
    scale = share * _norm([p.detach() for p in params]) / norm
    steps = [g * scale for g in grads]
    with torch.no_grad():
        for p, step in zip(params, steps, strict=True):
            p.add_(step)
    try:
        forget_at().backward()
    finally:
        with torch.no_grad():
            for p, step in zip(params, steps, strict=True):
                p.sub_(step)
