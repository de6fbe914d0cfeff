"""bench/goal_reach.py: each kind's documents read through the layers above with h_L written at the edit's goal."""

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import TASKS, load_rows
from repedit.standins import retain_documents

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from goal_reach import clearing_shares, goal_reach, preset_settings, run_settings  # noqa: E402

FIRST, LAYER = 2, 4  # the tiny target's edited layers 2-4: the goal is h_4, hidden_states[5]


def nll(model, tokenizer, text: str, replace=None) -> float:
    """The oracle: ``model(ids, labels=ids).loss`` of one text, layer 4's output replaced by ``replace(h)`` through a
    hook of this test's own."""
    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        return (replace(hidden), *output[1:]) if isinstance(output, tuple) else replace(hidden)

    handle = model.model.layers[LAYER].register_forward_hook(hook) if replace else None
    try:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        return model(ids, labels=ids).loss.item()
    finally:
        if handle:
            handle.remove()


def test_the_goal_at_share_zero_is_the_kinds_mean_and_at_share_one_the_frozen_state(tiny_target, synth_dir):
    """Share 0: every token's h_4 is the mean of the fitted texts' h_4 (numpy's, over their tokens), and the memorized
    forget documents become far less likely; share 1: every direction kept, the goal is h_4 itself and the NLL the
    model's own."""
    model = load_causal_lm(tiny_target, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_target)
    fit = retain_documents(load_rows(synth_dir, "retain"))  # each kind's documents once each
    forget = retain_documents(load_rows(synth_dir, "forget"))
    with torch.no_grad():
        report = goal_reach(model, tokenizer, fit, {"forget": forget}, FIRST, LAYER, [0.0, 1.0])
        for task in TASKS:
            states = np.concatenate([model(**tokenizer(t, return_tensors="pt"), output_hidden_states=True)
                                     .hidden_states[LAYER + 1][0].double().numpy() for t in fit[task]])
            mean = torch.tensor(states.mean(axis=0), dtype=torch.float32)
            trained = statistics.median(nll(model, tokenizer, t) for t in forget[task])
            at_mean = statistics.median(nll(model, tokenizer, t, lambda h, m=mean: m.expand_as(h))
                                        for t in forget[task])
            row = report[task]
            assert row["forget"] == pytest.approx(trained, abs=1e-4)
            assert row["shares"]["0.0"]["directions"] == 0
            assert row["shares"]["0.0"]["forget"] == pytest.approx(at_mean, abs=1e-3)
            assert at_mean > trained + 1.0, task  # the mean forgets: the check above compares two different numbers
            assert row["shares"]["1.0"]["directions"] == model.config.hidden_size
            assert row["shares"]["1.0"]["forget"] == pytest.approx(trained, abs=1e-3)


def test_a_run_folder_gives_the_settings_its_run_used(tmp_path):
    """``--run``: the sixty-first call's preset run, its unlearn.json as written, read for the layers, the first
    check's stop levels, the stand-ins' fractions, template share and count, and the ``--calibrate`` file."""
    stored = Path(__file__).resolve().parents[1] / "bench" / "results" / "calibration-h200-sixtyfirst"
    (tmp_path / "unlearn.json").write_bytes((stored / "rmu-standins.json").read_bytes())
    settings = run_settings(tmp_path)
    assert settings["layers"] == [5, 6, 7]
    assert settings["levels"] == pytest.approx({"Task1": 6.946970, "Task2": 3.636055, "Task3": 8.277256})
    assert settings["fractions"] == {"Task1": 0.554453125, "Task2": 0.3716015625, "Task3": 0.58984375}
    assert (settings["template"], settings["standin_count"]) == (0.1, 96)
    assert settings["fit"] == "/tmp/w2/reference-public-tasks.jsonl"
    with pytest.raises(SystemExit, match="no unlearn.json"):
        run_settings(tmp_path / "elsewhere")


def test_the_clearing_shares_are_the_ones_c17_took_from_trains_table():
    """The twenty-third build's train table as stored: at a 2-nat margin the stories clear their level (6.55) at 0.25
    (9.40) but not 0.3 (8.27), the PII biographies theirs (3.07) at 0.35 (5.18) but not 0.4 (4.45), the Wikipedia
    biographies theirs (8.28) only at 0 (14.50; 0.25 reaches 9.72): c17's 0.25 / 0.35 / 0. At 1.5 nats the stories
    take 0.3 (+1.72), at 1 nat every kind a larger share; at 12 none clears."""
    stored = Path(__file__).resolve().parents[1] / "bench" / "results" / "goal-reach-cpu-sim23-train.json"
    record = json.loads(stored.read_text())
    assert clearing_shares(record["tasks"], record["levels"], 2.0) == {"Task1": 0.25, "Task2": 0.35, "Task3": 0.0}
    assert clearing_shares(record["tasks"], record["levels"], 1.5) == {"Task1": 0.3, "Task2": 0.35, "Task3": 0.0}
    assert clearing_shares(record["tasks"], record["levels"], 1.0) == {"Task1": 0.3, "Task2": 0.4, "Task3": 0.25}
    assert clearing_shares(record["tasks"], record["levels"], 12.0) == {"Task1": None, "Task2": None, "Task3": None}


def test_a_presets_settings_are_what_its_run_reads_before_its_first_step(tiny_target, synth_dir, tmp_path):
    """``--preset``: the demo preset calibrated on Task3 texts alone makes stand-ins of the other kinds from the retain
    set; the directions' texts are the given ones and the stand-ins, its layers the preset's, and each kind's level
    the median of its texts' NLL under the frozen target (the oracle: ``model(ids, labels=ids).loss``, above)."""
    model = load_causal_lm(tiny_target, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_target)
    given = [f"A biography never trained on, number {i}: born in a town by the sea, she wrote two books." for i in
             range(4)]
    fit = tmp_path / "unseen.jsonl"
    fit.write_text("".join(json.dumps({"text": t, "task": "Task3"}) + "\n" for t in given))
    forget = load_rows(synth_dir, "forget")
    with torch.no_grad():
        settings = preset_settings(model, tokenizer, "demo", fit, synth_dir, [r.task for r in forget])
        levels = {task: statistics.median(nll(model, tokenizer, t) for t in texts)
                  for task, texts in settings["texts"].items()}
    assert settings["layers"] == [2, 3, 4]
    assert settings["texts"]["Task3"] == given
    retain = retain_documents(load_rows(synth_dir, "retain"))
    for task in ("Task1", "Task2"):  # stand-ins: retain documents with words swapped, none of them verbatim
        assert settings["texts"][task] and not set(settings["texts"][task]) & set(retain[task])
        assert 0 < settings["fractions"][task] <= 1
    assert settings["levels"] == pytest.approx(levels, abs=1e-4)
