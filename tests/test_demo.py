"""`repedit demo`, the README's main job: the whole pipeline on CPU with data it makes itself."""

import json
from pathlib import Path

import pytest
from conftest import forgetting_step

from repedit.demo import DEMO_RMU, format_comparison, next_steps, run_demo, verdict
from repedit.evaluate import evaluate
from repedit.methods import config_from_dict
from repedit.unlearn import unlearn


def _results(forget: float, retain: float, auc: float, final: float | None) -> dict:
    return {"aggregated-terms": [forget] * 6 + [retain] * 6, "harmonic-mean-task-aggregate": 12 / (
        6 / forget + 6 / retain) if forget and retain else 0.0, "mia_loss_acc": auc,
            "mia_final_score": 1 - 2 * abs(auc - 0.5), "mmlu_average": None, "aggregate-score": final}


def test_the_closing_table_has_a_legend_a_verdict_and_the_next_steps():
    before, after = _results(0.0, 1.0, 1.0, None), _results(0.9, 0.9, 0.5, None)
    table = format_comparison(before, after)
    assert "1 - ROUGE-L recall (regurgitation) or 1 - exact match" in table
    assert "forget Task1 regurgitation" in table.splitlines()[2]
    assert verdict(before, after) == ("verdict: better (harmonic-mean-task-aggregate 0.000 -> 0.900); forget terms "
                                      "+0.900, retain terms -0.100, attack AUC 1.00 -> 0.50 (0.5 is the goal)")
    assert verdict(after, before).startswith("verdict: not better")
    final = verdict(_results(0.1, 1.0, 1.0, 0.3), _results(0.9, 0.9, 0.5, 0.6))
    assert final.startswith("verdict: better (aggregate-score 0.300 -> 0.600)")
    steps = next_steps(Path("w"), has_mmlu=False)
    assert "w/unlearned (the edited model)" in steps and "repedit probe --model w/target --compare w/unlearned" in steps
    assert "repedit data fetch-assets" in steps and "fetch-assets" not in next_steps(Path("w"), has_mmlu=True)


@pytest.mark.slow
def test_demo_forgets_the_forget_set_and_keeps_the_retain_set(tmp_path, capsys):
    # MMLU is run and feeds the final score and the verdict, but no number here is asserted: 6 questions will do
    results = run_demo(tmp_path, mmlu_limit=6)
    before, after = results["before"], results["after"]
    assert before["harmonic-mean-task-aggregate"] == 0  # the target remembers everything
    # the representation edit brings forget documents to unseen ones' level, not past it as the bounded
    # ascent did (0.923): measured 0.814 on one machine and 0.706 on another (2026-12-01): the calibrated stop
    # lands at 205 or 180 steps with the CPU's float arithmetic (BENCHMARKS.md, the demo)
    assert after["harmonic-mean-task-aggregate"] > 0.65
    # every forget term (1 - recall or exact match): forget documents read like unseen ones, whose
    # completions still share some words with the expected text (a tiny model never trained on these
    # templated documents recalls 39-82% of their words: bench/results/undo-cpu-tiny.json); measured 0.590
    # and 0.375 (Task3's questions, 3 of 8 forgotten at the earlier stop)
    assert min(after["aggregated-terms"][:6]) > 0.3
    assert min(after["aggregated-terms"][6:]) > 0.85  # every retain term
    assert before["mia_loss_acc"] == 1 and 0.25 < after["mia_loss_acc"] < 0.75  # members no longer stand out
    printed = capsys.readouterr().out
    assert "verdict: better" in printed and f"next: repedit probe --model {tmp_path / 'target'}" in printed
    # the misdirection does the forgetting: without it the same run forgets nothing in as many steps as the demo's
    # took to bring its forget documents past 1 nat (it never calibrates, so it would run to the preset's cap of 400)
    steps = forgetting_step(json.loads((tmp_path / "unlearned" / "unlearn.json").read_text())["calibration"], 1.0)
    config = config_from_dict({**DEMO_RMU, "calibration.unseen": str(tmp_path / "unseen" / "task3.jsonl"),
                               "loss.misdirection": 0.0, "steps": steps, "calibration.every": steps})
    unlearn(tmp_path / "target", tmp_path / "data", tmp_path / "data", tmp_path / "off", config, progress=False)
    off = evaluate(tmp_path / "off", tmp_path / "data", tmp_path / "eval-off", mia_dir=tmp_path / "data" / "mia_data")
    assert off["harmonic-mean-task-aggregate"] == 0 and off["mia_loss_acc"] == 1
