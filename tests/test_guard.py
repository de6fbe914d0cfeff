"""Non-finite numbers and runs that make no step stop loudly and leave ``--out`` as it was."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from repedit.checkpoint import load_tensors, save_edited, weight_map
from repedit.cli import main as cli_main
from repedit.data import load_rows
from repedit.export import run_submission
from repedit.guard import NonFiniteError, NoStepError, check_nlls, check_options, check_step, json_safe
from repedit.methods import run_method
from repedit.metric import score_directory, write_inference
from repedit.rmu import RMUConfig
from repedit.runtime import Budget, StepLog, UnlearnResult, pick_device

RMU = {"method": "rmu", "layers": [2, 3, 4], "adaptive": 5.0, "loss": {"alpha": 100.0}, "lr": 1e-3, "batch_size": 4,
       "max_length": 64}


def digest(directory) -> dict[str, str]:
    """Every file of a directory by content, to tell whether a run changed it."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_check_step_names_the_first_bad_term_then_gradients_then_weights():
    good, nan = torch.tensor(1.0), torch.tensor(float("nan"))
    weight = torch.nn.Parameter(torch.ones(2))
    weight.grad = torch.ones(2)
    check_step(1, {"forget": good, "loss": good}, {"w": weight})
    with pytest.raises(NonFiniteError, match=r"step 7: the retain loss is nan"):
        check_step(7, {"loss": nan, "forget": good, "retain": nan}, {"w": weight})
    weight.grad = torch.tensor([0.0, math.inf])
    with pytest.raises(NonFiniteError, match=r"step 2: the gradient of w is not finite"):
        check_step(2, {"loss": good}, {"w": weight})
    weight.grad, weight.data = torch.ones(2), torch.tensor([math.nan, 0.0])
    with pytest.raises(NonFiniteError, match=r"step 3: the weight w is not finite"):
        check_step(3, {"loss": good}, {"w": weight})


def test_step_log_writes_null_for_non_finite_values(tmp_path):
    log = tmp_path / "log.jsonl"
    with StepLog(UnlearnResult(tmp_path, "rmu"), 1, "rmu", (), log, enabled=False) as steps:
        steps.add({"step": 1, "forget": math.nan, "retain": math.inf, "alpha": 2.0})
    assert json.loads(log.read_text(), parse_constant=pytest.fail) == {"step": 1, "forget": None, "retain": None,
                                                                      "alpha": 2.0}
    assert json_safe({"a": -math.inf, "b": "x"}) == {"a": None, "b": "x"}


@pytest.mark.parametrize("option", ["lr", "time_budget"])
def test_non_finite_options_are_refused_by_name(option):
    with pytest.raises(NonFiniteError, match=rf"^--{option.replace('_', '-')}: inf is not a finite number"):
        check_options(RMUConfig(layers=(1,), **{option: math.inf}))
    with pytest.raises(NonFiniteError, match=r"^--layers: \(1, nan\)"):
        check_options(RMUConfig(layers=(1, math.nan)))  # type: ignore[arg-type]


def test_nan_nlls_are_refused_naming_the_row_before_scoring(tmp_path):
    with pytest.raises(NonFiniteError, match=r"member: row 'b' has NLL nan"):
        check_nlls("member", ["a", "b"], [1.0, math.nan])
    row = {"id": "1", "task": "Task1", "input": "q", "expected_output": "a", "model_output": "a", "nll": 1.0}
    for split in ("forget", "retain"):
        write_inference(tmp_path, split, [row])
    write_inference(tmp_path, "member", [{"id": "m", "nll": math.nan}])
    write_inference(tmp_path, "nonmember", [{"id": "n", "nll": 2.0}])
    with pytest.raises(NonFiniteError, match=r"mia_results member: row 'm' has NLL nan"):
        score_directory(tmp_path)


def test_a_diverging_run_exits_non_zero_naming_the_step_and_term_and_keeps_out(tiny_model_dir, synth_dir,
                                                                               tmp_path, capsys):
    out = save_edited(tiny_model_dir, tmp_path / "out", {})  # an earlier good checkpoint
    before = digest(out)
    common = ["--model", str(tiny_model_dir), "--forget", str(synth_dir), "--retain", str(synth_dir),
              "--out", str(out), "--steps", "20", "--batch-size", "4", "--max-length", "48"]
    assert cli_main(["unlearn", *common, "--layers", "2,3,4", "--adaptive", "5", "--lr", "1e6"]) == 2
    assert cli_main(["unlearn", *common, "--method", "graddiff", "--last-layers", "2", "--lr", "1e12"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("repedit unlearn: error")]
    assert len(errors) == 2, errors
    for line in errors:
        assert "error: step " in line and ("loss is" in line or "not finite" in line), line
    assert digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_run_with_no_step_is_an_error_unless_a_model_must_be_left(tiny_model_dir, synth_dir, tmp_path, caplog):
    out = save_edited(tiny_model_dir, tmp_path / "out", {"model.layers.0.mlp.down_proj.weight": torch.zeros(64, 128)})
    before = digest(out)
    rows = load_rows(synth_dir, "forget"), load_rows(synth_dir, "retain")
    config = RMUConfig(layers=(2,), adaptive=5.0, steps=3, batch_size=4, max_length=48)
    device, dtype = pick_device("cpu")
    with pytest.raises(NoStepError, match=r"no unlearning step made .*time budget.*left as it was"):
        run_method(tiny_model_dir, *rows, out, config, device, dtype, Budget(1e-3), progress=False)
    assert digest(out) == before
    result = run_method(tiny_model_dir, *rows, out, config, device, dtype, Budget(1e-3, leave_model=True),
                        progress=False)
    warned = [r for r in caplog.records if r.name == "repedit.guard" and r.levelname == "WARNING"]
    assert result.losses == [] and "output is the input model unchanged" in " ".join(r.getMessage() for r in warned)
    names = weight_map(tiny_model_dir)
    for name, shard in names.items():  # the input's weights, no longer the zeroed earlier checkpoint
        assert torch.equal(load_tensors(out / shard, {name})[name], load_tensors(tiny_model_dir / shard, {name})[name])


def test_a_diverging_submission_leaves_the_input_model_and_says_so(tiny_model_dir, synth_dir, tmp_path, capsys):
    spec = {"time_budget": 600, "calibration": {}, "search": None, "config": {**RMU, "lr": 1e6, "steps": 20}}
    assert run_submission(tiny_model_dir, tmp_path / "out", synth_dir, synth_dir, spec) == []
    err = capsys.readouterr().err
    assert "NonFiniteError: step " in err and "the input model unchanged unless" in err
    assert digest(tmp_path / "out") == digest(tiny_model_dir)
