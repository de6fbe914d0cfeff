"""``repedit evaluate`` and ``repedit score`` end to end on the tiny random model and synthetic data."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
import torch
from oracles import independent_score
from ranks import run_two_ranks

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.cli import main
from repedit.data import load_documents, load_rows
from repedit.metric import ROW_COLUMNS


@pytest.fixture(scope="module")
def mmlu_dir(tmp_path_factory):
    """Two subjects, two shots and five questions each, in the layout of ``../shared/data/mmlu``."""
    out = tmp_path_factory.mktemp("mmlu")
    for split, count in (("dev", 2), ("test", 5)):
        rows = [{"subject": subject, "question": f"{subject} question {i}?", "choices": ["w", "x", "y", "z"],
                 "answer": i % 4} for subject in ("anatomy", "world_religions") for i in range(count)]
        pd.DataFrame(rows).to_parquet(out / f"{split}.parquet")
    return out


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, synth_dir, mmlu_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    code = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(synth_dir), "--mia",
                 str(synth_dir / "mia_data"), "--out", str(out), "--mmlu", str(mmlu_dir), "--mmlu-limit", "6",
                 "--batch-size", "32", "--device", "cpu", "--max-new-tokens", "8"])
    assert code == 0
    return out


def test_evaluate_writes_the_official_layout(evaluated, synth_dir):
    for split in ("forget", "retain"):
        frame = pd.read_csv(evaluated / f"{split}_0.csv")
        assert list(frame.columns) == list(ROW_COLUMNS)
        assert frame["id"].tolist() == [row.id for row in load_rows(synth_dir, split)]
    members = pd.read_csv(evaluated / "mia_results" / "member_0.csv")
    assert list(members.columns) == ["id", "nll"] and members["nll"].notna().all()
    assert (evaluated / "mia_results" / "nonmember_0.csv").is_file()
    assert json.loads((evaluated / "mmlu_results.json").read_text())["limit"] == 6


def test_evaluate_scores_its_files_as_the_spec_does(evaluated, capsys):
    results = json.loads((evaluated / "evaluation_results.json").read_text())
    assert len(results["aggregated-terms"]) == 12 and results["missing"] == []
    mmlu = results["mmlu_average"]
    assert 0 <= mmlu <= 1 and mmlu * 6 == round(mmlu * 6)  # six questions
    expected = independent_score(evaluated, mmlu)
    assert results["aggregated-terms"] == pytest.approx(expected["terms"], abs=1e-9)
    assert results["mia_loss_acc"] == pytest.approx(expected["auc"], abs=1e-9)
    assert results["aggregate-score"] == pytest.approx(expected["final"], abs=1e-9)


def test_mia_nlls_equal_a_plain_loop_over_the_documents(evaluated, tiny_model_dir, synth_dir):
    """Each document's NLL as the organizers defined it: the mean cross-entropy of every next token."""
    model, tokenizer = load_causal_lm(tiny_model_dir), load_checkpoint_tokenizer(tiny_model_dir)
    for split in ("member", "nonmember"):
        written = pd.read_csv(evaluated / "mia_results" / f"{split}_0.csv")["nll"].tolist()
        expected = []
        for text in load_documents(synth_dir / "mia_data" / f"{split}.jsonl"):
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            with torch.no_grad():
                logits = model(ids).logits[0, :-1]
            expected.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())
        assert written == pytest.approx(expected, rel=1e-4)


def test_score_reads_mmlu_from_the_directory_or_the_option(evaluated, capsys):
    assert main(["score", str(evaluated)]) == 0
    table = capsys.readouterr().out
    assert "final score" in table and "unknown" not in table
    assert main(["score", str(evaluated), "--mmlu-accuracy", "0.5"]) == 0
    assert json.loads((evaluated / "evaluation_results.json").read_text())["mmlu_average"] == 0.5


def test_score_without_mmlu_says_what_is_missing(evaluated, tmp_path, capsys):
    for file in [*evaluated.glob("*_0.csv"), *(evaluated / "mia_results").glob("*.csv")]:
        target = tmp_path / file.relative_to(evaluated)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.read_bytes())
    assert main(["score", str(tmp_path)]) == 0
    assert "unknown: no MMLU result" in capsys.readouterr().out
    results = json.loads((tmp_path / "evaluation_results.json").read_text())
    assert results["aggregate-score"] is None and results["mmlu_average"] is None
    assert results["missing"] == ["mmlu"]


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["score", str(tmp_path)]) == 2
    assert "no forget_*.csv" in capsys.readouterr().err


def test_two_processes_write_what_one_writes(evaluated, tiny_model_dir, synth_dir, mmlu_dir, tmp_path):
    """``accelerate launch``'s environment, by hand: two CPU processes joined through gloo split the
    rows, gather them, and the main process writes the same files one process writes. Each leaves the
    group before it exits: a rank that exits inside it can abort once its peer has gone."""
    argv = ["evaluate", "--model", str(tiny_model_dir), "--data", str(synth_dir), "--mia", str(synth_dir / "mia_data"),
            "--out", str(tmp_path), "--mmlu", str(mmlu_dir), "--mmlu-limit", "6", "--batch-size", "32", "--device",
            "cpu", "--max-new-tokens", "8"]
    driver = (f"import torch.distributed as d\nfrom repedit.cli import main\nassert main({argv!r}) == 0\n"
              "print('group left' if not d.is_initialized() else 'still in the group')")
    outputs = run_two_ranks([sys.executable, "-c", driver])
    assert all(output.rstrip().endswith("group left") for output in outputs), [o[-300:] for o in outputs]
    assert outputs[0].count("final score") == 1 and "final score" not in outputs[1]  # the main process prints
    for name in ("forget_0.csv", "retain_0.csv"):
        one, two = pd.read_csv(evaluated / name), pd.read_csv(tmp_path / name)
        assert two.drop(columns="nll").equals(one.drop(columns="nll"))
        assert two["nll"].tolist() == pytest.approx(one["nll"].tolist(), rel=1e-4)
    for name in ("member_0.csv", "nonmember_0.csv"):
        one, two = (pd.read_csv(d / "mia_results" / name) for d in (evaluated, tmp_path))
        assert two["id"].tolist() == one["id"].tolist()
        assert two["nll"].tolist() == pytest.approx(one["nll"].tolist(), rel=1e-4)
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == ["forget_0.csv", "retain_0.csv"]
    assert json.loads((tmp_path / "mmlu_results.json").read_text()) == json.loads((evaluated / "mmlu_results.json")
                                                                                 .read_text())
