import copy

import pytest
import torch
from test_rmu import FAST, forget_and_retain_batch

from repedit.adversary import adversarial_backward, adversary_gradients
from repedit.checkpoint import load_tensors, weight_map
from repedit.layers import decoder_layers, hidden_of
from repedit.rmu import RMUConfig, control_vector, masked_mse, select_parameters, token_nll
from repedit.unlearn import unlearn


def test_the_gradient_is_taken_where_the_attackers_adamw_steps_lead_and_the_weights_come_back():
    """Against the closed form on quadratics: a fresh AdamW's first step moves x by -lr (g / (|g| + eps) + wd x),
    g the attack loss's gradient; the gradient returned is the other loss's at the moved x."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=generator, dtype=torch.float64), torch.randn(5, generator=generator,
                                                                                   dtype=torch.float64)
    x = torch.nn.Parameter(torch.randn(4, generator=generator, dtype=torch.float64))
    start, grad, lr = x.detach().clone(), torch.full((4,), 7.0, dtype=torch.float64), 0.05
    x.grad = grad.clone()
    [got] = adversary_gradients([x], lambda: 0.5 * (a @ x - b).pow(2).sum(), lambda: x.pow(3).sum(), 1, lr)
    g = a.T @ (a @ start - b)
    moved = start - lr * (g / (g.abs() + 1e-8) + 0.01 * start)
    assert torch.allclose(got, 3 * moved.pow(2), atol=1e-12)
    assert torch.equal(x.detach(), start) and torch.equal(x.grad, grad)  # weights and the step's gradient back


@pytest.mark.parametrize("moves", ["edited", "every"])
def test_the_added_gradient_equals_one_computed_from_full_forward_passes(tiny_model_dir, synth_dir, moves):
    """Independently: a copy of the model, one AdamW step (on the edited weights, or on every weight) on its
    forget rows' NLL from a full forward pass, then the forget term read at layer L by a hook; its gradient
    w.r.t. the copy's edited weights is what is added."""
    config = RMUConfig.from_dict({**FAST, "params": ("mlp.up_proj", "mlp.down_proj"), "loss.misdirection": 2.0,
                                  "loss.adversary_steps": 1, "loss.adversary_weight": 3.0,
                                  "loss.adversary_moves": moves})
    model, batch, n = forget_and_retain_batch(tiny_model_dir, synth_dir, 64)
    model.requires_grad_(False)
    params = list(select_parameters(model, config.layers, config.params).values())
    for p in params:
        p.requires_grad_(True)
    steering = 5.0 * control_vector(model.config.hidden_size, 0)
    attacker = copy.deepcopy(model)
    attacked = list(select_parameters(attacker, config.layers, config.params).values())
    start = [p.detach().clone() for p in params]

    adversarial_backward(model, config, params, batch, batch, steering)  # .grad was empty: now the added term

    ids, mask, labels = (t[:n] for t in _inputs(tiny_model_dir, synth_dir))
    if moves == "every":
        attacker.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(attacker.parameters()) if moves == "every" else attacked,
                                  lr=config.loss.adversary_lr)
    token_nll(attacker(input_ids=ids, attention_mask=mask).logits, labels).mean().backward()
    optimizer.step()
    captured = {}
    decoder_layers(attacker)[config.layer].register_forward_hook(lambda _m, _a, out: captured.update(h=hidden_of(out)))
    attacker(input_ids=ids, attention_mask=mask)
    expected = torch.autograd.grad(3.0 * 2.0 * masked_mse(captured["h"], steering, mask), attacked)
    captured.clear()
    decoder_layers(model)[config.layer].register_forward_hook(lambda _m, _a, out: captured.update(h=hidden_of(out)))
    model(input_ids=ids, attention_mask=mask)
    unmoved = torch.autograd.grad(3.0 * 2.0 * masked_mse(captured["h"], steering, mask), params)
    for p, want, at_weights, before in zip(params, expected, unmoved, start, strict=True):
        assert torch.allclose(p.grad, want, rtol=1e-3, atol=1e-6)
        assert not torch.allclose(p.grad, at_weights, rtol=1e-2, atol=1e-5)  # the attacker's step matters
        assert torch.equal(p.detach(), before)
    assert all(p.requires_grad == (p in set(params)) for p in model.parameters())  # as they were


def _inputs(model_dir, synth_dir):
    from repedit.checkpoint import load_checkpoint_tokenizer
    from repedit.data import collate, load_rows, training_examples

    tokenizer = load_checkpoint_tokenizer(model_dir)
    rows = load_rows(synth_dir, "forget")[:3] + load_rows(synth_dir, "retain")[:2]
    batch = collate(training_examples(rows, tokenizer, 64), tokenizer.pad_token_id)
    return batch["input_ids"], batch["attention_mask"], batch["labels"]


def test_weight_zero_is_the_plain_run_and_a_weight_changes_the_trained_weights(tiny_model_dir, synth_dir, tmp_path):
    runs = {name: unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / name, RMUConfig.from_dict(
        {**FAST, "steps": 3, **changes}), progress=False) for name, changes in (
        ("plain", {}), ("zero", {"loss.adversary_steps": 2, "loss.adversary_weight": 0.0}),
        ("on", {"loss.adversary_steps": 2, "loss.adversary_weight": 1.0}))}
    edited = [f"model.layers.{i}.mlp.down_proj.weight" for i in (2, 3, 4)]
    shards = weight_map(tiny_model_dir)
    weights = {name: [load_tensors(r.output_dir / shards[t], {t})[t] for t in edited] for name, r in runs.items()}
    assert all(torch.equal(a, b) for a, b in zip(weights["plain"], weights["zero"], strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(weights["plain"], weights["on"], strict=True))
    assert all(r["adversary"] > 0 for r in runs["on"].losses)
