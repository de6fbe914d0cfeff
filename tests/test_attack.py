import json
import math
import re

import pytest
import torch
from tiny_settings import BY_DOCUMENT

from repedit.ablate import difference_direction, project_out, remove_component
from repedit.attack import Attack, AttackConfig, ablation_plan, recovered_fraction
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.cli import main as cli_main
from repedit.data import collate, document_examples, documents, load_rows
from repedit.layers import decoder_layers, run_prefix
from repedit.quantize import quantize_linear_weights, quantize_rows
from repedit.relearn import FinetuneConfig, split_documents
from repedit.rmu import RMUConfig
from repedit.unlearn import unlearn

FAST = dict(max_new_tokens=32, relearn_fraction=0.25)  # 3 of the 12 synthetic documents known, 9 probed


@pytest.fixture(scope="module")
def rmu_run(tiny_target, synth_dir, tmp_path_factory):
    """RMU of the tiny target, strong enough to forget (BY_DOCUMENT for 60 steps, no calibration)."""
    config = RMUConfig.from_dict({**BY_DOCUMENT, "steps": 60})
    out = tmp_path_factory.mktemp("attack") / "rmu"
    unlearn(tiny_target, synth_dir, synth_dir, out, config, progress=False)
    return out


def test_quantize_rows_matches_a_hand_computation():
    weight = torch.tensor([[1.0, -0.4, 0.26], [0.0, 0.0, 0.0], [-2.0, 0.3, 0.9]])
    # int4: 7 steps either side; row scales 1/7 and 2/7; -2.8 -> -3, 1.82 -> 2, 1.05 -> 1, 3.15 -> 3
    expected4 = torch.tensor([[7, -3, 2], [0, 0, 0], [-7, 1, 3]]) * torch.tensor([[1 / 7], [1.0], [2 / 7]])
    torch.testing.assert_close(quantize_rows(weight, 4), expected4)
    # int8: 127 steps; 0.26 * 127 = 33.02 -> 33
    assert quantize_rows(weight, 8)[0, 2].item() == pytest.approx(33 / 127)
    with pytest.raises(ValueError, match="--bits"):
        quantize_rows(weight, 3)


def test_quantization_rounds_every_linear_weight_and_leaves_embeddings(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    embedding = model.get_input_embeddings().weight.clone()
    down = model.model.layers[1].mlp.down_proj.weight.clone()
    count = quantize_linear_weights(model, 4)
    assert count == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert torch.equal(model.get_input_embeddings().weight, embedding)
    torch.testing.assert_close(model.model.layers[1].mlp.down_proj.weight, quantize_rows(down, 4))
    assert model.model.layers[1].mlp.down_proj.weight[0].unique().numel() <= 15  # 2 * 7 + 1 levels


def test_projection_hook_matches_a_hand_computation(tiny_model_dir):
    torch.testing.assert_close(remove_component(torch.tensor([[3.0, 4.0]]), torch.tensor([2.0, 0.0])),
                               torch.tensor([[0.0, 4.0]]))
    model = load_causal_lm(tiny_model_dir)
    ids = torch.randint(2, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    plain = model(ids, output_hidden_states=True).hidden_states  # plain[3]: the output of layer 2
    with project_out(model, [2], direction):
        ablated, _ = run_prefix(model, 3, input_ids=ids)  # what layer 3 receives: layer 2's output, hooked
        final = model(ids).logits
    unit = direction / direction.norm()
    torch.testing.assert_close(ablated, plain[3] - (plain[3] @ unit)[..., None] * unit)  # by hand
    assert (ablated @ unit).abs().max() < 1e-4 and not torch.allclose(final, model(ids).logits)
    torch.testing.assert_close(model(ids, output_hidden_states=True).hidden_states[6], plain[6])  # hook removed
    with pytest.raises(ValueError, match="--layers"), project_out(model, [9], direction):
        pass


def test_difference_direction_finds_a_planted_shift(tiny_model_dir, compact_tokenizer):
    original = load_causal_lm(tiny_model_dir)
    edited = load_causal_lm(tiny_model_dir)
    planted = torch.randn(original.config.hidden_size, generator=torch.Generator().manual_seed(2))
    planted /= planted.norm()

    # added to the MLP's output, the last thing layer 3 adds to the residual stream
    handle = decoder_layers(edited)[3].mlp.register_forward_hook(lambda _m, _a, output: output + 5.0 * planted)
    try:
        found = difference_direction(original, edited, compact_tokenizer, ["a short text", "another one here"], 3)
    finally:
        handle.remove()
    assert abs(found @ planted) == pytest.approx(1.0, abs=1e-4)


def test_split_documents_is_seeded_and_keeps_each_document_whole(synth_dir):
    rows = load_rows(synth_dir, "forget")
    known, probed = split_documents(rows, 0.25, seed=0)
    known_ids, probed_ids = {r.document_id for r in known}, {r.document_id for r in probed}
    assert len(known_ids) == 3 and len(probed_ids) == 9 and not known_ids & probed_ids
    assert len(known) + len(probed) == len(rows)
    assert split_documents(rows, 0.25, seed=0) == (known, probed)
    assert {r.document_id for r in split_documents(rows, 0.25, seed=1)[0]} != known_ids
    assert len({r.document_id for r in split_documents(rows, 0.01, seed=0)[0]}) == 1  # at least one known
    with pytest.raises(ValueError, match="--relearn-fraction"):
        split_documents(rows, 1.0, seed=0)
    # a count of documents known, whatever the set's size: the same documents as the fraction that gives it
    assert split_documents(rows, 0.1, seed=0, known=3) == (known, probed)
    with pytest.raises(ValueError, match=r"--relearn-known: 12, and the forget set holds 12 documents"):
        split_documents(rows, 0.1, seed=0, known=12)


def test_recovered_fraction_and_no_headroom():
    assert recovered_fraction(1.0, 0.2, 0.6, 0.02) == pytest.approx(0.5)
    assert recovered_fraction(0.04, 8.0, 4.02, 0.05) == pytest.approx(0.5)  # NLL: lower is the original's side
    assert recovered_fraction(0.5, 0.49, 0.9, 0.02) is None  # never divide by ~0


def test_ablation_plan_reads_an_rmu_run_and_falls_back_to_the_middle_layer(rmu_run, tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    assert ablation_plan(rmu_run, model, None) == ((2, 3, 4), 0)
    assert ablation_plan(tiny_model_dir, model, None) == ((3,), None)  # no unlearn.json: 6 layers, middle 3
    assert ablation_plan(tiny_model_dir, model, (1,)) == ((1,), None)
    with pytest.raises(ValueError, match="--layers"):
        ablation_plan(rmu_run, model, (7,))


def finite(values: dict) -> bool:
    return all(v is None or math.isfinite(v) for v in values.values())


def test_cli_runs_every_attack_on_an_rmu_run_and_writes_the_report(rmu_run, tiny_target, synth_dir, tmp_path,
                                                                   capsys):
    out = tmp_path / "attack"
    code = cli_main(["attack", "--model", str(rmu_run), "--reference", str(tiny_target), "--forget", str(synth_dir),
                     "--out", str(out), "--unseen", str(synth_dir / "mia_data" / "nonmember.jsonl"),
                     "--relearn-fraction", "0.25", "--steps", "5", "--max-new-tokens", "32"])
    assert code == 0
    report = json.loads((out / "attack.json").read_text())["unlearned"]
    assert set(report["attacks"]) == {"relearn", "benign", "int8", "int4", "ablate-control", "ablate-difference",
                                      "lens"}
    assert report["headroom"]["regurgitation"] > 0.3 and report["headroom"]["nll"] < -0.5  # RMU forgot
    for name, result in report["attacks"].items():
        assert finite(result["measures"]) and finite(result["recovered"]), name
    assert len(report["attacks"]["relearn"]["losses"]) == 5 and finite(report["attacks"]["relearn"]["unseen_nll"])
    assert report["attacks"]["ablate-control"]["layers"] == [2, 3, 4]
    assert (out / "attack.png").stat().st_size > 0
    assert "ablate-control" in (out / "attack.txt").read_text() and "recovered fraction" in capsys.readouterr().out


def test_cli_names_an_unknown_attack(tiny_model_dir, synth_dir, tmp_path, capsys):
    code = cli_main(["attack", "--model", str(tiny_model_dir), "--reference", str(tiny_model_dir), "--forget",
                     str(synth_dir), "--out", str(tmp_path), "--attacks", "relearn,prune"])
    assert code == 2 and "--attacks: ['prune']" in capsys.readouterr().err


def test_cli_refuses_more_known_documents_than_the_forget_set_leaves_to_probe(tiny_model_dir, synth_dir, tmp_path,
                                                                              capsys):
    code = cli_main(["attack", "--model", str(tiny_model_dir), "--reference", str(tiny_model_dir), "--forget",
                     str(synth_dir), "--out", str(tmp_path / "out"), "--attacks", "relearn", "--relearn-known", "12"])
    assert code == 2 and "--relearn-known: 12, and the forget set holds 12 documents" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_model_that_was_not_unlearned_has_no_headroom(tiny_target, synth_dir):
    config = AttackConfig(attacks=("quantize", "ablate", "lens"), bits=(8,), **FAST)
    report = Attack(tiny_target, synth_dir, config).run(tiny_target)
    assert all(abs(v) < 1e-6 for v in report["headroom"].values())
    for name, result in report["attacks"].items():
        assert all(v is None for v in result["recovered"].values()), name


def plant_output_shift(tiny_target, synth_dir, out):
    """The tiny target with its forget documents' NLL raised by gradient ascent on the LM head alone:
    forgetting that is only an output-layer shift, every layer below still as trained."""
    model = load_causal_lm(tiny_target)
    tokenizer = load_checkpoint_tokenizer(tiny_target)
    batch = collate(document_examples(documents(load_rows(synth_dir, "forget")), tokenizer), tokenizer.pad_token_id)
    head = model.get_output_embeddings().weight
    optimizer = torch.optim.AdamW([head], lr=1e-2)
    for _ in range(20):
        (-model(**batch).loss).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save_untrained(tiny_target, out):
    """The tiny target's shape and tokenizer with fresh random weights: the knowledge was never there."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_target)).save_pretrained(out)
    load_checkpoint_tokenizer(tiny_target).save_pretrained(out)
    return out


def test_relearning_brings_back_an_output_shift_but_not_knowledge_that_is_gone(tiny_target, synth_dir, tmp_path):
    shifted = plant_output_shift(tiny_target, synth_dir, tmp_path / "shifted")
    gone = save_untrained(tiny_target, tmp_path / "gone")
    config = AttackConfig(attacks=("relearn",), finetune=FinetuneConfig(lr=3e-3), **FAST)
    # The untrained model as the oracle: the control is the same relearning run on it.
    relearn = Attack(tiny_target, synth_dir, config, oracle=gone).run(shifted)["attacks"]["relearn"]
    hidden, removed = relearn["recovered"], relearn["oracle"]["recovered"]
    assert hidden["regurgitation"] > removed["regurgitation"] + 0.25
    assert hidden["nll"] > removed["nll"] + 0.25
    assert removed["regurgitation"] < 0.1 and removed["qa"] < 0.1


def test_summary_keeps_every_cell_apart_when_fractions_are_negative():
    """Each method's row splits into one cell per attack, whose numbers read back as given (negative,
    n/a and a missing attack included)."""
    from repedit.attack_report import format_summary

    given = {"relearn": {"regurgitation": -0.123, "qa": -0.098, "nll": -0.069},
             "int4": {"regurgitation": 0.008, "qa": None, "nll": -0.004}}
    reports = {"one": {"attacks": {name: {"recovered": values} for name, values in given.items()}},
               "two": {"attacks": {"relearn": {"recovered": given["relearn"]}}}}
    lines = format_summary(reports).splitlines()
    assert lines[1].split() == ["method", "relearn", "int4"]
    one, two = (line.split() for line in lines[2:])
    assert one[0] == "one" and two == ["two", "-0.123/-0.098/-0.069", "-"]
    for cell, values in zip(one[1:], given.values(), strict=True):
        assert re.findall(r"n/a|-?\d+\.\d+", cell) == ["n/a" if v is None else f"{v:.3f}" for v in values.values()]
