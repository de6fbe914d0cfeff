"""`repedit demo`, the README's main job: the whole pipeline on CPU with data it makes itself."""

import pytest

from repedit.demo import run_demo


@pytest.mark.slow
def test_demo_forgets_the_forget_set_and_keeps_the_retain_set(tmp_path):
    results = run_demo(tmp_path, mmlu_limit=57)
    before, after = results["before"], results["after"]
    assert before["harmonic-mean-task-aggregate"] == 0  # the target remembers everything
    assert after["harmonic-mean-task-aggregate"] > 0.9
    assert min(after["aggregated-terms"][:6]) > 0.85  # every forget term (1 - recall or exact match)
    assert min(after["aggregated-terms"][6:]) > 0.95  # every retain term
