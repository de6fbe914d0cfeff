"""Bad input to the commands fails with an error naming the option, file or row, before the model loads."""

from __future__ import annotations

import importlib
import json
import shutil

import pandas as pd
import pytest
import torch

from repedit.checkpoint import CheckpointError, check_checkpoint, save_edited
from repedit.cli import main as cli_main
from repedit.data import DataError, load_rows
from repedit.demo import run_demo
from repedit.evaluate import evaluate
from repedit.options import pick_threads, set_threads


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: each error below must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")
    loop = importlib.import_module("repedit.rmu_loop")
    for name in ("load_prefix", "load_causal_lm"):
        monkeypatch.setattr(loop, name, refuse)


def run_unlearn(tiny_model_dir, synth_dir, out, *options) -> int:
    return cli_main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(synth_dir), "--retain",
                     str(synth_dir), "--out", str(out), *options])


@pytest.mark.parametrize(("argv", "message"), [
    (["unlearn", "--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["unlearn", "--coeff", "inf"], "argument --coeff: expected a finite number, got 'inf'"),
    (["unlearn", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["unlearn", "--deterministic", "maybe"], "argument --deterministic: expected true or false, got 'maybe'"),
    (["demo", "--docs", "0"], "argument --docs: expected at least 1, got '0'"),
    (["export", "--config", "c.json", "--out", "s.py", "--time-budget=-inf"],
     "argument --time-budget: expected a finite number"),
])
def test_options_that_cannot_be_right_are_refused_when_parsed(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("given", [["--calibrate-offsets", "-0.15,0.18,0.21"], ["--calibrate-offsets=-0.15,0.18,0.21"]])
def test_a_number_list_may_start_with_a_minus_after_its_flag(given, tiny_model_dir, synth_dir, tmp_path, monkeypatch):
    """``--calibrate-offsets -0.15,0.18,0.21`` reaches the run as the three numbers, as with '=' (argparse alone reads a
    word starting with a minus as an option), and leaves the other options as given."""
    made = []  # the config the run was handed; the run itself stopped there
    monkeypatch.setattr(importlib.import_module("repedit.unlearn"), "unlearn",
                        lambda *args, **kwargs: made.append(args[4]) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_unlearn(tiny_model_dir, synth_dir, tmp_path / "out", "--layers", "2", *given, "--lr", "0.5")
    assert made[0].calibration.offsets == (-0.15, 0.18, 0.21) and made[0].lr == 0.5 and made[0].layers == (2,)


@pytest.mark.parametrize(("config", "options", "message"), [
    ({"lr": float("nan")}, ["--layers", "2"], "--config {file}: 'lr': nan is not a finite number"),
    ({"layers": "2,3"}, [], "--config {file}: 'layers': got '2,3', expected tuple[int, ...]"),
    ({"layers": [9]}, [], "--config {file}: 'layers': layer(s) [9] out of range"),
    ({}, [], "--layers (not given; default (5, 6, 7)): layer(s) [6, 7] out of range"),
    ({}, ["--layers", "2", "--params", "mlp.nope"], "--params: layer 2 has no module 'mlp.nope'; known: ["),
    ({"layers": [2]}, ["--layers", "9"], "error: --layers: layer(s) [9] out of range"),
    ({"loss": {"alpha": -1.0}}, ["--layers", "2"], "--config {file}: 'loss.alpha': a weight must be >= 0"),
    ({}, ["--preset", "published"], "--preset published: 'layers': layer(s) [6, 7] out of range"),
    ({"loss": {"alpha": -1.0}}, ["--layers", "2", "--alpha", "-2"], "error: --alpha: a weight must be >= 0"),
])
def test_config_errors_name_where_the_value_came_from(tiny_model_dir, synth_dir, tmp_path, capsys, no_model_load,
                                                      config, options, message):
    file = tmp_path / "config.json"
    file.write_text(json.dumps(config))  # json writes NaN, as a hand-edited file may hold it
    assert run_unlearn(tiny_model_dir, synth_dir, tmp_path / "out", "--config", str(file), *options) == 2
    assert message.format(file=file) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_malformed_config_is_reported_with_its_position(tiny_model_dir, synth_dir, tmp_path, capsys):
    file = tmp_path / "config.json"
    file.write_text('{"layers": [2,]}')
    assert run_unlearn(tiny_model_dir, synth_dir, tmp_path / "out", "--config", str(file)) == 2
    assert f"--config: {file}: Expecting value: line 1 column 15 (char 14)" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused_by_name(tiny_model_dir, synth_dir, tmp_path, capsys, no_model_load):
    assert run_unlearn(tiny_model_dir, synth_dir, tmp_path / "out", "--layers", "2", "--device", "cuda") == 2
    err = capsys.readouterr().err
    assert "--device cuda: " in err and "; use --device cpu" in err


def test_a_set_directory_holding_parquet_and_jsonl_must_hold_the_same_rows(synth_dir, tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    for ext in ("parquet", "jsonl"):
        shutil.copy(synth_dir / f"forget.{ext}", both / f"forget.{ext}")
    assert load_rows(both, "forget") == load_rows(synth_dir / "forget.jsonl", "forget")  # as the challenge passes
    lines = (both / "forget.jsonl").read_text().splitlines()
    (both / "forget.jsonl").write_text("\n".join(lines[1:]) + "\n")
    first = json.loads(lines[0])["id"]
    with pytest.raises(DataError, match=rf"forget.parquet and forget.jsonl hold different rows \(e.g. id '{first}'\)"):
        load_rows(both, "forget")
    (both / "forget.jsonl").write_text(lines[0] + "\n{broken\n")
    with pytest.raises(DataError, match=r"holds both forget.parquet and forget.jsonl, and .*forget.jsonl: line 2: "
                                        r"not valid JSON \(Expecting property name enclosed in double quotes: "
                                        r"line 1 column 2 \(char 1\)\); remove the broken one"):
        load_rows(both, "forget")
    pd.DataFrame({"id": ["x"]}).to_parquet(both / "forget.parquet")
    (both / "forget.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"holds both .*forget.parquet: row 1: missing column\(s\) input, output"):
        load_rows(both, "forget")


def test_evaluate_names_what_the_model_directory_lacks_before_loading(tiny_model_dir, synth_dir, tmp_path):
    with pytest.raises(CheckpointError, match=r"--model: .*missing: no such directory"):
        evaluate(tmp_path / "missing", synth_dir, tmp_path / "eval")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match=r"is a file; expected a checkpoint directory"):
        check_checkpoint(tmp_path / "file")
    with pytest.raises(CheckpointError, match=r"synth.*: no model.safetensors or model.safetensors.index.json"):
        check_checkpoint(synth_dir)
    bare = save_edited(tiny_model_dir, tmp_path / "bare", {})
    for tokenizer_file in bare.glob("tokenizer*"):
        tokenizer_file.unlink()
    (bare / "special_tokens_map.json").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=r"bare: no tokenizer \(tokenizer.json or tokenizer.model or vocab"):
        evaluate(bare, synth_dir, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_demo_refuses_a_work_path_that_is_a_file(tmp_path):
    (tmp_path / "work").write_text("keep")
    with pytest.raises(ValueError, match=r"--work: .*work is a file"):
        run_demo(tmp_path / "work")
    assert (tmp_path / "work").read_text() == "keep"


def test_threads_are_the_free_cores_unless_the_user_set_them(monkeypatch):
    assert [pick_threads(2, 5.0), pick_threads(2, 0.1), pick_threads(16, 3.4), pick_threads(4, 0.0)] == [1, 2, 13, 4]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    assert set_threads() == threads


def test_an_output_that_is_the_input_is_refused_and_the_input_kept(tiny_model_dir, synth_dir, capsys, no_model_load):
    before = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()}
    assert run_unlearn(tiny_model_dir, synth_dir, tiny_model_dir, "--layers", "2") == 2
    assert "is the input checkpoint; write the edit elsewhere" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()} == before
