"""The repair above the edit (``--repair-rounds``, ``repedit.repair``): the MLPs of the layers above L trained toward
the frozen model's next-token distributions on the anchor's texts and the retain documents, the edit run again from
the repaired model; what it is for: the kind's unseen text moved less by the edit, the forget documents still
forgotten."""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import GENERAL_TEXT, SHARED_DATA, needs_shared, save_perturbed
from oracles import assert_complete_checkpoint
from tiny_settings import FAST, tasked_reference

from repedit.calibration import unseen_texts
from repedit.checkpoint import checkpoint_tensors, load_causal_lm, load_checkpoint_tokenizer, save_edited, weight_map
from repedit.curves import curves_figure
from repedit.repair import MLP, distil_above, repair_batches
from repedit.rmu import RMUConfig
from repedit.unlearn import unlearn

CPU = torch.device("cpu")


def mean_kl(frozen_dir, model_dir, texts) -> float:
    """KL(frozen || model) a predicted token over ``texts``, each text on its own: the oracle of the repair's loss."""
    tokenizer = load_checkpoint_tokenizer(frozen_dir)
    frozen, model = load_causal_lm(frozen_dir), load_causal_lm(model_dir)
    total = count = 0.0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            p = frozen(ids).logits[0, :-1].log_softmax(-1)
            q = model(ids).logits[0, :-1].log_softmax(-1)
            total += float((p.exp() * (p - q)).sum())
            count += ids.shape[1] - 1
    return total / count


def first_step_kl(frozen_dir, edited_dir, held, forgotten) -> float:
    """A repair's first KL, a mean over every predicted token of its batch: the frozen model's against the edited one
    on the held texts, 0 on the forget documents (held at the edited model's own distributions, which it starts at)."""
    tokenizer = load_checkpoint_tokenizer(edited_dir)
    tokens = [len(tokenizer(text)["input_ids"]) - 1 for text in held + forgotten]
    return mean_kl(frozen_dir, edited_dir, held) * sum(tokens[:len(held)]) / sum(tokens)


def test_the_repair_trains_the_mlps_above_L_toward_the_frozen_models_distributions_from_the_edited_states(
        tiny_model_dir, tmp_path):
    """An edit of layer 4's MLP (L) stood in by seeded noise: the repair changes layer 5's MLP and nothing else, its
    first step's KL is the frozen model's against the edited one on its first batch, and after it the repaired model
    is nearer the frozen one on the texts it read."""
    edited = tmp_path / "edited"
    save_perturbed(tiny_model_dir, edited, layer=4, scale=0.5)
    config = RMUConfig.from_dict({**FAST, "params": MLP, "repair.steps": 60, "repair.lr": 3e-3, "repair.batch_size": 4,
                                  "repair.max_length": 64})
    edits, kls, _ = distil_above(tiny_model_dir, edited, GENERAL_TEXT, [], config, CPU, torch.float32,
                                 progress=False)
    above = {name for name in weight_map(edited) if name.startswith("model.layers.5.mlp.")}
    assert set(edits) == above and len(above) == 3
    first, _ = next(repair_batches(GENERAL_TEXT, [], config.repair, config.seed))
    assert kls[0] == pytest.approx(mean_kl(tiny_model_dir, edited, first), rel=1e-4)
    save_edited(edited, tmp_path / "repaired", edits)
    before, after = checkpoint_tensors(edited), checkpoint_tensors(tmp_path / "repaired")
    assert [name for name in before if not torch.equal(before[name], after[name])] == sorted(above, key=list(
        before).index)
    assert mean_kl(tiny_model_dir, tmp_path / "repaired", GENERAL_TEXT) < 0.5 * mean_kl(tiny_model_dir, edited,
                                                                                       GENERAL_TEXT)


@pytest.mark.parametrize("forget_share, micro_batch", [(0.0, 2), (0.5, 1)])
def test_a_repair_in_micro_batches_trains_as_the_whole_batch_does(tiny_model_dir, tmp_path, forget_share, micro_batch):
    """--repair-micro-batch: the same KL a step and the same weights, each pass of the batch's texts padded alone,
    with forget documents held at the edit's distributions (--repair-forget-share) in passes of their own too."""
    edited = tmp_path / "edited"
    save_perturbed(tiny_model_dir, edited, layer=4, scale=0.5)
    texts = [text * (1 + i % 3) for i, text in enumerate(GENERAL_TEXT)]  # unequal lengths: each pass pads its own
    forget = [f"Record {i}: {name} keeps {n} goats in {town}." * (1 + i % 2) for i, (name, town, n) in enumerate(
        [("Ada Moss", "Brill", 3), ("Ivo Lark", "Stow", 7), ("Una Pike", "Hale", 5)])]
    runs = {}
    for rows in (None, micro_batch):
        config = RMUConfig.from_dict({**FAST, "params": MLP, "repair.steps": 3, "repair.lr": 3e-3,
                                      "repair.batch_size": 4, "repair.max_length": 512,  # none cut: mean_kl's
                                      "repair.retain_share": 0.0, "repair.forget_share": forget_share,
                                      "repair.micro_batch": rows})
        runs[rows] = distil_above(tiny_model_dir, edited, texts, [], config, CPU, torch.float32, progress=False,
                                  forget=forget)[:2]
    (whole, whole_kls), (passes, passes_kls) = runs[None], runs[micro_batch]
    assert passes_kls == pytest.approx(whole_kls, rel=1e-5)
    held, forgotten = next(repair_batches(texts, [], config.repair, config.seed, forget))
    assert len(forgotten) == round(4 * forget_share)
    assert whole_kls[0] == pytest.approx(first_step_kl(tiny_model_dir, edited, held, forgotten), rel=1e-4)
    for name in whole:
        torch.testing.assert_close(passes[name], whole[name], rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(whole[name], checkpoint_tensors(edited)[name]) for name in whole)


def test_each_repair_batch_draws_its_shares_of_retain_and_forget_documents_and_the_rest_from_the_anchors_texts():
    texts, retain = [f"text {i}" for i in range(10)], [f"retain {i}" for i in range(10)]
    forget = [f"forget {i}" for i in range(10)]
    config = RMUConfig.from_dict({"repair.steps": 5, "repair.batch_size": 8, "repair.retain_share": 0.25,
                                  "repair.forget_share": 0.25})
    batches = list(repair_batches(texts, retain, config.repair, 0, forget))
    assert len(batches) == 5
    for held, forgotten in batches:
        assert sum(t in retain for t in held) == 2 and sum(t in texts for t in held) == 4 and len(set(held)) == 6
        assert len(set(forgotten)) == 2 and set(forgotten) <= set(forget)
    held, forgotten = next(repair_batches(texts, [], config.repair, 0))  # none of either: the anchor's texts fill in
    assert len(held) == 8 and set(held) <= set(texts) and forgotten == []


def test_a_repair_holding_the_forget_documents_keeps_them_at_the_edits_distributions(tiny_model_dir, tmp_path):
    """--repair-forget-share: a quarter of each batch is forget documents trained toward the edited model's own
    distributions. Its first step's KL is the frozen model's on the other texts over every token of the batch (the
    forget documents' is 0 there); after it the forget documents stand nearer the edit than a repair without them
    leaves them, and the other texts still near the frozen model."""
    edited = tmp_path / "edited"
    save_perturbed(tiny_model_dir, edited, layer=4, scale=0.5)
    forget = [f"Record {i}: {name} was born in {town} and keeps {n} goats." for i, (name, town, n) in enumerate(
        [("Ada Moss", "Brill", 3), ("Ivo Lark", "Stow", 7), ("Una Pike", "Hale", 5), ("Rex Dorn", "Kew", 9)] * 2)]
    repaired = {}
    for share in (0.0, 0.25):
        config = RMUConfig.from_dict({**FAST, "params": MLP, "repair.steps": 60, "repair.lr": 3e-3,
                                      "repair.batch_size": 8, "repair.max_length": 64, "repair.forget_share": share})
        edits, kls, _ = distil_above(tiny_model_dir, edited, GENERAL_TEXT, [], config, CPU, torch.float32,
                                     progress=False, forget=forget)
        save_edited(edited, tmp_path / f"repaired{share}", edits)
        repaired[share] = tmp_path / f"repaired{share}"
    held, forgotten = next(repair_batches(GENERAL_TEXT, [], config.repair, config.seed, forget))
    assert len(held) == 6 and len(forgotten) == 2
    assert kls[0] == pytest.approx(first_step_kl(tiny_model_dir, edited, held, forgotten), rel=1e-4)
    assert mean_kl(edited, repaired[0.25], forget) < 0.5 * mean_kl(edited, repaired[0.0], forget)
    assert mean_kl(tiny_model_dir, repaired[0.25], GENERAL_TEXT) < 0.5 * mean_kl(tiny_model_dir, edited, GENERAL_TEXT)


def test_repair_rounds_edit_and_repair_that_many_times_and_record_each(tiny_model_dir, synth_dir, tmp_path):
    """Two rounds: the layers above L differ from the input's, ``unlearn.json`` records both rounds and the anchor's
    texts stay beside the weights; with none, the layers above L are the input's and nothing is recorded. The second
    edit runs at ``--repair-later-lr``: at 1e-12 it leaves the edited layers where the first edit, the plain run's,
    left them, and ``unlearn.json`` keeps the run's own settings."""
    texts = [(f"An unseen {task} text number {i} about the sea.", task) for i in range(2)
             for task in ("Task1", "Task2", "Task3")]
    reference = tasked_reference(tmp_path / "reference.jsonl", texts)
    source, outputs = checkpoint_tensors(tiny_model_dir), {}
    for rounds in (2, 0):
        config = RMUConfig.from_dict({**FAST, "steps": 2, "calibration.unseen": reference, "loss.anchor": 1.0,
                                      "calibration.anchor_share": 0.5, "repair.rounds": rounds, "repair.steps": 3,
                                      "repair.batch_size": 4, "repair.max_length": 32, "repair.later_lr": 1e-12})
        log = tmp_path / f"log{rounds}.jsonl"
        started = time.monotonic()
        out = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "new" / f"out{rounds}", config, log=log,
                      progress=False)
        wall = time.monotonic() - started
        record = json.loads((out.output_dir / "unlearn.json").read_text())
        written = outputs[rounds] = checkpoint_tensors(out.output_dir)
        moved = {name.split(".mlp.")[0] for name in written if not torch.equal(written[name], source[name])}
        assert (out.output_dir / "anchor_texts.jsonl").is_file()
        assert not list((tmp_path / "new").glob(".repedit-repair-*"))  # the rounds' scratch is gone
        if rounds:
            assert moved == {"model.layers.2", "model.layers.3", "model.layers.4", "model.layers.5"}
            assert [set(r) for r in record["repairs"]] == [{
                "steps", "stopped", "train_seconds", "repair_seconds", "repair_step_seconds", "repair_kl_first",
                "repair_kl_last", "written_check"}] * 2
            for r in record["repairs"]:  # its median step, inside the repair's load and steps
                assert 0 < r["repair_step_seconds"] < r["repair_seconds"]
            timings = record["timings"]  # the whole run's, every round's parts summed
            assert timings["train"] == pytest.approx(sum(r["train_seconds"] for r in record["repairs"]))
            assert timings["repair"] == pytest.approx(sum(r["repair_seconds"] for r in record["repairs"]))
            assert sum(timings[part] for part in ("load", "prepare", "train", "save", "repair")) <= timings["total"]
            assert timings["total"] < wall and out.timings["total"] >= timings["total"]
            assert record["config"]["lr"] == FAST["lr"] and record["config"]["repair"]["later_lr"] == 1e-12
            losses, checks = curves_figure(out).axes[:2]  # each edit's steps after the earlier's, no "round" term
            terms = {line.get_label(): list(line.get_xdata()) for line in losses.get_lines()
                     if not line.get_label().startswith("_")}
            assert "round" not in terms and terms["loss"] == [1, 2, 3, 4]
            assert list(checks.get_lines()[0].get_xdata()) == [2 + c["step"] for c in record["calibration"]]
            assert out.repairs == record["repairs"]
            assert record["repairs"][-1]["written_check"] in record["calibration"]  # one of the last edit's checks
            assert record["steps"] == len(out.losses) == sum(r["steps"] for r in record["repairs"]) == 4
            for written in (log, out.output_dir / "unlearn_log.jsonl"):  # every edit's steps, each with its round
                steps = [json.loads(line) for line in written.read_text().splitlines()]
                assert [(s["round"], s["step"]) for s in steps] == [(0, 1), (0, 2), (1, 1), (1, 2)]
        else:
            assert moved == {"model.layers.2", "model.layers.3", "model.layers.4"} and "repairs" not in record
    for name, weights in outputs[0].items():
        if not torch.equal(weights, source[name]):  # an edited layer's: the first edit's, to the later rate's step
            torch.testing.assert_close(outputs[2][name], weights, rtol=0, atol=1e-6)


@pytest.mark.parametrize("warmup", [0, 4])
def test_a_warmed_up_edit_first_moves_each_weight_a_fraction_of_the_rate(tiny_model_dir, synth_dir, tmp_path, warmup):
    """``--repair-later-warmup``'s loop: AdamW's first step moves each weight by about the learning rate whatever its
    gradient (the update is lr g / |g|), so after one step of an edit warmed up over N steps the largest move of an
    edited weight is lr / N, and without a warm-up lr."""
    from repedit.data import load_rows
    from repedit.rmu_loop import run_rmu
    from repedit.runtime import Budget

    config = RMUConfig.from_dict({**FAST, "steps": 1, "params": MLP})
    out = run_rmu(tiny_model_dir, load_rows(synth_dir, "forget"), load_rows(synth_dir, "retain"), tmp_path / "out",
                  config, CPU, torch.float32, Budget(None), progress=False, warmup=warmup).output_dir
    before, after = checkpoint_tensors(tiny_model_dir), checkpoint_tensors(out)
    moved = max(float((after[name] - before[name]).abs().max()) for name in after if ".mlp." in name)
    assert moved == pytest.approx(config.lr / max(warmup, 1), rel=0.02)


@pytest.mark.parametrize(("changes", "message"), [
    ({"repair.rounds": 1}, "--repair-rounds: needs the anchor's texts"),
    ({"repair.rounds": 1, "loss.anchor": 1.0, "layers": (3, 4, 5)},
     "--repair-rounds: needs the anchor's texts (--anchor > 0 with --calibrate) and a layer above L"),
    ({"repair.retain_share": 1.5}, "--repair-retain-share: must be within [0, 1], got 1.5"),
    ({"repair.forget_share": 0.75}, "--repair-forget-share: 0.75 with --repair-retain-share 0.5 leaves no room"),
    ({"repair.steps": 0}, "--repair-steps: 0; at least 1"),
    ({"repair.lr": -1.0}, "--repair-lr: must be a positive number"),
    ({"repair.later_lr": 0.0}, "--repair-later-lr: must be a positive number, got 0.0"),
    ({"repair.later_warmup": -1}, "--repair-later-warmup: -1; at least 0"),
    ({"repair.micro_batch": 3}, "--repair-micro-batch: 3 does not divide --repair-batch-size 16"),
])
def test_bad_repair_options_fail_clearly_and_write_nothing(tiny_model_dir, synth_dir, tmp_path, changes, message):
    values = {**FAST, **changes}
    if "loss.anchor" in values:
        values["calibration.unseen"] = str(synth_dir / "mia_data" / "nonmember.jsonl")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", RMUConfig.from_dict(values), progress=False)
    assert not (tmp_path / "out").exists()


def test_the_repair_takes_back_the_edits_rise_on_unseen_text_and_leaves_the_forget_documents_forgotten(
        tiny_target, method_run, tmp_path):
    """The method on the tiny target, then one repair of its output, as a round does: the never-used documents'
    rise comes down by half or more, the forget documents stay at half the unseen documents' NLL or more (from about
    0.01 nats) and the retain documents under 0.1 nats. A repair of 100 steps of 8 texts, a quarter of the
    default's work: on this target the default's 200 of 16 and this one read alike (rise kept -2.14 and -1.85 of the
    edit's, forget documents 0.79 and 0.77 of the unseen ones' NLL, retain 0.054 and 0.058 nats; 60 of 8: -1.30,
    0.77, 0.060)."""
    (reference, withheld, documents, retained, mean_nll), config, run = method_run
    config = dataclasses.replace(config, repair=dataclasses.replace(config.repair, steps=100, batch_size=8))
    edits = distil_above(tiny_target, run.output_dir, run.anchor_texts or [], retained, config, CPU,
                         torch.float32, progress=False).weights
    save_edited(run.output_dir, tmp_path / "repaired", edits)
    target, edit, repaired = (mean_nll(d, withheld) for d in (tiny_target, run.output_dir, tmp_path / "repaired"))
    assert edit > target and repaired - target <= 0.5 * (edit - target), (target, edit, repaired)
    unseen = mean_nll(tiny_target, unseen_texts(reference))
    assert mean_nll(tmp_path / "repaired", documents) >= 0.5 * unseen
    assert mean_nll(tmp_path / "repaired", retained) < 0.1


def test_an_edit_stopped_by_the_time_budget_ends_the_rounds_and_leaves_it_as_the_output(tiny_target, synth_dir,
                                                                                         tmp_path):
    config = RMUConfig.from_dict({**FAST, "steps": 100_000, "time_budget": 8.0, "loss.anchor": 1.0,
                                  "calibration.unseen": str(synth_dir / "mia_data" / "nonmember.jsonl"),
                                  "repair.rounds": 2})
    result = unlearn(tiny_target, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    assert result.stopped == "time budget" and result.repairs == []
    assert "repairs" not in json.loads((tmp_path / "out" / "unlearn.json").read_text())
    assert_complete_checkpoint(tmp_path / "out", tiny_target)
    assert not list(tmp_path.glob(".repedit-repair-*"))


@needs_shared  # the sim shape reads the OLMo tokenizer
def test_repair_memory_measures_each_count_of_layers_above_L_in_its_own_process_and_says_each_as_it_lands(tmp_path):
    """bench/repair_memory.py's CPU smoke, as a user runs it: the sim shape (12 layers) edited at the standins preset's
    layers 5-7, so a count of 1 trains layer 8 and ``all`` layers 8-11; each row's line printed as it is measured,
    after the line that says the random weights are being written (minutes at 7B: a run cut short says where)."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "REPEDIT_DATA": str(SHARED_DATA),
           "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "bench")])}
    out = tmp_path / "repair.json"
    result = subprocess.run([sys.executable, str(repo / "bench" / "repair_memory.py"), "--work", str(tmp_path / "w"),
                             "--out", str(out), "--shapes", "sim", "--counts", "1,all", "--steps", "4",
                             "--batch-size", "2", "--max-length", "16", "--micro-batch", "1", "--device", "cpu"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["layers_above"], r["trained"], r["edited"], r["micro_batch"]) for r in rows] == [
        (1, [8], [5, 6, 7], 1), ("all", [8, 9, 10, 11], [5, 6, 7], 1)]
    assert all(r["steps"] == 4 and r["kl_first"] == pytest.approx(0.0, abs=1e-6) for r in rows)  # edited = frozen
    lines = result.stdout.splitlines()
    built = next(i for i, line in enumerate(lines) if line.startswith("sim: random weights written to"))
    measured = [i for i, line in enumerate(lines) if line.split()[:2] in (["sim", "1"], ["sim", "all"])]
    assert len(measured) == 2 and built < min(measured)
