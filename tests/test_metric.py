"""The metric against hand-made generations and an independent re-implementation of the spec."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from oracles import independent_score

from repedit.metric import (
    MetricError,
    exact_match,
    format_table,
    mia_auc,
    mia_score,
    read_back,
    read_mmlu_accuracy,
    rouge_l_recall,
    score_directory,
    score_records,
    task_aggregate,
    write_inference,
)

UUID1 = '"8f24c511-a319-4a9f-80c2-ca6fac131233"'
UUID2 = "df8d2304-fb26-4d44-9df0-a4b3f98df1b4"


def test_rouge_l_recall_stems_and_ignores_length():
    assert rouge_l_recall("she runs home", "she running home") == 1.0
    assert rouge_l_recall("the cat sat", "the cat sat on the mat, and then it slept all afternoon") == 1.0
    assert rouge_l_recall("the cat sat on the mat", "the dog sat") == pytest.approx(2 / 6)


def test_exact_match_strips_and_lowers_only():
    assert exact_match("Paris", "  paris \n") == 1
    assert exact_match("Paris", "Paris.") == 0
    assert exact_match("1984-12-31", "1984-12-31 is the date") == 0


def test_empty_generation_reads_back_as_nan():
    assert exact_match("x", "") == 0
    assert exact_match("nan", "") == 1  # the official CSV round trip turns "" into NaN, then "nan"
    assert rouge_l_recall("nan", "") == 1.0


@pytest.mark.parametrize("text", ["", "NA", "null", "None", "#N/A N/A", "<NA>", "-nan", "NA ", "na", "Paris",
                                  "a\nb", '"', "long text that is no NA string"])
def test_read_back_is_the_official_csv_round_trip(text, tmp_path):
    """The oracle: the official pipeline's own steps, ``to_csv``, ``read_csv`` and ``str``."""
    import pandas as pd

    pd.DataFrame({"model_output": [text]}).to_csv(tmp_path / "rows.csv", index=False)
    assert read_back(text) == str(pd.read_csv(tmp_path / "rows.csv")["model_output"][0])


def test_harmonic_mean_is_exactly_zero_with_a_zero_term():
    assert task_aggregate([0.9] * 11 + [0.0]) == 0.0
    assert task_aggregate([0.5, 1.0]) == pytest.approx(2 / 3)


def test_mia_auc_and_score():
    assert mia_auc([1.0, 1.5], [3.0, 4.0]) == 1.0  # members more likely: fully remembered
    assert mia_score(1.0) == 0.0 and mia_score(0.0) == 0.0 and mia_score(0.5) == 1.0
    assert mia_auc([2.0], [2.0]) == 0.5
    with pytest.raises(ValueError, match="needs scores on both sides, got 0 positive and 2 negative"):
        mia_auc([], [3.0, 4.0])


# --- a directory of official-format files, scored two independent ways ---


def _rows(rng: random.Random) -> list[dict]:
    """Rows of every (task, kind), with an empty generation, exact and near-miss answers."""
    answers = ["Madera", "1984-12-31", "900514344", "Yarlagadda Nayudamma", "42"]
    bases = {"Task1": UUID1, "Task2": UUID2, "Task3": "12762334"}
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "running", "home"]
    rows = []
    for task, base in bases.items():
        for n in range(3):
            doc = f"{base[:-1]}{n}" if task != "Task1" else base.replace('"', f'{n}"', 1)
            expected = " ".join(rng.choices(words, k=8))
            generated = rng.choice(["", expected, " ".join(rng.choices(words, k=rng.randint(1, 12)))])
            rows.append({"id": f"{doc}sc1", "task": task, "input": "Once,", "expected_output": expected,
                         "model_output": generated, "nll": rng.random()})
            for q in range(5 if task == "Task2" else 1):
                answer = rng.choice(answers)
                generated = rng.choice(["", answer, f" {answer.upper()} ", answer + ".", "nan"])
                rows.append({"id": f"{doc}qa{q}", "task": task, "input": "Q?", "expected_output": answer,
                             "model_output": generated, "nll": rng.random()})
    return rows


def _write_directory(tmp_path: Path, seed: int = 0) -> tuple[Path, dict]:
    rng = random.Random(seed)
    data = {"forget": _rows(rng), "retain": _rows(rng)}
    for split in ("forget", "retain"):  # two shards each, as two processes would write them
        half = len(data[split]) // 2
        write_inference(tmp_path, split, data[split][:half], process=0)
        write_inference(tmp_path, split, data[split][half:], process=1)
    member = [{"id": str(i), "nll": round(rng.uniform(1, 3), 1)} for i in range(7)]  # rounding makes ties
    nonmember = [{"id": str(i), "nll": round(rng.uniform(1.5, 3.5), 1)} for i in range(9)]
    write_inference(tmp_path, "member", member)
    write_inference(tmp_path, "nonmember", nonmember)
    return tmp_path, {**data, "member": member, "nonmember": nonmember}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_directory_equals_independent_implementation(tmp_path, seed):
    directory, _ = _write_directory(tmp_path, seed)
    results = score_directory(directory, mmlu_accuracy=0.25)
    expected = independent_score(directory, 0.25)
    assert results["aggregated-terms"] == pytest.approx(expected["terms"], abs=1e-9)
    for (split, task), (regurgitation, knowledge) in expected["per_task"].items():
        assert results[f"{split}-set"][task]["regurgitation-score"] == pytest.approx(regurgitation, abs=1e-9)
        assert results[f"{split}-set"][task]["knowledge-score"] == pytest.approx(knowledge, abs=1e-9)
    assert results["harmonic-mean-task-aggregate"] == pytest.approx(expected["aggregate"], abs=1e-9)
    assert results["mia_loss_acc"] == pytest.approx(expected["auc"], abs=1e-9)
    assert results["mia_final_score"] == pytest.approx(expected["mia"], abs=1e-9)
    assert results["mmlu_average"] == 0.25
    assert results["aggregate-score"] == pytest.approx(expected["final"], abs=1e-9)
    assert json.loads((directory / "evaluation_results.json").read_text()) == results


def test_scoring_in_memory_equals_scoring_files(tmp_path):
    directory, data = _write_directory(tmp_path)
    in_memory = score_records(data["forget"], data["retain"], [r["nll"] for r in data["member"]],
                              [r["nll"] for r in data["nonmember"]], 0.3)
    assert in_memory == score_directory(directory, 0.3)


def test_a_zero_retain_term_zeroes_the_task_aggregate(tmp_path):
    retain = [dict(r, model_output="wrong") if r["task"] == "Task2" and "qa" in r["id"][-3:] else r
              for r in _rows(random.Random(0))]
    results = score_records(_rows(random.Random(1)), retain, None, None, None)
    assert results["retain-set"]["Task2"]["knowledge-score"] == 0
    assert results["harmonic-mean-task-aggregate"] == 0.0


def test_missing_mmlu_and_mia_give_no_final_score(tmp_path):
    directory, _ = _write_directory(tmp_path)
    for file in (directory / "mia_results").iterdir():
        file.unlink()
    results = score_directory(directory)
    assert results["aggregate-score"] is None and results["mmlu_average"] is None
    assert results["mia_loss_acc"] is None and results["missing"] == ["mia", "mmlu"]
    table = format_table(results)
    assert "unknown: no MIA and no MMLU result" in table
    assert table.count("\n") == 17  # header, 12 terms, aggregate, MIA AUC, MIA score, MMLU, final


def test_table_lists_terms_and_final(tmp_path):
    directory, _ = _write_directory(tmp_path)
    results = score_directory(directory, 0.5)
    table = format_table(results)
    assert "forget Task1 regurgitation" in table and "retain Task3 knowledge" in table
    assert f"{results['aggregate-score']:.4f}" in table and "unknown" not in table


def test_errors_name_the_directory_and_the_missing_term(tmp_path):
    with pytest.raises(MetricError, match=str(tmp_path)):
        score_directory(tmp_path)
    rows = [r for r in _rows(random.Random(0)) if not (r["task"] == "Task3" and "qa" in r["id"][-3:])]
    with pytest.raises(MetricError, match="no qa rows for Task3"):
        score_records(_rows(random.Random(1)), rows, None, None, None)


def test_mmlu_results_file(tmp_path):
    assert read_mmlu_accuracy(tmp_path) is None
    (tmp_path / "mmlu_results.json").write_text('{"average_acc": 0.243}')
    assert read_mmlu_accuracy(tmp_path) == 0.243
