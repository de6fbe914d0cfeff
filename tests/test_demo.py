"""`repedit demo`, the README's main job: the whole pipeline on CPU with data it makes itself."""

import pytest

from repedit.demo import run_demo


@pytest.mark.slow
def test_demo_forgets_the_forget_set_and_keeps_the_retain_set(tmp_path):
    results = run_demo(tmp_path, mmlu_limit=57)
    before, after = results["before"], results["after"]
    assert before["harmonic-mean-task-aggregate"] == 0  # the target remembers everything
    assert after["harmonic-mean-task-aggregate"] > 0.9
    # every forget term (1 - recall or exact match): forget documents read like unseen ones, whose
    # completions still share some words with the expected text
    assert min(after["aggregated-terms"][:6]) > 0.7
    assert min(after["aggregated-terms"][6:]) > 0.85  # every retain term
    assert before["mia_loss_acc"] == 1 and 0.25 < after["mia_loss_acc"] < 0.75  # members no longer stand out
