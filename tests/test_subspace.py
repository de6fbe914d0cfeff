import json

import numpy as np
import pytest
import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import TASKS, load_rows
from repedit.document_scores import document_batches
from repedit.rmu import RMUConfig, cache_prefix
from repedit.subspace import kept_goal, unseen_statistics
from repedit.synth import synthesize
from repedit.unlearn import unlearn

FIRST, LAYER = 2, 4  # layers 2-4 of the tiny 6-layer model: h_4 is hidden_states[5]


def states_of(model, tokenizer, texts):
    """The oracle: the full model's h_4 of each text, one text at a time, as float64 numpy."""
    return np.concatenate([model(**tokenizer(t, return_tensors="pt"), output_hidden_states=True)
                           .hidden_states[LAYER + 1][0].double().numpy() for t in texts])


def numpy_projector(states, share):
    """The projector onto the fewest principal directions of ``states`` explaining at least ``share`` of their
    variance, by numpy's eigendecomposition of their covariance."""
    values, vectors = np.linalg.eigh(np.cov(states.T, bias=True))
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    count = int(np.searchsorted(np.cumsum(values) / values.sum(), share) + 1)
    return vectors[:, :count] @ vectors[:, :count].T, count


def test_each_kind_keeps_the_fewest_principal_directions_of_its_unseen_states_that_explain_its_share(
        tiny_model_dir, synth_dir):
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    rows = [r for r in load_rows(synth_dir, "retain") if r.kind == "sc" and r.task != "Task2"]
    texts, tasks = [r.document for r in rows], [r.task for r in rows]
    cached = [cache_prefix(model, b, FIRST) for b in document_batches(texts, tokenizer, 512, 3)]
    with torch.no_grad():
        _, projectors = unseen_statistics(model, cached, tasks, FIRST, LAYER, (0.5, 0.9, 0.0))
        stories = states_of(model, tokenizer, [t for t, k in zip(texts, tasks, strict=True) if k == "Task1"])
        every = states_of(model, tokenizer, texts)
    expected, count = numpy_projector(stories, 0.5)
    assert 1 < count < 64  # a share, not every direction nor one
    np.testing.assert_allclose(projectors[TASKS.index("Task1")].numpy(), expected, atol=2e-4)
    # Task2 has no texts: the directions of all of them, at its own share
    np.testing.assert_allclose(projectors[TASKS.index("Task2")].numpy(), numpy_projector(every, 0.9)[0], atol=2e-4)
    assert not projectors[TASKS.index("Task3")].any()  # share 0: no direction kept, the goal is the mean


def test_the_goal_is_the_kinds_mean_plus_the_frozen_states_difference_along_the_kept_directions():
    generator = torch.Generator().manual_seed(0)
    frozen = torch.randn(3, 5, 8, generator=generator)
    means = torch.randn(len(TASKS), 8, generator=generator)
    basis = torch.linalg.qr(torch.randn(8, 2, generator=generator))[0]  # two orthonormal directions
    projectors = torch.stack([basis @ basis.T, torch.eye(8), torch.zeros(8, 8)])
    goal = kept_goal(means, projectors, frozen, torch.tensor([0, 1, 2]))
    difference = frozen[0] - means[0]
    expected = means[0] + (difference @ basis) @ basis.T  # each state's coordinates on the two directions
    torch.testing.assert_close(goal[0], expected)
    torch.testing.assert_close(goal[1], frozen[1])  # every direction kept: the state itself
    torch.testing.assert_close(goal[2], means[2].expand(5, 8))  # none kept: the mean, as --destination unseen


def run_config(reference, keep):
    return RMUConfig.from_dict({"layers": (2, 3, 4), "params": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
                                "steps": 1, "batch_size": 4, "max_length": 128, "adaptive": 3.0, "lr": 1e-3,
                                "loss.forget_tokens": "document", "loss.destination": "unseen",
                                "loss.misdirection": 30.0, "loss.destination_keep": keep,
                                "calibration.unseen": str(reference), "calibration.every": 1})


@pytest.mark.parametrize("keep", [None, (0.0, 0.0, 0.0)])
def test_keeping_every_direction_leaves_nothing_to_misdirect_and_keeping_none_is_the_mean(tiny_target, synth_dir,
                                                                                         tmp_path, keep):
    """At the first step the edited layers are the frozen ones, so the forget term is the distance from the frozen
    states to the goal: keeping (nearly) every direction of the unseen texts' states leaves (nearly) nothing of it;
    keeping none of any kind is the unseen destination's run, to the last digit."""
    reference = tmp_path / "reference.jsonl"  # unseen documents of every kind: another synthetic set's
    unseen = load_rows(synthesize(tmp_path / "unseen", seed=1, docs=4), "retain")
    reference.write_text("".join(json.dumps({"text": r.document, "task": r.task}) + "\n"
                                 for r in unseen if r.kind == "sc"))
    first = {}
    for name, value in (("mean", keep), ("all", (0.9999,) * 3)):
        result = unlearn(tiny_target, synth_dir, synth_dir, tmp_path / name, run_config(reference, value),
                         progress=False)
        first[name] = result.losses[0]["forget"]
    plain = unlearn(tiny_target, synth_dir, synth_dir, tmp_path / "plain", run_config(reference, None),
                    progress=False).losses[0]["forget"]
    assert first["mean"] == plain
    assert first["all"] < 0.05 * first["mean"], first


@pytest.mark.parametrize("keep, destination, message", [
    ((0.4,), "unseen", "one share of variance a task"),
    ((0.0, 1.0, 0.0), "unseen", "each 0 <= share < 1"),
    ((0.0, 0.4, 0.0), "control", "needs --destination unseen"),
])
def test_bad_shares_are_refused_naming_the_option(keep, destination, message):
    config = RMUConfig.from_dict({"layers": (2, 3, 4), "loss.destination_keep": keep, "loss.destination": destination})
    with pytest.raises(ValueError, match=message):
        config.validate(6)
