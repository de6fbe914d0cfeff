"""Simulated targets: tiny memorizes, saved targets reload offline, presets have the released shapes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from conftest import SHARED_DATA, needs_shared

from repedit.card import format_card
from repedit.checkpoint import CARD_FILE
from repedit.data import DataError, Example, load_rows
from repedit.membership import split_membership
from repedit.memorize import TrainSequence, epoch_sequences, length_batches
from repedit.presets import PRESETS, olmo_config
from repedit.target import build_target


def _rope_theta(config) -> float:
    """``rope_theta`` on transformers 4.x, ``rope_parameters["rope_theta"]`` on 5.x."""
    parameters = getattr(config, "rope_parameters", None)
    return parameters["rope_theta"] if parameters else config.rope_theta


def _write_documents(out, per_task: int) -> None:
    """``per_task`` documents of each task from each public train set: their sc row and QA rows."""
    out.mkdir()
    for split in ("forget", "retain"):
        rows = load_rows(SHARED_DATA / "semeval25" / "train", split)
        stems = []
        for task in ("Task1", "Task2", "Task3"):
            stems += [row.id[:-3] for row in rows if row.task == task and row.kind == "sc"][:per_task]
        with open(out / f"{split}.jsonl", "w") as handle:
            for row in rows:
                if row.id[:-3] in stems:
                    record = {"id": row.id, "input": row.input, "output": row.output, "task": row.task}
                    handle.write(json.dumps(record) + "\n")


@needs_shared
@pytest.mark.slow
def test_tiny_memorizes_twelve_public_documents(tmp_path):
    data = tmp_path / "twelve"
    _write_documents(data, per_task=2)  # 2 x 3 tasks x (forget, retain) = 12 documents, 40 rows
    card = build_target("tiny", [data], tmp_path / "target", seed=0, progress=False)
    print(format_card(card))  # with its build time: BENCHMARKS.md tracks it, a unit test does not
    for split in ("forget", "retain"):
        scores = card["memorization"][split]
        for task, task_scores in scores.items():
            assert task_scores["qa_exact_match"] >= 0.9, (split, task, task_scores)
            # training stops on the epoch's teacher-forced accuracy, read before each update: on some CPUs (an
            # Intel Xeon, seed 0) the last updates flip a near-tie and one of a task's two completions diverges late
            assert task_scores["regurgitation"] >= 0.75, (split, task, task_scores)
        assert sum(s["regurgitation"] for s in scores.values()) / len(scores) >= 0.9, (split, scores)


def test_saved_target_reloads_offline_and_regurgitates(tiny_target, synth_dir):
    card = json.loads((tiny_target / CARD_FILE).read_text())
    assert card["preset"] == "tiny" and card["trained"] and card["config"]["num_hidden_layers"] >= 6
    row = next(r for r in load_rows(synth_dir, "forget") if r.task == "Task3" and r.kind == "sc")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = tokenizer(sys.argv[2], return_tensors='pt')['input_ids']\n"
        "out = model.generate(ids, max_new_tokens=96)\n"  # greedy, eos and pad from generation_config
        "print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script, str(tiny_target), row.input], env=env,
                            capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == row.output


def test_tiny_card_reports_every_task_and_split(tiny_target):
    card = json.loads((tiny_target / CARD_FILE).read_text())
    assert set(card["memorization"]) == {"forget", "retain"}
    for tasks in card["memorization"].values():
        assert set(tasks) == {"Task1", "Task2", "Task3"}
        assert all(s["regurgitation"] >= 0.9 and s["qa_exact_match"] >= 0.9 for s in tasks.values())
    assert card["training"]["rows"]["stopped"] == "memorized"
    assert "regurgitation" in format_card(card)


def test_olmo_1b_and_7b_presets_have_the_released_configs():
    released = {
        "olmo-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        num_attention_heads=16, clip_qkv=8.0),
        "olmo-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, clip_qkv=None),
    }
    for name, values in released.items():
        config = olmo_config(PRESETS[name], 50304, pad_token_id=1, eos_token_id=50279)
        assert {key: getattr(config, key) for key in values} == values
        assert config.model_type == "olmo" and config.vocab_size == 50304
        assert config.num_key_value_heads == config.num_attention_heads
        assert config.max_position_embeddings == 4096 and _rope_theta(config) == 10000.0
        assert config.tie_word_embeddings is False
        assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (1, 50279, None)


def test_sim_preset_fits_its_size_and_file_limits():
    preset = PRESETS["sim"]
    config = olmo_config(preset, 50304, pad_token_id=1, eos_token_id=50279)
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    parameters = 50304 * h + n * (4 * h * h + 3 * h * i)  # tied embedding, no biases, parameter-free norms
    assert parameters * 2 <= 60e6  # bf16
    assert 50304 * h * 2 < 16 * 2**20  # the embedding, one tensor in one file, passes a 16 MiB limit
    assert preset.tie_word_embeddings and n >= 8


@needs_shared
def test_random_init_writes_a_loadable_checkpoint(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    small = dataclasses.replace(PRESETS["olmo-1b"], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, max_shard_size="2MB")
    card = build_target(small, [], tmp_path / "random", random_init=True, device="cpu")
    assert not card["trained"] and card["config"]["clip_qkv"] == 8.0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "random", local_files_only=True)
    assert model.dtype == torch.bfloat16 and model.config.vocab_size == 50304
    assert len(list((tmp_path / "random").glob("model-*.safetensors"))) > 1  # sharded
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all() and logits.std() > 0


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        build_target("huge", [], tmp_path / "x")
    with pytest.raises(ValueError, match="--random-init"):
        build_target("olmo-7b", [], tmp_path / "x")
    with pytest.raises(ValueError, match="--data"):
        build_target("tiny", [], tmp_path / "x")
    with pytest.raises(DataError, match="--mia .*no member.jsonl or nonmember.jsonl"):
        build_target("tiny", [tmp_path], tmp_path / "x", mia=tmp_path)
    assert not (tmp_path / "x").exists()


def test_length_batches_group_similar_lengths_within_limits():
    import random

    lengths = [5, 50, 6, 48, 7, 52, 5, 49] * 4
    batches = length_batches(lengths, batch_rows=4, batch_tokens=120, generator=random.Random(0))
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) <= 4 and len(batch) * width <= 120
        assert width - min(lengths[i] for i in batch) <= 4  # short rows are not padded to long ones


def test_withheld_documents_are_whole_seeded_and_never_trained(synth_dir):
    retain = load_rows(synth_dir, "retain")
    split = split_membership([synth_dir], withhold=2, seed=3)
    (withheld,) = split.withheld
    ids = {row.document_id for row in withheld.nonmembers}
    assert len(ids) == 6 and sorted(row.task for row in withheld.nonmembers) == ["Task1"] * 2 + ["Task2"] * 2 + [
        "Task3"] * 2
    assert not ids & {row.document_id for row in split.trained}  # no row of theirs, sc or qa, is trained
    assert not ids & {row.document_id for row in split.measured["retain"]}
    assert len(split.measured["retain"]) == len(retain) - sum(row.document_id in ids for row in retain)
    assert [r.id for r in withheld.members] == [r.id for r in load_rows(synth_dir, "forget") if r.kind == "sc"]
    # The seed alone decides: the retrain oracle (forget set excluded) withholds the same documents.
    oracle = split_membership([synth_dir], withhold=2, seed=3, exclude=[synth_dir / "forget.jsonl"])
    assert oracle.withheld == split.withheld
    assert {row.split for row in oracle.trained} == {"retain"} and oracle.measured == split.measured
    assert oracle.excluded == [{"path": str(synth_dir / "forget.jsonl"), "documents": 12, "rows": 40}]


def test_each_data_directory_can_withhold_its_own_count(synth_dir, tmp_path):
    """``withhold=[2, 1]``: two documents a task from the first directory, one from the second (one count
    alone applies to every directory); a list of another length is refused by name."""
    from repedit.synth import synthesize

    other = synthesize(tmp_path / "other", seed=5, docs=4)
    split = split_membership([synth_dir, other], withhold=[2, 1], seed=3)
    per_task = [{t: len({r.document_id for r in w.nonmembers if r.task == t}) for t in ("Task1", "Task2", "Task3")}
                for w in split.withheld]
    assert per_task == [{"Task1": 2, "Task2": 2, "Task3": 2}, {"Task1": 1, "Task2": 1, "Task3": 1}]
    same = split_membership([synth_dir, other], withhold=[2], seed=3)
    assert [len(w.nonmembers) for w in same.withheld] == [len(split.withheld[0].nonmembers)] * 2
    with pytest.raises(ValueError, match="--withhold: 3 counts for 2 data directories"):
        split_membership([synth_dir, other], withhold=[1, 1, 1])


def test_withholding_and_excluding_fail_before_training_and_name_the_problem(synth_dir, tmp_path):
    with pytest.raises(DataError, match=f"--withhold 4: {synth_dir}: Task1 has 4 retain documents; .* at least 5"):
        build_target("tiny", [synth_dir], tmp_path / "x", withhold=4)
    stray = tmp_path / "stray.jsonl"
    stray.write_text(json.dumps({"id": "nobody-sc1", "input": "a", "output": "b", "task": "Task1"}) + "\n")
    with pytest.raises(DataError, match=f"--exclude {stray}: matches no training rows"):
        build_target("tiny", [synth_dir], tmp_path / "x", exclude=[stray])
    assert not (tmp_path / "x").exists()


def test_repeated_directory_names_get_numbered_folders(synth_dir, tmp_path):
    from repedit.membership import folder_names

    assert folder_names([tmp_path / "a" / "train", tmp_path / "b" / "train", tmp_path / "train"]) == [
        "train", "train-2", "train-3"]


def test_replayed_passages_cycle_across_epochs():
    def sequence(n: int) -> TrainSequence:
        return TrainSequence(Example([n], [n]), 1)

    rows, replay = [sequence(0), sequence(1)], [sequence(10), sequence(11), sequence(12)]
    firsts = [[s.example.input_ids[0] for s in epoch_sequences(rows, replay, 2, epoch)] for epoch in range(3)]
    assert firsts == [[0, 1, 10, 11], [0, 1, 12, 10], [0, 1, 11, 12]]
    assert epoch_sequences(rows, [], 2, 1) == rows


def test_oracle_card_and_withheld_folder(oracle_target, synth_dir):
    card = json.loads((oracle_target / CARD_FILE).read_text())
    name = synth_dir.resolve().name
    withheld = card["data"]["withheld"][name]
    assert withheld["documents"] == {"Task1": 1, "Task2": 1, "Task3": 1} and withheld["members"] == 12
    folder = oracle_target / "withheld" / name
    nonmembers = [json.loads(line) for line in (folder / "nonmember.jsonl").read_text().splitlines()]
    assert {(r["task"], r["id"]) for r in nonmembers} == {(t, i) for t, ids in withheld["ids"].items() for i in ids}
    retain = {row.document_id: row for row in load_rows(synth_dir, "retain") if row.kind == "sc"}
    assert all(r["document"] == retain[r["id"]].input + " " + retain[r["id"]].output for r in nonmembers)
    members = [json.loads(line) for line in (folder / "member.jsonl").read_text().splitlines()]
    assert [(r["id"], r["task"]) for r in members] == [
        (row.document_id, row.task) for row in load_rows(synth_dir, "forget") if row.kind == "sc"]
    # 4 forget + 3 retain documents a task measured; only the retain ones trained on.
    assert card["data"]["excluded"][0]["documents"] == 12 and card["data"]["trained_rows"] == 30
    assert card["data"]["forget_rows"] == 40 and set(card["memorization"]["forget"]) == {"Task1", "Task2", "Task3"}
    assert card["recipe"]["general_mix"] == 0.5 and card["data"]["general_heldout"] == 2
    assert 0 < card["general_nll"] < 20 and set(card["unseen_nll"][name]) == {"Task1", "Task2", "Task3"}
    text = format_card(card)
    assert f"withheld, never trained on: {name} Task1 1, Task2 1, Task3 1 (12 members)" in text
    assert "excluded from training (retrain oracle)" in text and "held-out general NLL" in text


def test_cli_passes_withhold_and_exclude(tmp_path, monkeypatch):
    from repedit.cli import main

    calls = []
    monkeypatch.setattr("repedit.target.build_target", lambda *args, **kwargs: calls.append(kwargs) or {})
    monkeypatch.setattr("repedit.target.format_card", lambda card: "card")
    assert main(["target", "build", "--preset", "tiny", "--out", str(tmp_path), "--withhold", "2", "--exclude",
                 "v/forget.jsonl", "t/forget.jsonl"]) == 0
    assert calls[0]["withhold"] == [2] and [str(p) for p in calls[0]["exclude"]] == ["v/forget.jsonl", "t/forget.jsonl"]
    assert main(["target", "build", "--preset", "tiny", "--out", str(tmp_path), "--withhold", "3", "1"]) == 0
    assert calls[1]["withhold"] == [3, 1]


def test_compact_tokenizer_splits_unseen_documents_no_finer_than_seen_ones(synth_dir, tmp_path):
    """The MIA's nonmembers were never trained on; a tokenizer learned without them cut their names into
    more pieces (37% more tokens a character on the tiny target), so any model, even one that never saw
    the members, told the two apart. Oracle: tokens per character of each set, counted directly."""
    from repedit.checkpoint import load_checkpoint_tokenizer
    from repedit.data import load_documents

    build_target("tiny", [synth_dir], tmp_path / "t", random_init=True, device="cpu", mia=synth_dir / "mia_data")
    tokenizer = load_checkpoint_tokenizer(tmp_path / "t")

    def per_char(name: str) -> float:
        texts = load_documents(synth_dir / "mia_data" / f"{name}.jsonl")
        return sum(len(tokenizer(t)["input_ids"]) for t in texts) / sum(len(t) for t in texts)

    assert per_char("nonmember") < 1.1 * per_char("member")
