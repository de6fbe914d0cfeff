"""--calibrate-edit-scales: the written check's edit scaled, the weights closest to calibrated written."""

import pytest
import torch
from oracles import sklearn_auc

from repedit.calibration import unseen_texts
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer, load_tensors, weight_map
from repedit.data import load_rows
from repedit.generate import document_nll
from repedit.rmu import RMUConfig
from repedit.unlearn import unlearn

# Every MLP weight of layers 2-4, whole completions misdirected, checks every 20 steps and none stopping the run.
RUN = {"layers": (2, 3, 4), "params": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), "adaptive": 3.0,
       "lr": 3e-3, "loss.alpha": 10.0, "batch_size": 8, "max_length": 512, "loss.forget_tokens": "document",
       "steps": 160, "calibration.every": 20, "calibration.tolerance": 0.0, "deterministic": True}
SCALES = (1.2, 1.5)


def distances(check: dict) -> tuple[float, float, float]:
    """How checks are ranked, written out: the worst task's AUC distance from chance, the tasks' mean, the NLL's."""
    each = [abs(a - 0.5) for a in check["task_auc"].values()]
    return max(each), sum(each) / len(each), abs(check["forget_nll"] - check["target_nll"])


def trained(model_dir) -> dict[str, torch.Tensor]:
    return {name: load_tensors(model_dir / shard, {name})[name].float() for name, shard in weight_map(model_dir).items()
            if ".mlp." in name and int(name.split(".")[2]) in (2, 3, 4)}


# bfloat16: the run under autocast, which casts each weight once a region (the first H200 reading of the option
# scored every scale as the first until the cache was cleared)
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_the_written_weights_are_the_scaled_edit_a_loss_attack_finds_closest_to_chance(tiny_target, synth_dir,
                                                                                      tmp_path, dtype):
    reference = synth_dir / "mia_data" / "nonmember.jsonl"
    # bfloat16 on a CPU without its instructions is emulated, 5x float32's time: one check and its scales ask the same
    # question (two checks took 34 s, one 15 s)
    run = {**RUN, "calibration.unseen": str(reference)} | ({"steps": 10, "calibration.every": 10} if dtype else {})
    plain = unlearn(tiny_target, synth_dir, synth_dir, tmp_path / "plain", RMUConfig.from_dict(run), dtype=dtype,
                    progress=False)
    scaled = unlearn(tiny_target, synth_dir, synth_dir, tmp_path / "scaled",
                     RMUConfig.from_dict({**run, "calibration.edit_scales": SCALES}), dtype=dtype, progress=False)
    checks = [c for c in scaled.calibration if "edit_scale" not in c]
    assert [c["task_auc"] for c in checks] == [c["task_auc"] for c in plain.calibration]  # the same run, then scaled
    records = [c for c in scaled.calibration if "edit_scale" in c]
    assert [c["edit_scale"] for c in records] == list(SCALES)
    assert records[0]["forget_nll"] != records[1]["forget_nll"]  # each scale scored as it is
    best = min(scaled.calibration, key=distances)
    # nearer chance than any check (the run falls short): a scale is written (1.2 on an Intel Xeon, 1.5 on an AMD EPYC)
    assert best.get("edit_scale") in SCALES
    frozen, check, written = trained(tiny_target), trained(plain.output_dir), trained(scaled.output_dir)
    for name, weights in frozen.items():  # the checkpoints' rounding apart, the check's edit times the scale
        edit = check[name] - weights
        error = (written[name] - weights - best["edit_scale"] * edit).abs().max()
        rounding = 2 ** -6 * weights.abs().max() if dtype else 1e-6  # bfloat16 checkpoints: a few of its steps
        assert error <= 0.02 * 0.2 * edit.abs().max() + rounding, name  # against the 0.2 x edit the scale adds
    model = load_causal_lm(scaled.output_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(scaled.output_dir)
    nonmembers = [-x for x in document_nll(model, tokenizer, unseen_texts(str(reference)))]
    documents = [r for r in load_rows(synth_dir, "forget") if r.kind == "sc"]
    for task in ("Task1", "Task2", "Task3"):  # scored by the evaluation's code; a pair of 4 x 4 flipped: 0.0625
        members = [-x for x in document_nll(model, tokenizer, [r.document for r in documents if r.task == task])]
        assert sklearn_auc(members, nonmembers) == pytest.approx(best["task_auc"][task], abs=0.07)


def test_scales_that_are_not_positive_are_refused_by_their_flag(tiny_model_dir, synth_dir, tmp_path):
    config = RMUConfig.from_dict({**RUN, "calibration.unseen": str(synth_dir / "mia_data" / "nonmember.jsonl"),
                                  "calibration.edit_scales": (0.0, 1.2)})
    with pytest.raises(ValueError, match="--calibrate-edit-scales: 0.0,1.2: positive numbers"):
        unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    assert list(tmp_path.iterdir()) == []
