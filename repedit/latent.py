"""A latent adversary for the misdirection term (``--latent-epsilon``): the forget rows' inputs to the first edited
layer perturbed, within a share of each token's norm, the way that most undoes the misdirection, before the step's
forget term is taken; with ``--latent-anchor`` the anchor's texts likewise (in a ball of their own size, with the
forget rows' or alone), away from the frozen model's states.

Relearning goes around the edit through the layers below it (BENCHMARKS.md, "Tried and removed"): a few steps on
other forget documents change what the edited layers receive, and the memory comes back. An edit trained to
misdirect every input within a ball around the cached one holds against changes of that size (targeted latent
adversarial training, Sheshadri et al. 2024). It needs only the edited layers: the cached inputs are perturbed, no
layer below them or above L is run.
"""

from __future__ import annotations

import torch
from torch import nn

from repedit.layers import run_layers


def latent_perturbation(model: nn.Module, hidden: torch.Tensor, layer_kwargs: dict, first: int, layer: int,
                        goal: torch.Tensor, positions: torch.Tensor, epsilon: float, steps: int) -> torch.Tensor:
    """The perturbation ((B, T, D), as ``hidden``: cached inputs to layer ``first``, run with ``layer_kwargs``) within
    ``epsilon`` x each token's norm that, after ``steps`` of projected gradient ascent, puts the misdirected
    ``positions`` ((B, T)) at layer ``layer`` farthest from their ``goal``. No weight's gradient is touched."""
    hidden = hidden.detach()
    radius = epsilon * hidden.float().norm(dim=-1, keepdim=True)  # (B, T, 1)
    weights = positions.unsqueeze(-1).float()
    delta = torch.zeros_like(hidden, dtype=torch.float32)
    for _ in range(steps):
        delta.requires_grad_(True)
        states = run_layers(model, first, layer, hidden + delta.to(hidden.dtype), layer_kwargs)
        distance = ((states.float() - goal.float()).pow(2) * weights).sum()
        (grad,) = torch.autograd.grad(distance, delta)
        with torch.no_grad():  # a step of the radius's size along each token's gradient, then back into the ball
            step = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            delta = delta + radius * step
            delta = delta * (radius / delta.norm(dim=-1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)
    return delta.detach().to(hidden.dtype)


def held_in_ball(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, layer_kwargs: dict, first: int, layer: int,
                 frozen: torch.Tensor, epsilon: float, steps: int) -> torch.Tensor:
    """An anchor batch's h_``layer`` at the inputs within the ball that move it farthest from the frozen model's
    ``frozen``, for the anchor term to hold there (``--latent-anchor``): the edit flat around unseen texts, so neither
    the forget rows' ball nor the edit itself takes in their neighbourhood."""
    shift = latent_perturbation(model, hidden, layer_kwargs, first, layer, frozen, mask, epsilon, steps)
    return run_layers(model, first, layer, hidden + shift, layer_kwargs)
