import json
import math

import pytest
import torch
from oracles import assert_complete_checkpoint, token_nll

from repedit.baseline_configs import GradDiffConfig, NPOConfig, SUGDConfig
from repedit.baselines import (
    Rows,
    answer_nll,
    check_memory,
    graddiff_objective,
    npo_objective,
    trainable_parameters,
)
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer, load_tensors, weight_map
from repedit.cli import main as cli_main
from repedit.data import batches, load_rows, training_examples
from repedit.methods import config_from_dict
from repedit.schedules import chunk_schedule, epoch_schedule
from repedit.unlearn import unlearn


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU spinning threads
    made a training step ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# 20 steps each under which the tiny target (40 forget, 40 retain rows) visibly forgets in seconds. Its
# rows share templates, so forgetting spills over; NPO needs a heavier retain term to hold it.
FAST = {
    "graddiff": GradDiffConfig(lr=1e-3, epochs=4, batch_size=8, max_length=96),
    "npo": NPOConfig(lr=1e-3, epochs=4, batch_size=8, max_length=96, retain_weight=3.0),
    "sugd": SUGDConfig(lr=1.5e-3, epochs=1, batch_size=2, chunk_size=8, max_length=96),
}


def mean_answer_nll(model_dir, rows) -> float:
    """Mean over rows of the mean NLL of the answer tokens, as the baselines train it."""
    tokenizer = load_checkpoint_tokenizer(model_dir)
    model = load_causal_lm(model_dir)
    with torch.no_grad():
        values = [answer_nll(model, b)[0] for b in batches(training_examples(rows, tokenizer, 96), 16,
                                                             tokenizer.pad_token_id)]
    return torch.cat(values).mean().item()


def test_chunk_schedule_trains_chunk_by_chunk_with_cyclic_retain_rows():
    # 5 forget rows in chunks of 2, 3 retain rows each from a retain set of 4, 2 epochs, 1 forget row a step.
    plan = chunk_schedule(n_forget=5, n_retain=4, chunk_size=2, retain_ratio=3, batch_size=1, epochs=2)
    assert [(s.chunk, s.epoch, s.forget, s.retain) for s in plan] == [
        (0, 0, [0], [0, 1, 2]), (0, 0, [1], [3, 0, 1]),
        (0, 1, [0], [0, 1, 2]), (0, 1, [1], [3, 0, 1]),  # a chunk's rows keep their retain rows
        (1, 0, [2], [2, 3, 0]), (1, 0, [3], [1, 2, 3]),  # the cycle continues across chunks
        (1, 1, [2], [2, 3, 0]), (1, 1, [3], [1, 2, 3]),
        (2, 0, [4], [0, 1, 2]), (2, 1, [4], [0, 1, 2]),  # a short last chunk
    ]
    two = chunk_schedule(n_forget=4, n_retain=100, chunk_size=4, retain_ratio=7, batch_size=2, epochs=1)
    assert [(s.forget, s.retain) for s in two] == [([0, 1], list(range(14))), ([2, 3], list(range(14, 28)))]


def test_epoch_schedule_sees_every_forget_row_once_an_epoch():
    plan = epoch_schedule(n_forget=5, n_retain=3, batch_size=2, epochs=3, seed=1)
    for epoch in range(3):
        rows = [i for s in plan if s.epoch == epoch for i in s.forget]
        assert sorted(rows) == list(range(5))
    assert [i for s in plan for i in s.retain] == [i % 3 for i in range(15)]  # cyclic, as many as forget
    assert plan == epoch_schedule(5, 3, 2, 3, seed=1) and plan != epoch_schedule(5, 3, 2, 3, seed=2)


@pytest.mark.parametrize("config", [GradDiffConfig(params=("mlp.down_proj",), last_layers=2),
                                    NPOConfig(beta=0.5), SUGDConfig(layers=(1, 2), chunk_size=16)])
def test_config_json_round_trip(config):
    values = json.loads(config.to_json())
    assert values["method"] == config.method
    assert config_from_dict(values) == config


def test_defaults_are_the_published_ones():
    assert (GradDiffConfig().lr, GradDiffConfig().batch_size, GradDiffConfig().epochs) == (1e-5, 32, 10)
    assert NPOConfig().beta == 0.1 and NPOConfig().retain_weight == 1.0
    sugd = SUGDConfig()
    assert (sugd.chunk_size, sugd.retain_ratio, sugd.retain_weight, sugd.lr) == (32, 7, 0.5, 1e-5)
    assert sugd.last_layers == 8 and sugd.layers is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method": "npo", "coeff": 6.5}, "npo: option(s) coeff (--coeff) do not apply to npo"),
        ({"method": "graddiff", "betta": 0.1}, "option(s) betta (--betta) do not apply to graddiff"),
        ({"method": "graddiff", "beta": 0.1}, "beta (--beta) do not apply to graddiff"),
        ({"method": "simnpo"}, "--method: 'simnpo' is not one of ['rmu', 'graddiff', 'npo', 'sugd']"),
    ],
)
def test_options_of_other_methods_are_refused(values, message):
    with pytest.raises(ValueError) as error:
        config_from_dict(values)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (GradDiffConfig(layers=(1, 9)), "--layers: layer(s) [9] out of range"),
        (SUGDConfig(chunk_size=0), "--chunk-size: must be at least 1"),
        (NPOConfig(beta=0.0), "--beta: must be positive"),
        (GradDiffConfig(steps=0), "--steps: must be at least 1"),
    ],
)
def test_bad_values_name_the_option(config, message):
    with pytest.raises(ValueError) as error:
        config.validate(num_hidden_layers=4)
    assert message in str(error.value)


def test_trained_weights_are_chosen_by_layer_and_module_name(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    layers = model.config.num_hidden_layers
    assert trainable_parameters(model, GradDiffConfig()).keys() == dict(model.named_parameters()).keys()
    top = trainable_parameters(model, SUGDConfig(last_layers=2))
    assert top and {n.split(".")[2] for n in top} == {str(layers - 2), str(layers - 1)}
    assert len(trainable_parameters(model, SUGDConfig(last_layers=100))) == len(
        trainable_parameters(model, SUGDConfig(layers=tuple(range(layers)))))  # fewer layers than asked: all
    named = trainable_parameters(model, NPOConfig(layers=(1,), params=("mlp.down_proj",)))
    assert list(named) == ["model.layers.1.mlp.down_proj.weight"]


def test_training_that_cannot_fit_is_refused_before_it_starts(tiny_model_dir):
    weights = dict(load_causal_lm(tiny_model_dir, torch.bfloat16).named_parameters())
    need = 14 * sum(p.numel() for p in weights.values())  # bf16 -> float32 master, gradient, AdamW moments
    check_memory("graddiff", weights, free_bytes=need)
    check_memory("graddiff", weights, free_bytes=None)  # CPU: not checked
    with pytest.raises(ValueError, match="graddiff: training .* GiB more GPU memory .*--last-layers"):
        check_memory("graddiff", weights, free_bytes=need - 1)


@pytest.mark.parametrize("method", ["graddiff", "npo", "sugd"])
def test_each_method_raises_forget_nll_and_keeps_retain_nll(tiny_target, synth_dir, tmp_path, method):
    forget_rows, retain_rows = load_rows(synth_dir, "forget"), load_rows(synth_dir, "retain")
    before = mean_answer_nll(tiny_target, forget_rows), mean_answer_nll(tiny_target, retain_rows)
    result = unlearn(tiny_target, synth_dir, synth_dir, tmp_path / "out", FAST[method], progress=False)
    after = mean_answer_nll(result.output_dir, forget_rows), mean_answer_nll(result.output_dir, retain_rows)
    print(f"{method}: forget NLL {before[0]:.3f} -> {after[0]:.3f}, "
          f"retain NLL {before[1]:.3f} -> {after[1]:.3f}, {len(result.losses)} steps, "
          f"train {result.timings['train']:.1f} s")
    forget_rise, retain_rise = after[0] - before[0], after[1] - before[1]
    assert forget_rise > 0.5  # forgotten: answers at least 1.6 times less likely per token
    assert retain_rise < forget_rise / 3  # kept: retain answers lose less than a third of that
    assert len(result.losses) == len(FAST[method].schedule(len(forget_rows), len(retain_rows)))


def test_answer_nll_equals_the_whole_logits_nll_and_its_gradients(tiny_model_dir, synth_dir):
    """The LM head run on the answer tokens alone gives what the whole logits give (the full forward's
    ``logits``, every position through the head), on padded rows of different lengths: the same NLL of each
    row and the same gradient in every weight."""
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    rows = load_rows(synth_dir / "forget.jsonl")[:6]
    batch = next(iter(batches(training_examples(rows, tokenizer, 96), 6, tokenizer.pad_token_id)))
    lengths = batch["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1  # padding present
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    model.requires_grad_(True)
    nll, tokens = answer_nll(model, batch)
    nll.sum().backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = token_nll(logits, batch["labels"])
    expected.sum().backward()
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-5)
    assert tokens.tolist() == (batch["labels"][:, 1:] != -100).sum(dim=1).tolist()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_objectives_follow_the_published_formulas():
    # Summed log-likelihoods: the step's row 0 is forget row 1 (-1 x 4 = -4), its row 1 forget row 0 (-6).
    forget = Rows(nll=torch.tensor([1.0, 2.0]), tokens=torch.tensor([4, 3]), positions=torch.tensor([1, 0]))
    retain = Rows(nll=torch.tensor([0.5, 0.7]), tokens=torch.tensor([2, 2]), positions=torch.tensor([0, 1]))
    graddiff = graddiff_objective(retain_weight=0.5)(forget, retain)
    assert graddiff["loss"].item() == pytest.approx(-1.5 + 0.5 * 0.6)

    def log_sigmoid(x: float) -> float:
        return -math.log1p(math.exp(-x))

    unchanged = npo_objective(0.1, 1.0, frozen_logps=torch.tensor([-6.0, -4.0]))(forget, retain)
    assert unchanged["npo"].item() == pytest.approx(2 / 0.1 * math.log(2))  # log ratio 0 on both rows
    # Forget row 0 was at -4 in the reference, now at -6: log ratio -2, and its NPO term shrinks.
    moved = npo_objective(0.1, 1.0, frozen_logps=torch.tensor([-4.0, -4.0]))(forget, retain)
    expected = -(2 / 0.1) * (log_sigmoid(0.0) + log_sigmoid(-0.1 * -2.0)) / 2
    assert moved["npo"].item() == pytest.approx(expected) and moved["npo"] < unchanged["npo"]
    assert moved["loss"].item() == pytest.approx(expected + 0.6)


def test_npo_reference_is_the_initial_model(tiny_model_dir, synth_dir, tmp_path):
    """At the first step log p_theta = log p_ref on every row, so the NPO term is (2 / beta) log 2."""
    config = NPOConfig(steps=1, batch_size=4, max_length=64, beta=0.5)
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    assert result.losses[0]["npo"] == pytest.approx(2 / 0.5 * math.log(2), rel=1e-4)


def test_only_the_trained_tensors_are_saved(tiny_model_dir, synth_dir, tmp_path):
    config = SUGDConfig(last_layers=2, params=("mlp.down_proj", "self_attn.o_proj"), steps=2, lr=1e-3,
                        max_length=64, retain_ratio=1)
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    changed = {name for name, shard in weight_map(tiny_model_dir).items()
               if not torch.equal(load_tensors(tiny_model_dir / shard, {name})[name],
                                  load_tensors(result.output_dir / shard, {name})[name])}
    modules = ("mlp.down_proj", "self_attn.o_proj")
    assert changed == {f"model.layers.{i}.{m}.weight" for i in (4, 5) for m in modules}
    record = json.loads((result.output_dir / "unlearn.json").read_text())
    assert record["config"] == json.loads(config.to_json()) and record["steps"] == 2


def test_time_budget_leaves_a_valid_checkpoint(tiny_model_dir, synth_dir, tmp_path):
    config = GradDiffConfig(epochs=1000, batch_size=4, max_length=64, last_layers=1, time_budget=5.0)
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    planned = 1000 * len(load_rows(synth_dir, "forget")) // 4
    assert result.stopped == "time budget" and 0 < len(result.losses) < planned
    assert json.loads((result.output_dir / "unlearn.json").read_text())["steps"] == len(result.losses)
    assert_complete_checkpoint(result.output_dir, tiny_model_dir)


def test_cli_runs_npo_end_to_end_and_refuses_rmu_options(tiny_model_dir, synth_dir, tmp_path, capsys):
    common = ["unlearn", "--model", str(tiny_model_dir), "--forget", str(synth_dir), "--retain",
              str(synth_dir), "--method", "npo"]
    code = cli_main([*common, "--out", str(tmp_path / "out"), "--steps", "3", "--batch-size", "4", "--lr",
                     "1e-4", "--max-length", "64", "--layers", "4,5", "--log", str(tmp_path / "log.jsonl")])
    assert code == 0
    assert "npo: 3 steps (steps)" in capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "unlearn.json").read_text())
    assert record["method"] == "npo" and record["config"]["layers"] == [4, 5]
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3] and {"npo", "retain_nll", "loss"} <= lines[0].keys()
    assert_complete_checkpoint(tmp_path / "out", tiny_model_dir)

    assert cli_main([*common, "--out", str(tmp_path / "out2"), "--coeff", "6.5"]) == 2
    assert "coeff (--coeff) do not apply to npo" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
