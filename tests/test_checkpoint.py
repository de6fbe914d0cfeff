import json

import pytest
import safetensors.torch
import torch

from repedit import checkpoint
from repedit.checkpoint import (
    CheckpointError,
    atomic_directory,
    checkpoint_tensors,
    load_prefix,
    load_tensors,
    rewrite_shard,
    save_edited,
    weight_map,
    write_tensors,
)


def test_a_rewritten_shard_keeps_the_other_tensors_their_dtypes_and_the_metadata(tmp_path):
    tensors = {
        "a": torch.randn(3, 5).to(torch.bfloat16),
        "b": torch.arange(7, dtype=torch.int64),
        "c": torch.randn(2, 2, 2),
    }
    safetensors.torch.save_file(tensors, tmp_path / "in.safetensors", metadata={"format": "pt", "note": "x"})
    rewrite_shard(tmp_path / "in.safetensors", tmp_path / "out.safetensors", {"a": torch.ones(3, 5)})
    loaded = safetensors.torch.load_file(tmp_path / "out.safetensors")
    assert set(loaded) == set(tensors) and loaded["a"].dtype == torch.bfloat16
    assert torch.equal(loaded["a"], torch.ones(3, 5, dtype=torch.bfloat16))
    assert torch.equal(loaded["b"], tensors["b"]) and torch.equal(loaded["c"], tensors["c"])
    with safetensors.safe_open(tmp_path / "out.safetensors", framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "note": "x"}
    with pytest.raises(CheckpointError, match="shape"):
        rewrite_shard(tmp_path / "in.safetensors", tmp_path / "bad.safetensors", {"b": torch.zeros(8)})


def test_an_edit_of_a_target_leaves_the_target_card_heldout_text_and_withheld_sets_behind(tiny_model_dir, tmp_path):
    source = tmp_path / "target"
    source.mkdir()
    for entry in tiny_model_dir.iterdir():
        if entry.is_file():
            (source / entry.name).symlink_to(entry)
    (source / "target_card.json").write_text('{"memorization": 1.0}')
    (source / "heldout_general.jsonl").write_text('{"text": "held out"}\n')
    (source / "withheld" / "synth").mkdir(parents=True)
    (source / "withheld" / "synth" / "member.jsonl").write_text("{}\n")
    out = save_edited(source, tmp_path / "out", {}, extra_files={"note.json": "{}"})
    carried = {p.name for p in out.iterdir()}
    assert carried == {p.name for p in tiny_model_dir.iterdir() if p.is_file()} | {"note.json"}
    assert not {"target_card.json", "heldout_general.jsonl", "withheld"} & carried


def test_save_edited_changes_only_the_edited_tensor_and_links_untouched_shards(tiny_model_dir, tmp_path):
    names = weight_map(tiny_model_dir)
    edited = "model.layers.3.mlp.down_proj.weight"
    original = load_tensors(tiny_model_dir / names[edited], {edited})[edited]
    out = save_edited(tiny_model_dir, tmp_path / "out", {edited: torch.zeros_like(original)},
                      extra_files={"note.json": "{}"})
    assert weight_map(out) == names
    for name, shard in names.items():
        before = load_tensors(tiny_model_dir / shard, {name})[name]
        after = load_tensors(out / shard, {name})[name]
        assert torch.equal(after, torch.zeros_like(before)) if name == edited else torch.equal(after, before)
    untouched = next(s for s in set(names.values()) if s != names[edited])
    assert (out / untouched).stat().st_ino == (tiny_model_dir / untouched).stat().st_ino  # hard link
    assert (out / names[edited]).stat().st_ino != (tiny_model_dir / names[edited]).stat().st_ino
    assert json.loads((out / "note.json").read_text()) == {}
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()


def test_a_failed_write_keeps_the_existing_output_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "partial.bin").write_bytes(b"x")
        raise RuntimeError("disk full")
    assert (out / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_path_that_is_a_file_is_refused(tiny_model_dir, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        save_edited(tiny_model_dir, target, {})
    assert target.read_text() == "x"


def test_edit_of_an_unknown_tensor_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not in the checkpoint"):
        save_edited(tiny_model_dir, tmp_path / "out", {"model.layers.99.mlp.down_proj.weight": torch.zeros(1)})
    assert not (tmp_path / "out").exists()


def test_a_checkpoints_tensors_are_read_across_its_shards_all_or_by_name(tiny_model_dir):
    """Against the model transformers loads: every tensor of the sharded tiny model, or the two named alone."""
    from repedit.checkpoint import load_causal_lm

    state = load_causal_lm(tiny_model_dir).state_dict()
    every = checkpoint_tensors(tiny_model_dir)
    assert len(set(weight_map(tiny_model_dir).values())) > 1 and set(every) == set(weight_map(tiny_model_dir))
    assert set(every) <= set(state) and all(torch.equal(every[name], state[name]) for name in every)
    wanted = {"model.layers.0.mlp.up_proj.weight", "model.layers.5.mlp.down_proj.weight"}
    assert set(checkpoint_tensors(tiny_model_dir, wanted)) == wanted


def test_load_prefix_reads_only_the_layers_up_to_the_target(tiny_model_dir):
    prefix = load_prefix(tiny_model_dir, 2)
    assert len(prefix.layers) == 3
    assert not hasattr(prefix, "lm_head")
    with pytest.raises(CheckpointError, match="out of range"):
        load_prefix(tiny_model_dir, 6)


class Killed(BaseException):
    """A SIGKILL, simulated: no handler or cleanup of the save may run after it."""


def _one_tensor_checkpoint(directory, value: float):
    directory.mkdir()
    write_tensors(directory / "model.safetensors", {"w": torch.full((2, 3), value)})
    (directory / "config.json").write_text("{}")
    return directory


def _save_killed_at(source, out, step: int, monkeypatch, can_exchange: bool) -> list[str]:
    """``save_edited`` of w=2 into ``out``, killed before its ``step``-th filesystem step (a rename,
    an exchange or a removal); the steps it took, by name."""
    taken: list[str] = []
    real = {"replace": checkpoint.os.replace, "rmtree": checkpoint.shutil.rmtree, "exchange": checkpoint.exchange}

    def step_of(name):
        def run(*args, **kwargs):
            if len(taken) >= step:
                raise Killed
            taken.append(name)
            return real[name](*args, **kwargs) if (name != "exchange" or can_exchange) else False
        return run

    monkeypatch.setattr(checkpoint.os, "replace", step_of("replace"))
    monkeypatch.setattr(checkpoint.shutil, "rmtree", step_of("rmtree"))
    monkeypatch.setattr(checkpoint, "exchange", step_of("exchange"))
    try:
        save_edited(source, out, {"w": torch.full((2, 3), 2.0)})
    except Killed:
        pass
    finally:
        monkeypatch.undo()
    return taken


@pytest.mark.parametrize("can_exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_save_killed_after_any_step_leaves_a_complete_old_or_new_checkpoint(tmp_path, monkeypatch, can_exchange):
    source = _one_tensor_checkpoint(tmp_path / "source", 0.0)
    step, seen = 0, set()
    while True:
        work = tmp_path / f"kill-{step}"
        work.mkdir()
        out = _one_tensor_checkpoint(work / "out", 1.0)
        taken = _save_killed_at(source, out, step, monkeypatch, can_exchange)
        if can_exchange:  # one atomic swap: ``out`` is complete at every instant, with no repair
            assert load_tensors(out / "model.safetensors")["w"][0, 0].item() in (1.0, 2.0)
        checkpoint.repair_output(out)  # what the next load does
        value = load_tensors(out / "model.safetensors")["w"]
        assert value.unique().tolist() in ([1.0], [2.0]), taken
        seen.add(value[0, 0].item())
        save_edited(source, out, {"w": torch.full((2, 3), 3.0)})  # the next run saves and cleans up
        assert sorted(p.name for p in work.iterdir()) == ["out"]
        assert load_tensors(out / "model.safetensors")["w"].unique().tolist() == [3.0]
        if len(taken) < step:  # the save finished before this step: every step was tried
            break
        step += 1
    swap = ["exchange", "rmtree"] if can_exchange else ["exchange", "replace", "replace", "rmtree"]
    expected = ["replace", *swap]
    assert taken == expected and seen == {1.0, 2.0}


def test_a_single_file_checkpoint_is_edited_in_place_of_its_one_file(compact_tokenizer, synth_dir, tmp_path):
    from conftest import save_random_olmo
    from oracles import assert_complete_checkpoint

    from repedit.rmu import RMUConfig
    from repedit.unlearn import unlearn

    source = save_random_olmo(tmp_path / "single", compact_tokenizer, layers=4, max_shard_size="1GB")
    assert {p.name for p in source.glob("*.safetensors*")} == {"model.safetensors"}
    config = RMUConfig(layers=(1, 2), steps=2, batch_size=4, max_length=48, adaptive=5.0, lr=1e-3)
    out = unlearn(source, synth_dir, synth_dir, tmp_path / "out", config, progress=False).output_dir
    assert {p.name for p in out.glob("*.safetensors*")} == {"model.safetensors"}
    before, after = load_tensors(source / "model.safetensors"), load_tensors(out / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 2)}
    assert_complete_checkpoint(out, source)
