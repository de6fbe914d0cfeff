import json

import pytest
import torch

from probes import (
    Activations,
    LayerShift,
    LensResult,
    NormStats,
    ProbeResult,
    ablate,
    collect,
    cosine_to,
    layer_shift,
    lens_logits,
    logit_lens,
    norm_stats,
    pool,
    probe_layers,
    rmu_sequences,
    steer,
    suggest_rmu,
    token_norm_stats,
)
from probes.logit_lens import LensRow, answer_token
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import Row, batches, documents, encode_example, load_rows
from repedit.layers import capture_outputs, run_prefix


def _planted(layer: int, direction: torch.Tensor, count: int = 40, layers: int = 5, seed: int = 0):
    """Two sets of pooled states, separable only at ``layer``, along ``direction``."""
    generator = torch.Generator().manual_seed(seed)
    dim = direction.shape[0]

    def states(sign: float) -> Activations:
        noise = torch.randn(layers, count, dim, generator=generator)
        noise[layer] += sign * 2.5 * direction
        return Activations(tuple(range(layers)), noise, torch.arange(count), "mean")

    return states(1.0), states(-1.0)


def test_probe_finds_the_planted_layer_and_direction(tmp_path):
    direction = torch.randn(16, generator=torch.Generator().manual_seed(1))
    direction = direction / direction.norm()
    positive, negative = _planted(3, direction)
    result = probe_layers(positive, negative, "planted", "pos", "neg")
    best = result.best()
    assert best.layer == 3 and best.accuracy > 0.95
    assert max(p.accuracy for p in result.layers if p.layer != 3) < 0.8
    assert torch.dot(result.direction(3), direction) > 0.9  # points from negative towards positive
    assert best.gap == pytest.approx(5.0, rel=0.2)  # class means lie 2 x 2.5 apart along it
    assert result.earliest(tolerance=0.02).layer == 3
    assert ProbeResult.load(result.save(tmp_path / "probe.json")) == result


def test_token_states_of_one_text_stay_in_one_fold():
    """Tokens of one document are near-copies: a split by token would leak and score ~1.0."""
    generator = torch.Generator().manual_seed(0)
    docs = torch.randn(1, 12, 16, generator=generator)  # 12 documents, labels unrelated to their content
    tokens = docs.repeat_interleave(5, dim=1) + 0.01 * torch.randn(1, 60, 16, generator=generator)
    source = torch.arange(12).repeat_interleave(5)
    positive = Activations((0,), tokens[:, :30], source[:30], "token")
    negative = Activations((0,), tokens[:, 30:], source[30:] - 6, "token")
    assert probe_layers(positive, negative, "leak check").best().accuracy < 0.9


def test_pooling_ignores_padding():
    hidden = torch.arange(2 * 2 * 3 * 2, dtype=torch.float32).reshape(2, 2, 3, 2)  # (L, B, T, D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    mean, rows = pool(hidden, mask, "mean")
    torch.testing.assert_close(mean[:, 1], hidden[:, 1, :2].mean(1))
    last, _ = pool(hidden, mask, "last")
    torch.testing.assert_close(last[:, 0], hidden[:, 0, 2])
    torch.testing.assert_close(last[:, 1], hidden[:, 1, 1])
    tokens, source = pool(hidden, mask, "token")
    assert tokens.shape == (2, 5, 2) and source.tolist() == [0, 0, 0, 1, 1] and rows.tolist() == [0, 1]


def test_norm_statistics_match_a_hand_computation(tmp_path):
    generator = torch.Generator().manual_seed(0)
    masks = [torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]), torch.tensor([[1, 1]])]
    parts = [(torch.randn(2, *mask.shape, 5, generator=generator), mask) for mask in masks]  # (L, B, T, D)
    stats = token_norm_stats(parts, [4, 7])
    for k in range(2):
        norms = [hidden[k, b, t].norm().item() for hidden, mask in parts
                 for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]]
        assert stats.mean[k] == pytest.approx(sum(norms) / len(norms))
        assert stats.std[k] == pytest.approx(torch.tensor(norms).std(unbiased=False).item())
    assert stats.tokens == 10
    assert stats.coeff(beta=5.0, layer=7) == pytest.approx(5.0 * stats.mean[1])
    assert NormStats.load(stats.save(tmp_path / "norms.json")) == stats


def test_suggested_coeff_agrees_with_adaptive_rmu(tiny_model_dir, synth_dir):
    """``coeff`` uses the numbers ``repedit.step_cache`` computes for ``--adaptive``, on the same tokens."""
    from repedit.step_cache import cached_passes, mean_norm

    model, tokenizer = load_causal_lm(tiny_model_dir), load_checkpoint_tokenizer(tiny_model_dir)
    rows = load_rows(synth_dir, "forget")
    examples = [encode_example(tokenizer, row.input, row.output, 64) for row in rows]
    forget_only = batches(examples, 4, tokenizer.pad_token_id)  # every row a forget row, each batch in one pass
    expected = mean_norm(sum(cached_passes(model, b, len(b["input_ids"]), 1, 2, 4)[1] for b in forget_only))
    stats = norm_stats(model, rmu_sequences(rows, tokenizer, 64), tokenizer.pad_token_id, layers=[2, 4])
    assert stats.mean[1] == pytest.approx(expected, rel=1e-5)
    assert stats.coeff(5.0, 4) == pytest.approx(5.0 * expected, rel=1e-5)


@pytest.mark.parametrize("via", ["hooks", "nnsight"])
def test_collection_equals_the_layer_outputs(tiny_model_dir, synth_dir, via):
    if via == "nnsight":
        pytest.importorskip("nnsight")  # the probes extra
    model, tokenizer = load_causal_lm(tiny_model_dir), load_checkpoint_tokenizer(tiny_model_dir)
    texts = documents(load_rows(synth_dir, "forget"))[:3]
    acts = collect(model, tokenizer, texts, pooling="token", batch_size=2, via=via)
    assert acts.layers == tuple(range(6))
    for n, text in enumerate(texts):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with capture_outputs(model, range(6)) as hidden:
            reference = model(ids, output_hidden_states=True).hidden_states
        for layer in range(6):
            torch.testing.assert_close(acts.at(layer)[acts.source == n], hidden[layer][0])
            if layer < 5:  # transformers reports the last layer after the final norm
                torch.testing.assert_close(acts.at(layer)[acts.source == n], reference[layer + 1][0])
    pooled = collect(model, tokenizer, texts, layers=[1, 4], pooling="mean", batch_size=2, via=via)
    for n in range(3):
        torch.testing.assert_close(pooled.at(4)[n], acts.at(4)[acts.source == n].mean(0))
    with pytest.raises(ValueError, match="out of range"):
        collect(model, tokenizer, texts, layers=[6])


def _qa_row(answer: str) -> Row:
    return Row(id="x-qa0", input="Where did Marta Kessler study", output=answer, task="Task1", kind="qa",
               split="forget")


def test_logit_lens_finds_the_layer_where_a_forced_answer_appears(tiny_model_dir, tmp_path):
    model, tokenizer = load_causal_lm(tiny_model_dir), load_checkpoint_tokenizer(tiny_model_dir)
    row = _qa_row("Marta")
    token = answer_token(tokenizer, row.output)
    plain = logit_lens(model, tokenizer, [row])
    ids = torch.tensor([tokenizer(row.input)["input_ids"]])
    last = model(ids).logits[0, -1]  # the last layer's lens is the model's own next-token prediction
    torch.testing.assert_close(lens_logits(model, collect(model, tokenizer, [row.input], layers=[5],
                                                          pooling="last").states[0, 0]), last)
    assert plain.rows[0].ranks[-1] == int((last > last[token]).sum())
    assert min(plain.rows[0].ranks) > 0  # never top without help
    readout = model.lm_head.weight[token].detach()
    with steer(model, 2, readout - readout.mean(), scale=1e3):  # write the answer into layer 3's input
        forced = logit_lens(model, tokenizer, [row])
    assert forced.rows[0].ranks[:3] == plain.rows[0].ranks[:3]  # layer 2 is read before the steering hook
    assert forced.rows[0].ranks[3:] == [0, 0, 0]
    assert forced.rows[0].emerges(forced.layers) == 3
    summary = forced.summary()["forget/Task1"]
    assert summary["emerges"] == 3 and summary["answered"] == 1.0
    assert summary["hit_rate"] == [0, 0, 0, 1, 1, 1]
    assert LensResult.load(forced.save(tmp_path / "lens.json")) == forced


def test_steering_changes_outputs_inside_and_restores_them_exactly(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    ids = torch.tensor([[5, 9, 23, 41, 7]])
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    before = model(ids).logits
    hidden_before, _ = run_prefix(model, 3, input_ids=ids)
    with steer(model, 2, direction, scale=2.0):
        steered = model(ids).logits
        hidden_steered, _ = run_prefix(model, 3, input_ids=ids)
    assert not torch.allclose(steered, before)
    torch.testing.assert_close(hidden_steered, hidden_before + 2.0 * direction)
    assert torch.equal(model(ids).logits, before)

    with ablate(model, [2], direction):
        hidden_ablated, _ = run_prefix(model, 3, input_ids=ids)
    assert (hidden_ablated @ (direction / direction.norm())).abs().max() < 1e-4

    with pytest.raises(RuntimeError, match="boom"), steer(model, [1, 4], direction, scale=5.0):
        raise RuntimeError("boom")
    assert torch.equal(model(ids).logits, before)
    assert all(not layer._forward_hooks for layer in model.model.layers)


def test_steering_acts_inside_generate(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    ids = torch.tensor([[5, 9, 23, 41, 7]])
    settings = dict(max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids))
    before = model.generate(ids, **settings)
    readout = model.lm_head.weight[77].detach()
    with steer(model, 3, readout - readout.mean(), scale=1e3):
        steered = model.generate(ids, **settings)
    assert steered[0, ids.shape[1]:].tolist() == [77] * 8
    assert torch.equal(model.generate(ids, **settings), before)


def test_shift_and_cosine(tmp_path):
    states = torch.randn(2, 4, 8)
    before = Activations((0, 1), states, torch.arange(4), "mean")
    same = layer_shift(before, before)
    assert same.cosine == pytest.approx([1.0, 1.0]) and same.shift == [0.0, 0.0]
    moved = layer_shift(before, Activations((0, 1), states * torch.tensor([1.0, -1.0])[:, None, None],
                                            torch.arange(4), "mean"))
    assert moved.cosine == pytest.approx([1.0, -1.0]) and moved.relative == pytest.approx([0.0, 2.0])
    assert LayerShift.load(moved.save(tmp_path / "shift.json")) == moved
    u = torch.zeros(8)
    u[0] = 1.0
    aligned = Activations((0,), u.repeat(1, 3, 1) * 4.0, torch.arange(3), "mean")
    assert cosine_to(aligned, u) == pytest.approx([1.0])


def test_suggestion_uses_separability_and_answer_emergence():
    def probe(accuracies):
        return ProbeResult.from_dict({"name": "forget vs retain", "positive": "forget", "negative": "retain",
                                      "folds": 2, "layers": [{"layer": k, "accuracy": a, "accuracy_std": 0.0,
                                                              "direction": [1.0], "gap": 1.0}
                                                             for k, a in enumerate(accuracies)]})

    norms = NormStats(list(range(8)), [float(k + 1) for k in range(8)], [0.1] * 8, 100)
    separable_at_4 = probe([0.5, 0.6, 0.7, 0.8, 0.99, 1.0, 1.0, 1.0])
    suggestion = suggest_rmu(separable_at_4, norms, beta=2.0)
    assert suggestion.layers == [2, 3, 4] and suggestion.coeff == pytest.approx(2.0 * 5.0)
    assert suggestion.cli_options() == "--layers 2,3,4 --coeff 10"
    ranks = [5, 4, 3, 2, 1, 1, 0, 0]
    lens = LensResult(list(range(8)), [LensRow("a", "Task1", "forget", 3, ranks, [0.0] * 8)])
    assert suggest_rmu(separable_at_4, norms, lens=lens).target_layer == 5  # answers readable from layer 6
    assert suggest_rmu(probe([1.0] * 8), norms).layers == [0, 1, 2]  # never below L-2 = 0


def test_probe_command_writes_summary_and_plots(tiny_model_dir, synth_dir, tmp_path):
    from repedit.cli import main
    from repedit.rmu import Loss, RMUConfig
    from repedit.unlearn import unlearn

    config = RMUConfig(layers=(2, 3, 4), steps=4, batch_size=4, max_length=64, adaptive=5.0, loss=Loss(alpha=10.0),
                       lr=1e-2)
    edited = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "edited", config, progress=False)
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(tiny_model_dir), "--data", str(synth_dir),
                 "--mia", str(synth_dir / "mia_data"), "--compare", str(edited.output_dir), "--out", str(out),
                 "--max-length", "64"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["probes"]) == {"forget vs retain", "members vs nonmembers",
                                      "edited vs original (forget)", "edited vs original (retain)"}
    for name in ("accuracy.png", "norms.png", "logit_lens.png", "shift.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    below, above = summary["shift"]["forget"]["cosine"][1], summary["shift"]["forget"]["cosine"][4]
    assert below == pytest.approx(1.0) and above < 0.999  # layers under the first edited one never change
    probe = ProbeResult.load(out / "probe_forget_vs_retain.json")
    assert len(probe.direction(0)) == 64
    assert summary["suggestion"]["options"].startswith("--layers ")
    assert main(["probe", "--model", str(tiny_model_dir), "--data", str(tmp_path / "nowhere"),
                 "--out", str(out)]) == 2
