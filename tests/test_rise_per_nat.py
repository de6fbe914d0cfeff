"""bench/rise_per_nat.py: each stored tune run's rise on the proxy's reference texts per nat its forget documents rose,
against its own file's input row."""

from __future__ import annotations

import csv
import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
rise_per_nat = importlib.import_module("rise_per_nat")

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
FIELDS = ["name", "label", "proxy_final", "proxy_forget_nll", "proxy_reference_nll"]


def write(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        writer.writerows(rows)
    return path


def test_each_run_is_read_against_its_own_files_input_row(tmp_path):
    first = write(tmp_path / "a.csv", [["input", "input model", 0.333, 0.1, 8.0],
                                       ["rmu-standins.c0", "base", 0.8, 7.1, 8.7],  # 0.7 / 7.0 = 0.1
                                       ["rmu-standins.c1", "lr=3", 0.5, 0.6, 8.4],  # forgot 0.5 < 1: no ratio
                                       ["graddiff.c0", "lr=1e-4", 0.3, 4.1, 10.0],  # 2.0 / 4.0 = 0.5
                                       ["rmu-standins.c2", "failed", "", "", ""]])
    second = write(tmp_path / "b.csv", [["input", "input model", 0.333, 0.2, 7.0],
                                        ["rmu-standins.c0", "base", 0.8, 6.2, 7.3]])  # 0.3 / 6.0 = 0.05
    runs = {(r["file"], r["name"]): r for path in (first, second) for r in rise_per_nat.per_nat(path)}
    assert set(runs) == {("a.csv", "rmu-standins.c0"), ("a.csv", "rmu-standins.c1"), ("a.csv", "graddiff.c0"),
                         ("b.csv", "rmu-standins.c0")}
    assert runs["a.csv", "rmu-standins.c0"]["per_nat"] == pytest.approx(0.1)
    assert runs["a.csv", "rmu-standins.c0"]["rose_share"] == pytest.approx(0.7 / 8.0)
    assert runs["a.csv", "rmu-standins.c1"]["per_nat"] is None
    assert runs["a.csv", "graddiff.c0"]["per_nat"] == pytest.approx(0.5)
    assert runs["b.csv", "rmu-standins.c0"]["per_nat"] == pytest.approx(0.05)
    assert [r["name"] for r in rise_per_nat.per_nat(first, "graddiff")] == ["graddiff.c0"]
    lines = rise_per_nat.table(list(runs.values())).splitlines()
    assert [line.split()[1] for line in lines[1:]] == ["rmu-standins.c0", "graddiff.c0", "rmu-standins.c1",
                                                       "rmu-standins.c0"]  # per file, the least rise per nat first


def test_a_stored_tune_file_reads_as_its_printed_values_say():
    """The eighty-fifth session's c20 seed 0: reference texts 7.387 -> 8.065 nats, forget documents 0.076 -> 7.043."""
    [c20] = [r for r in rise_per_nat.per_nat(RESULTS / "tune-h100-eightyfifth.csv", "rmu-standins")
             if r["name"] == "rmu-standins.c20"]
    assert c20["per_nat"] == pytest.approx((8.065 - 7.387) / (7.043 - 0.076), rel=1e-3)


def test_a_file_without_an_input_row_or_the_proxys_columns_is_refused_by_name(tmp_path):
    no_input = write(tmp_path / "no-input.csv", [["rmu-standins.c0", "base", 0.8, 7.1, 8.7]])
    with pytest.raises(SystemExit, match="no-input.csv: no scored 'input' row"):
        rise_per_nat.per_nat(no_input)
    other = tmp_path / "other.csv"
    other.write_text("name,label,proxy_final\ninput,input model,0.3\n")
    with pytest.raises(SystemExit, match="other.csv: no tune rows with proxy_forget_nll, proxy_reference_nll"):
        rise_per_nat.per_nat(other)
