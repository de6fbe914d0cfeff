"""bench/kind_gaps.py: a kind's attack AUC split into its forget documents' shortfall against the oracle and its
unseen documents' rise against the target, from a quality report's stored NLLs."""

from __future__ import annotations

import importlib
import json
import lzma
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
kind_gaps = importlib.import_module("kind_gaps")


def row(name: str, forget: list[float], unseen: list[float], auc: float = 0.5) -> dict:
    return {"name": name, "collateral": {"forget_nll": {"Task1": forget}, "withheld_nll": {"Task1": unseen},
                                         "all_kind_auc": {"Task1": auc}}}


ORACLE = row("oracle (retrain)", [7.0, 8.0, 9.0], [7.0, 7.5, 8.0], 0.46)
TARGET = row("target (not unlearned)", [0.1, 0.2, 0.3], [7.0, 7.2, 7.4], 1.0)


def write(path: Path, rows: list[dict]) -> Path:
    text = json.dumps({"rows": rows})
    if path.suffix == ".xz":
        path.write_bytes(lzma.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_a_run_at_the_oracles_level_reads_as_a_member_by_its_unseen_documents_rise(tmp_path):
    """The twenty-seventh build's c20 on stories: forget documents where the oracle has them, the unseen ones up."""
    run = row("c20", [7.9, 8.0, 8.2], [8.6, 8.9, 9.5], 0.8)
    report = write(tmp_path / "q.json.xz", [ORACLE, TARGET, run])
    gaps = kind_gaps.kind_gaps(kind_gaps.read_rows([report]))
    # medians by hand: the oracle's forget 8.0, the target's unseen 7.2, the run's forget 8.0 and unseen 8.9
    assert gaps["c20"]["Task1"] == pytest.approx({"shortfall": 0.0, "rise": 1.7, "gap": 0.9, "auc": 0.8})
    assert gaps["oracle (retrain)"]["Task1"] == pytest.approx(
        {"shortfall": 0.0, "rise": 0.3, "gap": -0.5, "auc": 0.46})
    assert gaps["target (not unlearned)"]["Task1"]["shortfall"] == pytest.approx(7.8)


def test_a_name_two_reports_give_different_runs_is_kept_apart_and_two_builds_are_refused(tmp_path):
    first = write(tmp_path / "a.json", [ORACLE, TARGET, row("graddiff", [1.0], [7.3])])
    second = write(tmp_path / "b.json", [ORACLE, TARGET, row("graddiff", [7.0], [7.3])])
    rows = kind_gaps.read_rows([first, second])
    assert rows["graddiff"]["collateral"]["forget_nll"]["Task1"] == [1.0]
    assert rows["graddiff (b.json)"]["collateral"]["forget_nll"]["Task1"] == [7.0]
    other_build = write(tmp_path / "c.json", [row("oracle (retrain)", [6.0], [7.0]), TARGET])
    with pytest.raises(SystemExit, match=r"c\.json: its 'oracle \(retrain\)' row differs"):
        kind_gaps.read_rows([first, other_build])


def test_a_report_without_the_oracle_row_or_without_rows_is_refused_by_name(tmp_path):
    report = write(tmp_path / "q.json", [TARGET, row("c20", [8.0], [8.9])])
    with pytest.raises(SystemExit, match=r"q\.json: no 'oracle \(retrain\)' row"):
        kind_gaps.read_rows([report])
    (tmp_path / "r.json").write_text(json.dumps({"device": "cpu"}))
    with pytest.raises(SystemExit, match=r"r\.json: no 'rows'"):
        kind_gaps.read_rows([tmp_path / "r.json"])
