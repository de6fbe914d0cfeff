"""``--fresh-anchors``: every other anchor batch is documents invented for that step, held at the frozen model's
h_L, read with the edited weights swapped out and back."""

import pytest
import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.fresh_anchors import FreshAnchors
from repedit.rmu import RMUConfig, cache_prefix, layer_output, select_parameters
from repedit.unlearn import unlearn

LAYERS = (2, 3, 4)
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def edited_model(model_dir):
    """The tiny model with its layers 2-4 MLPs trainable in float32 and moved off the checkpoint's weights."""
    model = load_causal_lm(model_dir, torch.float32, "cpu")
    model.requires_grad_(False)
    trainable = select_parameters(model, list(LAYERS), list(MLP))
    generator = torch.Generator().manual_seed(0)
    for param in trainable.values():
        param.requires_grad_(True)
    fresh = FreshAnchors(model, trainable, load_checkpoint_tokenizer(model_dir), size=5, max_length=48, first=2,
                         layer=4)
    with torch.no_grad():
        for param in trainable.values():
            param.add_(0.5 * torch.randn(param.shape, generator=generator))
    return model, trainable, fresh


def test_each_step_invents_its_own_documents_and_holds_them_at_the_unedited_models_activations(tiny_model_dir):
    model, trainable, fresh = edited_model(tiny_model_dir)
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    original = load_causal_lm(tiny_model_dir, torch.float32, "cpu")  # the oracle: the checkpoint as saved
    edited = {name: param.detach().clone() for name, param in trainable.items()}
    assert fresh.texts(3) == fresh.texts(3) and not set(fresh.texts(3)) & set(fresh.texts(4))
    assert len(fresh.texts(3)) == 5
    batch, frozen = fresh.batch(3)
    for row, text in enumerate(fresh.texts(3)):
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :48]
        with torch.no_grad():
            theirs = original(ids, output_hidden_states=True).hidden_states[4 + 1][0]
            edited_now = model(ids, output_hidden_states=True).hidden_states[4 + 1][0]
        assert int(batch.mask[row].sum()) == ids.shape[1]
        torch.testing.assert_close(frozen[row, : ids.shape[1]], theirs, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(edited_now, theirs, atol=1e-2)  # the edit moved it: the goal is not the input
    for name, param in trainable.items():  # the edited weights are back, and still trainable
        assert torch.equal(param.data, edited[name]) and param.requires_grad


def test_autocast_never_serves_one_sides_weights_to_the_other(tiny_model_dir):
    """Autocast caches each parameter's low-precision copy for its whole region: a fresh batch read inside the step's
    region must neither use the edited weights' copy nor leave the frozen one for the step's own forward."""
    model, trainable, fresh = edited_model(tiny_model_dir)
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    ids = tokenizer(["A story about the river and the hill."], return_tensors="pt")
    prefix = cache_prefix(model, {**ids, "labels": ids["input_ids"]}, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = layer_output(model, prefix, 2, 4)
        _, frozen_inside = fresh.batch(1)
        after = layer_output(model, prefix, 2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, frozen_alone = fresh.batch(1)
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(frozen_inside, frozen_alone)


def test_a_run_with_fresh_anchors_holds_other_texts_on_every_other_step(tiny_model_dir, synth_dir, tmp_path):
    """The first step holds the fixed texts either way (same loss); the second holds the step's own documents."""
    reference = str(synth_dir / "mia_data" / "nonmember.jsonl")  # unseen documents to calibrate against
    base = {"layers": LAYERS, "params": MLP, "steps": 2, "batch_size": 4, "max_length": 64, "adaptive": 5.0,
            "loss.alpha": 100.0, "loss.anchor": 10.0, "calibration.unseen": reference, "calibration.every": 100}
    runs = [unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / str(fresh), RMUConfig.from_dict(
        {**base, "loss.fresh_anchors": fresh}), progress=False) for fresh in (False, True)]
    fixed, streamed = (run.losses for run in runs)
    assert streamed[0]["anchor"] == pytest.approx(fixed[0]["anchor"], rel=1e-6)
    assert streamed[1]["anchor"] != pytest.approx(fixed[1]["anchor"], rel=1e-3)
    assert streamed[1]["anchor"] > 0


def test_fresh_anchors_need_an_anchor_weight():
    with pytest.raises(ValueError, match="--fresh-anchors: needs --anchor > 0"):
        RMUConfig.from_dict({"layers": LAYERS, "loss.fresh_anchors": True}).validate(6)
