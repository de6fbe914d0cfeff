import copy
from functools import partial

import torch
from test_rmu import FAST, forget_and_retain_batch

from repedit.rmu import RMUConfig, control_vector, rmu_losses, select_parameters
from repedit.rmu_loop import weighted_forget_term
from repedit.sharpness import sharpness_aware_backward


def test_the_forget_terms_gradient_is_taken_at_the_worst_point_of_the_radius_and_the_weights_come_back():
    """Against SAM's closed form on quadratics: forget f = |A x - b|^2 / 2, the rest r = c |x|^2 / 2; the
    gradient left is c x + A^T (A (x + eps) - b), eps = share |x| g / |g|, g = A^T (A x - b)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    b = torch.randn(5, generator=generator, dtype=torch.float64)
    x = torch.nn.Parameter(torch.randn(4, generator=generator, dtype=torch.float64))
    start, c, share = x.detach().clone(), 0.3, 0.05

    def forget_at() -> torch.Tensor:
        return 0.5 * (a @ x - b).pow(2).sum()

    forget = forget_at()
    sharpness_aware_backward(forget + 0.5 * c * x.pow(2).sum(), forget, forget_at, [x], share)
    g = a.T @ (a @ start - b)
    eps = share * start.norm() * g / g.norm()
    assert torch.allclose(x.grad, c * start + a.T @ (a @ (start + eps) - b), atol=1e-12)
    assert torch.allclose(x.detach(), start, atol=1e-15)


def test_with_no_forget_row_left_the_gradient_is_the_plain_one():
    x = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    forget = 0.0 * x.sum()
    sharpness_aware_backward(forget + x.pow(2).sum(), forget, lambda: 0.0 * x.sum(), [x], 0.1)
    assert torch.equal(x.grad, torch.tensor([2.0, -4.0]))


def test_rmu_step_takes_the_misdirection_gradient_at_the_perturbed_edited_layers(tiny_model_dir, synth_dir):
    """The loop's pass against one built by hand: a copy of the model with the edited MLPs moved by eps (from
    autograd.grad of the forget term), its forget gradient added to the other terms' at the weights."""
    config = RMUConfig.from_dict({**FAST, "params": ("mlp.up_proj", "mlp.down_proj"), "loss.misdirection": 2.0,
                                  "loss.sharpness": 0.02})
    model, batch, _ = forget_and_retain_batch(tiny_model_dir, synth_dir, 64)
    model.requires_grad_(False)
    params = select_parameters(model, config.layers, config.params)
    for p in params.values():
        p.requires_grad_(True)
    steering = 5.0 * control_vector(model.config.hidden_size, 0)
    frozen = torch.randn_like(batch.hidden[batch.forget_rows:])
    expected_model = copy.deepcopy(model)
    expected_params = select_parameters(expected_model, config.layers, config.params)

    start = {name: p.detach().clone() for name, p in params.items()}
    losses = rmu_losses(model, config, batch, frozen, steering)
    forget_at = partial(weighted_forget_term, model, config, batch, steering, None, None,
                        torch.autocast("cpu", enabled=False))
    sharpness_aware_backward(losses["loss"], 2.0 * losses["forget"], forget_at, list(params.values()), 0.02)

    plain = rmu_losses(expected_model, config, batch, frozen, steering)
    tensors = list(expected_params.values())
    forget_grads = torch.autograd.grad(2.0 * plain["forget"], tensors, retain_graph=True)
    rest_grads = torch.autograd.grad(plain["loss"] - 2.0 * plain["forget"], tensors)
    size = torch.sqrt(sum(t.detach().pow(2).sum() for t in tensors))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in forget_grads))
    with torch.no_grad():
        for t, g in zip(tensors, forget_grads, strict=True):
            t.add_(0.02 * size * g / norm)
    moved = rmu_losses(expected_model, config, batch, frozen, steering)
    sharp_grads = torch.autograd.grad(2.0 * moved["forget"], tensors)
    for (name, p), rest, sharp, at_weights in zip(params.items(), rest_grads, sharp_grads, forget_grads, strict=True):
        assert torch.allclose(p.grad, rest + sharp, rtol=1e-4, atol=1e-7), name
        assert not torch.allclose(p.grad, rest + at_weights, rtol=1e-2, atol=1e-5), name  # the radius matters
        assert torch.allclose(p.detach(), start[name], atol=1e-7), name  # the weights are back
