"""The yardstick's collateral columns on the tiny retrain oracle, checked against hand counts."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.cli import main
from repedit.collateral import auc_interval, format_collateral, ks_statistic, measure_collateral, nll_of
from repedit.data import load_documents
from repedit.generate import document_nll

TASKS = ("Task1", "Task2", "Task3")


@pytest.fixture(scope="module")
def withheld_dir(oracle_target, synth_dir):
    return oracle_target / "withheld" / synth_dir.resolve().name


@pytest.mark.parametrize(("a", "b", "expected"), [
    ([1, 2, 3], [4, 5], 1.0),  # apart: one CDF reaches 1 before the other leaves 0
    ([1, 2, 3, 4], [2.5, 5], 0.5),  # at 2: 2/4 against 0; at 4: 1 against 1/2
    ([1, 1, 2], [1, 2, 2], 1 / 3),  # ties: at 1, 2/3 against 1/3
    ([3, 1, 2], [2, 3, 1], 0.0),  # the same sample in another order
])
def test_ks_statistic_matches_hand_computed_cases(a, b, expected):
    assert ks_statistic(a, b) == pytest.approx(expected, abs=1e-12)
    assert ks_statistic(b, a) == pytest.approx(expected, abs=1e-12)


def test_ks_statistic_needs_both_samples():
    with pytest.raises(ValueError, match="both sides, got 0 and 2"):
        ks_statistic([], [1.0, 2.0])


def test_auc_interval_edges_and_errors():
    assert auc_interval([1.0, 2.0, 3.0], [5.0, 6.0]) == (1.0, 1.0)  # every member more likely in every draw
    assert auc_interval([5.0, 6.0], [1.0, 2.0, 3.0]) == (0.0, 0.0)
    assert auc_interval([2.0, 2.0], [2.0]) == (0.5, 0.5)  # ties count half, as in roc_auc_score
    with pytest.raises(ValueError, match="both sides, got 3 and 0"):
        auc_interval([1.0, 2.0, 3.0], [])


@pytest.mark.parametrize(("members", "nonmembers"), [(200, 200), (24, 12)])
def test_auc_interval_width_matches_the_mann_whitney_variance(members, nonmembers):
    """Two samples of one distribution: the interval is centred near 0.5 and as wide as the normal approximation of
    the Mann-Whitney statistic's null variance, (n + m + 1) / (12 n m), gives (the sim's validation is the second
    case: 24 forget and 12 withheld documents of a kind)."""
    rng = random.Random(7)
    widths, centres = [], []
    for _ in range(20):
        low, high = auc_interval([rng.gauss(0, 1) for _ in range(members)],
                                 [rng.gauss(0, 1) for _ in range(nonmembers)], draws=1000, seed=rng.randrange(1000))
        widths.append(high - low)
        centres.append((low + high) / 2)
    expected = 2 * 1.6449 * math.sqrt((members + nonmembers + 1) / (12 * members * nonmembers))
    assert statistics.fmean(widths) == pytest.approx(expected, rel=0.15)
    assert abs(statistics.fmean(centres) - 0.5) < expected / 4


def test_collateral_columns_on_the_oracle(oracle_target, withheld_dir, general_file):
    model, tokenizer = load_causal_lm(oracle_target), load_checkpoint_tokenizer(oracle_target)
    result = measure_collateral(model, tokenizer, withheld_dir, general=oracle_target / "heldout_general.jsonl")
    assert set(result["all_kind_auc"]) == set(result["unseen_nll"]) == set(result["forget_nll"]) == set(TASKS)
    assert result["oracle_ks"] is None and math.isfinite(result["general_nll"])
    members = [json.loads(line) for line in (withheld_dir / "member.jsonl").read_text().splitlines()]
    nonmembers = [json.loads(line) for line in (withheld_dir / "nonmember.jsonl").read_text().splitlines()]
    for task in TASKS:
        m = document_nll(model, tokenizer, [r["document"] for r in members if r["task"] == task])
        n = document_nll(model, tokenizer, [r["document"] for r in nonmembers if r["task"] == task])
        assert result["forget_nll"][task] == pytest.approx(m, abs=1e-6) and len(m) == 4 and len(n) == 1
        assert result["unseen_nll"][task] == pytest.approx(sum(n) / len(n), abs=1e-6)
        # The loss attack's AUC by brute force: the share of (member, nonmember) pairs in which the
        # member is more likely, ties counting half.
        wins = sum((x < y) + 0.5 * (x == y) for x in m for y in n)
        assert result["all_kind_auc"][task] == pytest.approx(wins / (len(m) * len(n)), abs=1e-12)
        assert result["withheld_nll"][task] == pytest.approx(n, abs=1e-6)
        low, high = result["all_kind_auc_interval"][task]
        assert 0 <= low <= result["all_kind_auc"][task] <= high <= 1
    general = load_documents(oracle_target / "heldout_general.jsonl", field="text")
    assert result["general_nll"] == pytest.approx(sum(document_nll(model, tokenizer, general)) / 2, abs=1e-6)
    card = json.loads((oracle_target / "target_card.json").read_text())
    assert card["general_nll"] == pytest.approx(result["general_nll"], abs=1e-4)  # other batches, other padding
    # The model is its own oracle: each forget NLL distribution is at distance 0 from itself.
    again = measure_collateral(model, tokenizer, withheld_dir, oracle_nll=result["forget_nll"])
    assert again["oracle_ks"] == {"Task1": 0.0, "Task2": 0.0, "Task3": 0.0, "all": 0.0}
    assert "all-kind AUC" in format_collateral(again) and "general NLL -" in format_collateral(again)
    with pytest.raises(ValueError, match="oracle NLLs: expected per-task counts"):
        measure_collateral(model, tokenizer, withheld_dir, oracle_nll={"Task1": [1.0]})


def test_nan_nll_is_refused_naming_the_set(monkeypatch):
    monkeypatch.setattr("repedit.generate.document_nll", lambda *args: [1.0, math.nan])
    with pytest.raises(ValueError, match="the unseen set: row 2 has NLL nan"):
        nll_of(None, None, ["a", "b"], "the unseen set")


def test_evaluate_adds_the_collateral_section(oracle_target, withheld_dir, tiny_model_dir, synth_dir, tmp_path,
                                              capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(oracle_target), "--data", str(synth_dir), "--out", str(out),
                 "--device", "cpu", "--max-new-tokens", "4", "--withheld", str(withheld_dir),
                 "--general", str(oracle_target / "heldout_general.jsonl"), "--oracle", str(tiny_model_dir)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "all-kind AUC" in printed and "oracle KS" in printed and "general NLL" in printed
    collateral = json.loads((out / "evaluation_results.json").read_text())["collateral"]
    ks = collateral["oracle_ks"]
    assert set(ks) == {*TASKS, "all"} and all(0 <= v <= 1 for v in ks.values())
    assert all(0 <= v <= 1 for v in collateral["all_kind_auc"].values())
    # The oracle's NLLs were its own: recomputed, they give the same distances.
    oracle = load_causal_lm(tiny_model_dir)
    oracle_nll = {task: document_nll(oracle, load_checkpoint_tokenizer(tiny_model_dir), [
        r["document"] for r in map(json.loads, (withheld_dir / "member.jsonl").read_text().splitlines())
        if r["task"] == task]) for task in TASKS}
    assert ks["Task2"] == pytest.approx(ks_statistic(collateral["forget_nll"]["Task2"], oracle_nll["Task2"]))


def test_evaluate_collateral_errors_name_the_option(oracle_target, synth_dir, tmp_path, capsys):
    base = ["evaluate", "--model", str(oracle_target), "--data", str(synth_dir), "--out", str(tmp_path / "e")]
    assert main([*base, "--general", str(tmp_path / "g.jsonl")]) == 2
    assert "--general, --oracle: need --withheld" in capsys.readouterr().err
    assert main([*base, "--withheld", str(tmp_path)]) == 2
    assert f"--withheld {tmp_path}: no member.jsonl or nonmember.jsonl" in capsys.readouterr().err
