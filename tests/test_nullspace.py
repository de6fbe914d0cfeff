"""repedit.nullspace (``--preserve-energy``): updates kept out of the retain set's input directions."""

import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import load_rows, training_examples
from repedit.layers import decoder_layers, run_layers
from repedit.nullspace import NullSpaceEdit, null_space_projector, retain_moments
from repedit.rmu import cache_prefix, paired_batches, select_parameters


def test_the_projector_removes_the_directions_that_hold_the_energy_and_keeps_the_rest():
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
    scales = torch.tensor([3.0, 1.0, 1e-3, 1e-3, 1e-3, 1e-3], dtype=torch.float64)  # energy: 0.9, 0.1, ~1e-7
    keys = torch.diag(scales) @ basis.T  # one key along each basis direction, at its scale
    moment = keys.T @ keys
    expected = torch.eye(6, dtype=torch.float64) - basis[:, :2] @ basis[:, :2].T  # independent: from the basis
    torch.testing.assert_close(null_space_projector(moment, 0.99).double(), expected, atol=1e-5, rtol=0)
    one = torch.eye(6, dtype=torch.float64) - basis[:, :1] @ basis[:, :1].T  # 0.5 of the trace: the top one
    torch.testing.assert_close(null_space_projector(moment, 0.5).double(), one, atol=1e-5, rtol=0)


def test_the_moments_are_those_of_the_inputs_each_mlp_weight_reads_on_the_retain_rows(tiny_model_dir, synth_dir):
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    forget = training_examples(load_rows(synth_dir, "forget"), tokenizer, 64, whole_documents=True)
    retain = training_examples(load_rows(synth_dir, "retain"), tokenizer, 64)
    cache = [cache_prefix(model, b, 2, n) for b, n in paired_batches(forget, retain, 3, 2, tokenizer.pad_token_id)]
    trainable = select_parameters(model, (2, 3), ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
    moments = retain_moments(model, trainable, cache, 2, 3)
    # independent: each MLP's input x as the MLP module receives it, its weights' inputs by hand
    expected: dict[str, torch.Tensor] = {}
    for index in (2, 3):
        mlp = decoder_layers(model)[index].mlp
        seen: list[torch.Tensor] = []
        handle = mlp.register_forward_pre_hook(lambda module, inputs, seen=seen: seen.append(inputs[0]))
        with torch.no_grad():
            for batch in cache:
                run_layers(model, 2, 3, batch.hidden, batch.layer_kwargs)
        handle.remove()
        for batch, x in zip(cache, seen, strict=True):
            x = x[batch.forget_rows:][batch.mask[batch.forget_rows:].bool()]
            inner = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
            for name, keys in (("gate_proj", x), ("up_proj", x), ("down_proj", inner)):
                key = f"layers.{index}.mlp.{name}.weight"
                expected[key] = expected.get(key, 0) + keys.T @ keys
    assert set(moments) == set(trainable)
    for name, moment in moments.items():
        full = next(n for n in expected if name.endswith(n))
        torch.testing.assert_close(moment, expected[full], rtol=1e-4, atol=1e-4)


def test_a_projected_update_does_not_move_the_retain_inputs_outputs(tiny_model_dir, synth_dir):
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    forget = training_examples(load_rows(synth_dir, "forget"), tokenizer, 64, whole_documents=True)
    retain = training_examples(load_rows(synth_dir, "retain"), tokenizer, 64)
    cache = [cache_prefix(model, b, 2, n) for b, n in paired_batches(forget, retain, 3, 2, tokenizer.pad_token_id)]
    trainable = select_parameters(model, (2,), ("mlp.down_proj",))
    moments = retain_moments(model, trainable, cache, 2, 2)
    edit = NullSpaceEdit(trainable, moments, 0.999)
    [(name, weight)] = trainable.items()
    start, update = weight.detach().clone(), torch.randn_like(weight)
    with torch.no_grad():
        weight.add_(update)  # an update in every direction, as an optimizer step may make
    edit.project(trainable)
    change = weight.detach() - start

    def retain_movement(delta: torch.Tensor) -> float:  # sum over retain inputs k of |dW k|^2, per |dW|^2
        return ((delta @ moments[name]) * delta).sum().item() / delta.pow(2).sum().item()

    # at most the largest eigenvalue the projector leaves, itself at most 0.1% of the trace; measured 0.018 of the
    # unprojected update's
    assert retain_movement(change) <= 1e-3 * moments[name].trace().item()
    assert retain_movement(change) < 0.1 * retain_movement(update)
    # and the rest of the update stays: an orthogonal projection's <P u, u> = |P u|^2, with |P u| > 0
    torch.testing.assert_close((change * update).sum(), change.pow(2).sum(), rtol=1e-4, atol=0)
    assert change.pow(2).sum() > 0.01 * update.pow(2).sum()  # measured 0.044
