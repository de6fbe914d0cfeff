"""Sharpness-aware misdirection: the step's gradient is the rest of the loss at the weights plus the
misdirection term where it is worst within ``rho`` of them (Fan et al. 2025), checked against the
closed form on a quadratic, and the weights come back exactly."""

import torch

from repedit.rmu_loop import sharpness_aware_backward


def test_the_gradient_is_the_forget_term_taken_uphill_by_rho_and_the_rest_where_the_weights_are():
    torch.manual_seed(0)
    a, b = torch.randn(5, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    theta = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    weight, rho = 3.0, 0.25
    start = theta.detach().clone()

    def losses() -> dict[str, torch.Tensor]:  # forget: |A theta|^2, weighted; the rest: |theta - b|^2
        forget = (a @ theta).pow(2).sum()
        return {"forget": forget, "loss": weight * forget + (theta - b).pow(2).sum()}

    returned = sharpness_aware_backward([theta], losses, weight, rho)

    climb = weight * 2 * a.T @ a @ start
    shifted = start + rho * climb / climb.norm()
    expected = 2 * (start - b) + weight * 2 * a.T @ a @ shifted
    torch.testing.assert_close(theta.grad, expected)
    assert torch.equal(theta.detach(), start)  # restored, not moved by +e - e
    assert returned["forget"].item() == (a @ start).pow(2).sum().item()  # the losses at the weights


def test_nothing_left_to_forget_leaves_the_plain_gradient():
    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))

    def losses() -> dict[str, torch.Tensor]:  # every forget document calibrated: the term is zero
        forget = (theta * 0).sum()
        return {"forget": forget, "loss": forget + theta.pow(2).sum()}

    sharpness_aware_backward([theta], losses, 1.0, 0.5)
    torch.testing.assert_close(theta.grad, 2 * theta.detach())
