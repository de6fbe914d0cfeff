"""bench/recipe_speed.py's end-to-end rows: what a run's time is made of, and the whole run projected from it, a
repaired recipe's (``--repair-rounds``) repairs included."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
recipe_speed = importlib.import_module("recipe_speed")


def test_a_repaired_runs_parts_are_read_per_edit_and_its_whole_run_counts_each_repair_at_the_recipes_steps():
    """Worked by hand: two edits of 5 and 4 steps over 2 batches, each edit's first pass its own (its second step:
    the first is the warm-up), their checks the training less the steps, the repairs' median steps averaged."""
    seconds = [[2.0, 1.5, 1.0, 1.0, 1.2], [1.8, 1.4, 1.0, 1.1]]
    log = [{"round": k, "step": i + 1, "seconds": s} for k, edit in enumerate(seconds) for i, s in enumerate(edit)]
    record = {"batches": 2, "timings": {"train": 19.0},
              "repairs": [{"train_seconds": 10.0, "repair_step_seconds": 0.5},
                          {"train_seconds": 9.0, "repair_step_seconds": 0.7}]}
    parts = recipe_speed.run_parts(log, record, wall_s=100.0, repair_steps=5)
    # steps 12.0 s of the edits' 19.0; the repairs 2 x 5 x 0.6 s; the rest of the wall fixed
    assert parts == pytest.approx({"rounds": 2, "step_s": 1.0, "first_pass_step_s": 1.45, "check_s": 3.5,
                                   "repair_step_s": 0.6, "first_meetings_s": 2 * 2 * 0.45, "fixed_s": 75.0})
    # 1,000 steps of twice the rows, a check every 10, two repairs of 200 steps
    assert recipe_speed.whole_run_s(parts, 1000, 10, 200, rows_scale=2) == pytest.approx(
        75.0 + 1.8 + 2000.0 + 350.0 + 240.0)
    plain = recipe_speed.run_parts([{"step": i + 1, "seconds": s} for i, s in enumerate(seconds[0])],
                                   {"batches": 2, "timings": {"train": 10.0}}, wall_s=30.0, repair_steps=200)
    assert plain == pytest.approx({"rounds": 0, "step_s": 1.0, "first_pass_step_s": 1.5, "check_s": 3.3,
                                   "repair_step_s": 0.0, "first_meetings_s": 1.0, "fixed_s": 20.0})
    assert recipe_speed.whole_run_s(plain, 100, 10, 200) == pytest.approx(20.0 + 1.0 + 100.0 + 33.0)


def test_a_repaired_grid_candidate_runs_end_to_end_in_one_process_with_its_repairs_timed(tiny_model_dir, tmp_path):
    """A grid candidate with two repair rounds, as ``--candidate`` names it, runs through ``repedit unlearn`` in one
    process (torchrun's would refuse the repair): two edits of 3 steps, each repaired in 2 steps, and the projection
    counts the recipe's own 200 repair steps in each round, not the 2 the row ran."""
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({
        "base": {"layers": [2, 3, 4], "adaptive": 5.0, "lr": 1e-3, "loss": {"anchor": 1.0, "anchor_texts": "unseen"},
                 "calibration": {"unseen": "public-tasks", "every": 10, "anchor_share": 0.5}},
        "configs": [{}, {"repair.rounds": 2, "repair.batch_size": 4, "repair.max_length": 32}]}))
    data = tmp_path / "data"
    recipe_speed.write_sets(data, 24, 8)
    with pytest.raises(ValueError, match="c0 to c1"):
        recipe_speed.recipe_values(str(grid), "c2")
    row = recipe_speed.end_to_end(tiny_model_dir, data, tmp_path / "run", 1, 2, 32, 3, "cpu", name=str(grid),
                                  candidate="c1", repair_steps=2)
    parts = row["parts"]
    assert row["steps"] == 6 and row["repair_steps"] == 2 and parts["rounds"] == 2
    assert parts["repair_step_s"] > 0 and 0 < parts["fixed_s"] < row["wall_s"]
    assert row["run_s"] == pytest.approx(recipe_speed.whole_run_s(parts, 1500, 10, 0, 32) + 2 * 200 * parts[
        "repair_step_s"])
    with pytest.raises(ValueError, match="one process"):
        recipe_speed.end_to_end(tiny_model_dir, data, tmp_path / "two", 2, 2, 32, 3, "cpu", name=str(grid),
                                candidate="c1", repair_steps=2)
