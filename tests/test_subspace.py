import json
import statistics
from itertools import pairwise

import numpy as np
import pytest
import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import TASKS, load_rows
from repedit.document_scores import cache_documents, document_batches
from repedit.rmu import RMUConfig, cache_prefix
from repedit.runtime import UnlearnResult
from repedit.subspace import clearing_shares, kept_goal, kind_statistics
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
        projectors = kind_statistics(model, cached, tasks, FIRST, LAYER, directions=True).projectors((0.5, 0.9, 0.0))
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


def goal_nll_oracle(model, tokenizer, text, mean, projector):
    """``model(ids, labels=ids).loss`` of one text with every token's h_4 replaced, through a hook of this test's own,
    by ``mean + (h - mean) @ projector`` (numpy's mean and projector)."""
    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        goal = (mean + (hidden.double() - mean) @ projector).to(hidden.dtype)
        return (goal, *output[1:]) if isinstance(output, tuple) else goal

    handle = model.model.layers[LAYER].register_forward_hook(hook)
    try:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        return model(ids, labels=ids).loss.item()
    finally:
        handle.remove()


def test_each_kind_keeps_the_largest_share_whose_goal_clears_its_level_by_the_margin(tiny_target, synth_dir):
    """``clearing_shares`` against the same choice made from full forward passes with h_4 written at the goal of
    numpy's mean and projector: how far past its level each share takes each kind's forget documents (median NLL),
    and, at a margin between two of those values, the largest share that clears it."""
    model = load_causal_lm(tiny_target, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_target)
    unseen = [r for r in load_rows(synth_dir, "retain") if r.kind == "sc"]
    forget = [r for r in load_rows(synth_dir, "forget") if r.kind == "sc"]
    texts, tasks = [r.document for r in unseen], [r.task for r in unseen]
    levels = torch.tensor([4.0, 5.0, 6.0])
    shares = (0.5, 0.3, 0.1)
    with torch.no_grad():
        cached = [cache_prefix(model, b, FIRST) for b in document_batches(texts, tokenizer, 512, 3)]
        kinds = kind_statistics(model, cached, tasks, FIRST, LAYER, directions=True)
        documents = cache_documents(model, [r.document for r in forget], tokenizer, 512, 2, FIRST)
        oracle: dict[str, dict[float, float]] = {}
        for task in dict.fromkeys(r.task for r in forget):
            states = states_of(model, tokenizer, [t for t, k in zip(texts, tasks, strict=True) if k == task])
            mean = torch.tensor(states.mean(axis=0))
            oracle[task] = {share: statistics.median(
                goal_nll_oracle(model, tokenizer, r.document, mean, torch.tensor(numpy_projector(states, share)[0]))
                for r in forget if r.task == task) - levels[TASKS.index(task)].item() for share in shares}
        values = sorted(v for by_share in oracle.values() for v in by_share.values())
        low, high = max(pairwise(values), key=lambda pair: pair[1] - pair[0])  # the widest gap
        margin = (low + high) / 2
        chosen, past = clearing_shares(model, documents, [r.task for r in forget], FIRST, LAYER, kinds, levels,
                                       margin, shares)
    for task, by_share in past.items():  # the shares it read before it stopped: the largest first
        assert list(by_share) == sorted(shares, reverse=True)[: len(by_share)]
        for share, value in by_share.items():
            assert value == pytest.approx(oracle[task][share], abs=2e-3), (task, share)
    expected = tuple(max((s for s, v in oracle.get(task, {}).items() if v >= margin), default=0.0) for task in TASKS)
    assert chosen == expected
    assert any(0.0 < share < max(shares) for share in chosen), chosen  # the margin splits some kind's shares


def test_a_run_keeps_the_shares_its_margin_chose_as_if_given_them(tiny_target, synth_dir, tmp_path):
    """``--destination-keep-margin``: the run records each kind's share and how far past its level each share tried
    took its forget documents, and its first step's forget term is that of a run given those shares. The margin is
    half the farthest any share reaches (read first with one no share clears, so every share is tried), so that some
    kind keeps directions on whatever CPU trained the tiny target: at a fixed 0.3 none did on an AMD EPYC."""
    reference = tmp_path / "reference.jsonl"
    unseen = load_rows(synthesize(tmp_path / "unseen", seed=1, docs=4), "retain")
    reference.write_text("".join(json.dumps({"text": r.document, "task": r.task}) + "\n"
                                 for r in unseen if r.kind == "sc"))

    def kept_shares(margin: float, name: str) -> tuple[UnlearnResult, dict]:
        config = run_config(reference, None)
        config.loss.destination_keep_margin = margin
        result = unlearn(tiny_target, synth_dir, synth_dir, tmp_path / name, config, progress=False)
        return result, json.loads((tmp_path / name / "unlearn.json").read_text())["kept_shares"]

    _, every = kept_shares(1e6, "every")
    farthest = max(v for past in every["goal_past_level"].values() for v in past.values())
    assert farthest > 0, every  # some share takes some kind's forget documents past its level
    chosen, record = kept_shares(farthest / 2, "margin")
    shares = tuple(record["shares"][task] for task in TASKS)
    for task, share in record["shares"].items():  # the largest tried past the level by the margin, or 0 where none is
        past = record["goal_past_level"][task]
        assert share == max((float(s) for s, v in past.items() if v >= farthest / 2), default=0.0)
    assert any(shares), record  # some kind keeps directions: the runs below differ from the mean's
    given = unlearn(tiny_target, synth_dir, synth_dir, tmp_path / "given", run_config(reference, shares),
                    progress=False)
    assert chosen.losses[0]["forget"] == given.losses[0]["forget"]


@pytest.mark.parametrize("values, message", [
    ({"loss.destination_keep_margin": 2.0, "loss.destination": "control"},
     "--destination-keep-margin: needs --destination unseen"),
    ({"loss.destination_keep_margin": 2.0, "loss.destination_keep": (0.0, 0.4, 0.0), "loss.destination": "unseen"},
     "--destination-keep-margin: chooses the shares --destination-keep gives"),
    ({"loss.destination_keep_margin": float("nan"), "loss.destination": "unseen"},
     "--destination-keep-margin: nan is not a finite number"),
])
def test_a_bad_margin_is_refused_naming_the_option(values, message):
    config = RMUConfig.from_dict({"layers": (2, 3, 4), **values})
    with pytest.raises(ValueError, match=message):
        config.validate(6)
