"""bench/oracle_gaps.py: where a retrain oracle reads its forget documents against unseen ones of their kind."""

from __future__ import annotations

import importlib
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch
from oracles import sklearn_auc

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import load_rows
from repedit.generate import document_nll

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
oracle_gaps = importlib.import_module("oracle_gaps")


def test_the_gaps_are_the_unseen_documents_medians_and_means_less_the_forget_documents(
        tiny_model_dir, synth_dir, tmp_path, monkeypatch):
    """A withheld folder of the synthetic set's forget (members) and retain (unseen) documents: each kind's medians,
    means, gaps and AUC against document NLLs and sklearn's AUC computed here, written to --out."""
    rows = {name: [r for r in load_rows(synth_dir, name) if r.kind == "sc"] for name in ("forget", "retain")}
    withheld = tmp_path / "withheld"
    withheld.mkdir()
    for name, file in (("forget", "member.jsonl"), ("retain", "nonmember.jsonl")):
        (withheld / file).write_text("".join(json.dumps({"document": r.document, "task": r.task}) + "\n"
                                             for r in rows[name]))
    monkeypatch.setattr(sys, "argv", ["oracle_gaps.py", "--pair", f"split={tiny_model_dir}:{withheld}",
                                      "--device", "cpu", "--out", str(tmp_path / "gaps.json")])
    oracle_gaps.main()
    gaps = json.loads((tmp_path / "gaps.json").read_text())["split"]["gaps"]
    model, tokenizer = load_causal_lm(tiny_model_dir, torch.float32, "cpu"), load_checkpoint_tokenizer(tiny_model_dir)
    nll = {name: document_nll(model, tokenizer, [r.document for r in rows[name]]) for name in rows}
    assert set(gaps) == {r.task for r in rows["forget"]}
    for kind, found in gaps.items():
        forget, unseen = ([v for v, r in zip(nll[name], rows[name], strict=True) if r.task == kind]
                          for name in ("forget", "retain"))
        assert found["median_gap"] == pytest.approx(statistics.median(unseen) - statistics.median(forget), abs=1e-4)
        assert found["mean_gap"] == pytest.approx(statistics.fmean(unseen) - statistics.fmean(forget), abs=1e-4)
        assert (found["forget"], found["unseen"]) == (len(forget), len(unseen))
        assert found["auc"] == pytest.approx(sklearn_auc([-v for v in forget], [-v for v in unseen]), abs=1e-6)


def test_a_pair_without_both_paths_is_refused_by_name():
    with pytest.raises(Exception, match="--pair 'train=/a': expected NAME=ORACLE_DIR:WITHHELD_DIR"):
        oracle_gaps.pair("train=/a")
