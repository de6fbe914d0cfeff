"""The latent adversary (``--latent-epsilon``, ``repedit.latent``): a perturbation of the forget rows' inputs to the
first edited layer, within its share of each token's norm, that undoes the misdirection more than shifts of its size
in random directions; the step's forget term is taken there and every other term at the cached inputs."""

import torch
from tiny_settings import FAST, forget_and_retain_rows

from repedit.latent import latent_perturbation
from repedit.layers import layer_inputs_for
from repedit.rmu import RMUConfig, cache_prefix, control_vector, layer_output, rmu_losses


def batch(model_dir, synth_dir):
    """The tiny model, 3 forget rows + 2 retain rows as one batch (its token ids) and as cached entering layer 2."""
    model, joint, n = forget_and_retain_rows(model_dir, synth_dir, 64)
    return model, joint, cache_prefix(model, joint, 2, n), n


def distance_at_layer_4(model, joint, n, shift, goal) -> float:
    """The forget rows' squared distance from ``goal`` at layer 4's output, ``shift`` added to layer 2's input by a
    hook on the model's own forward (not the cached layers the adversary runs)."""
    def add(_module, args, kwargs):
        if args:
            return (args[0] + shift, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + shift}

    handle = model.model.layers[2].register_forward_pre_hook(add, with_kwargs=True)
    try:
        with torch.no_grad():
            states = model(input_ids=joint["input_ids"][:n], attention_mask=joint["attention_mask"][:n],
                           output_hidden_states=True).hidden_states[5]
    finally:
        handle.remove()
    mask = joint["attention_mask"][:n].unsqueeze(-1)
    return float(((states - goal).pow(2) * mask).sum())


def test_the_adversary_stays_in_its_ball_and_undoes_the_misdirection_more_than_random_shifts_its_size(
        tiny_model_dir, synth_dir):
    model, joint, cached, n = batch(tiny_model_dir, synth_dir)
    goal = 5.0 * control_vector(model.config.hidden_size, 0)
    inputs, mask = cached.hidden[:n], cached.mask[:n]
    shift = latent_perturbation(model, inputs, layer_inputs_for(model, mask), 2, 4, goal, mask, 0.1, 4)
    norms, allowed = shift.norm(dim=-1), 0.1 * inputs.norm(dim=-1)
    assert bool((norms <= allowed * (1 + 1e-5)).all()) and float(norms.sum()) > 0.5 * float(allowed.sum())
    assert all(p.grad is None for p in model.parameters())  # no weight's gradient touched
    worst = distance_at_layer_4(model, joint, n, shift, goal)
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):  # random directions, each token's shift as long as the adversary's
        direction = torch.randn(shift.shape, generator=generator)
        random = direction / direction.norm(dim=-1, keepdim=True) * norms.unsqueeze(-1)
        assert worst > distance_at_layer_4(model, joint, n, random, goal)
    assert worst > distance_at_layer_4(model, joint, n, torch.zeros_like(shift), goal)


def test_the_forget_term_is_taken_at_the_adversarys_inputs_and_the_others_at_the_cached_ones(tiny_model_dir,
                                                                                               synth_dir):
    model, _, cached, n = batch(tiny_model_dir, synth_dir)
    steering = 5.0 * control_vector(model.config.hidden_size, 0)
    with torch.no_grad():
        frozen_retain = layer_output(model, cached, 2, 4)[n:]
    plain = rmu_losses(model, RMUConfig.from_dict({**FAST, "loss.retain_nll": 1.0}), cached, frozen_retain, steering)
    config = RMUConfig.from_dict({**FAST, "loss.retain_nll": 1.0, "loss.latent_epsilon": 0.1})
    attacked = rmu_losses(model, config, cached, frozen_retain, steering)
    assert attacked["forget"].item() > plain["forget"].item()
    for term in ("retain", "retain_nll"):
        torch.testing.assert_close(attacked[term], plain[term])
    attacked["loss"].backward()  # the edited weights learn from the attacked forget term
    assert model.model.layers[3].mlp.down_proj.weight.grad.abs().sum() > 0


def test_the_anchor_held_in_its_ball_is_held_at_worse_neighbours_than_the_cached_texts(tiny_model_dir, synth_dir):
    """``--latent-anchor``: once the edit has moved the anchor's texts off their frozen states (here a 5% larger
    down_proj in layer 3), the anchor term is taken at the inputs within the ball that move them farthest, above the
    plain term at the cached inputs, with the forget rows' adversary (``--latent-epsilon``) or without it; the forget
    and retain terms are what they are without the anchor's ball. (At the frozen weights themselves the distance has
    no gradient, and the ball no direction: the term is the plain one.)"""
    model, joint, cached, n = batch(tiny_model_dir, synth_dir)
    held = cache_prefix(model, {k: v[n:] for k, v in joint.items()}, 2)  # the retain rows as anchor texts
    steering = 5.0 * control_vector(model.config.hidden_size, 0)
    with torch.no_grad():
        frozen_retain, frozen_held = layer_output(model, cached, 2, 4)[n:], layer_output(model, held, 2, 4)
        model.model.layers[3].mlp.down_proj.weight.mul_(1.05)
    def losses(forget_ball: float, anchor_ball: float) -> dict[str, torch.Tensor]:
        config = {**FAST, "loss.anchor": 1.0, "loss.latent_epsilon": forget_ball, "loss.latent_anchor": anchor_ball}
        return rmu_losses(model, RMUConfig.from_dict(config), cached, frozen_retain, steering,
                          anchor=[(held, frozen_held)])

    for forget_ball in (0.0, 0.1):
        plain, held_in_ball = losses(forget_ball, 0.0), losses(forget_ball, 0.1)
        assert held_in_ball["anchor"].item() > 1.5 * plain["anchor"].item() > 0
        for term in ("forget", "retain"):
            torch.testing.assert_close(held_in_ball[term], plain[term])
    torch.testing.assert_close(losses(0.1, 0.1)["anchor"], losses(0.0, 0.1)["anchor"])  # its own ball, either way
