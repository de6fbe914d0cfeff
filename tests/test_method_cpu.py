"""bench/method_cpu.py's ``--real`` set: the first documents a task of a challenge split, every row of each, laid out
as ``synthesize`` lays out its set, so that the tiny target can memorize real documents."""

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import TASKS, load_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import method_cpu  # noqa: E402


def test_real_subset_takes_the_first_documents_of_each_task_with_all_their_rows_and_mia_files(synth_dir, tmp_path):
    split = tmp_path / "semeval25" / "train"  # a challenge layout: the split, and mia_data beside it
    split.mkdir(parents=True)
    for name in ("forget.jsonl", "retain.jsonl"):
        shutil.copy(synth_dir / name, split / name)
    shutil.copytree(synth_dir / "mia_data", tmp_path / "semeval25" / "mia_data")
    folder = method_cpu.real_subset(split, tmp_path / "subset", 2)
    for name in ("forget", "retain"):
        source = load_rows(split, name)
        first: dict[str, list[str]] = {}
        for row in source:  # file order, by hand
            ids = first.setdefault(row.task, [])
            if row.document_id not in ids:
                ids.append(row.document_id)
        kept = {d for ids in first.values() for d in ids[:2]}
        assert [r.id for r in load_rows(folder, name)] == [r.id for r in source if r.document_id in kept]
        assert Counter(r.task for r in load_rows(folder, name) if r.kind == "sc") == {t: 2 for t in first}
    members = [json.loads(line)["document"] for line in (folder / "mia_data" / "member.jsonl").read_text().splitlines()]
    assert members == [r.document for r in load_rows(folder, "forget") if r.kind == "sc" and r.task == "Task3"]
    nonmembers = (folder / "mia_data" / "nonmember.jsonl").read_text().splitlines()
    given = (synth_dir / "mia_data" / "nonmember.jsonl").read_text().splitlines()
    assert [json.loads(x)["document"] for x in nonmembers] == [json.loads(x)["document"] for x in given[:2]]


def test_sampled_anchors_continue_each_invented_documents_opening_with_the_targets_own_tokens(tiny_target, tmp_path):
    """Each anchor opens as the invented document it stands for (its first tokens, by the target's tokenizer) and
    goes on in text the target sampled, as long as that document at most; the document's task stays with it."""
    from repedit.checkpoint import load_checkpoint_tokenizer
    from repedit.synth import invented_documents

    file = method_cpu.sampled_anchors(tmp_path, tiny_target, per_kind=2, prompt=8)
    anchors = [json.loads(line) for line in file.read_text().splitlines()]
    tokenizer = load_checkpoint_tokenizer(tiny_target)
    invented = invented_documents(2)
    assert [a["task"] for a in anchors] == [d["task"] for d in invented]
    for anchor, document in zip(anchors, invented, strict=True):
        opening = tokenizer(document["text"], add_special_tokens=False)["input_ids"]
        made = tokenizer(anchor["text"], add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(made[:8]) == tokenizer.decode(opening[:8])
        assert anchor["text"] != document["text"] and 8 < len(made) <= len(opening) + 2


def test_the_retrain_oracle_is_the_targets_build_without_the_forget_rows_and_is_built_once(tmp_path, monkeypatch):
    """``--oracle``: the same preset, data, seed and held sets as the target's build, the forget rows excluded as
    well; a second call finds the oracle's card and builds nothing."""
    builds: list[tuple] = []

    def fake_build(preset, data, out, **options):  # records the call and leaves the card a finished build leaves
        builds.append((preset, data, out, options))
        out.mkdir(parents=True)
        (out / "target_card.json").write_text("{}")

    monkeypatch.setattr(method_cpu, "build_target", fake_build)
    method_cpu.build(tmp_path, None, tmp_path / "target")
    oracle = method_cpu.retrain_oracle(tmp_path, None)
    assert method_cpu.retrain_oracle(tmp_path, None) == oracle == tmp_path / "oracle"
    assert len(builds) == 2
    (preset, data, _, target), (oracle_preset, oracle_data, out, options) = builds
    assert (oracle_preset, oracle_data, out) == (preset, data, tmp_path / "oracle")
    held = [tmp_path / "reference_rows.jsonl", tmp_path / "withheld_rows.jsonl"]
    assert target["exclude"] == held
    assert options == {**target, "exclude": [*held, tmp_path / "data" / "forget.jsonl"]}


def test_oracle_ks_reads_each_kinds_forget_documents_against_the_oracles(tiny_target, tiny_model_dir, synth_dir,
                                                                         tmp_path):
    """bench/oracle_ks_cpu.py: the oracle against itself is 0 on every kind, in absolute NLLs and against its own
    levels; a random model, whose forget documents all read far less likely than a model that memorized them, and
    as likely as its unseen texts, is 1 on every kind and pooled, both ways. Each model's level is its median NLL of
    the kind's reference texts, the lower middle one for an even count as the stop rule's (computed here apart)."""
    import oracle_ks_cpu

    from repedit.data import load_documents
    from repedit.generate import document_nll

    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(synth_dir)
    (work / "oracle").symlink_to(tiny_target)  # the memorizing target in the oracle's place
    unseen = load_documents(synth_dir / "mia_data" / "nonmember.jsonl")
    kinds = [TASKS[i % 3] for i in range(len(unseen))]
    (work / "reference.jsonl").write_text("".join(json.dumps({"text": t, "task": k}) + "\n"
                                                  for t, k in zip(unseen, kinds, strict=True)))
    result = oracle_ks_cpu.runs_against_oracle(work, [tiny_target, tiny_model_dir])
    same, random = (result["runs"][str(path)] for path in (tiny_target, tiny_model_dir))
    assert set(same["ks"].values()) == {0.0} and same["pooled"] == 0.0 and set(same["own_ks"].values()) == {0.0}
    assert set(random["ks"].values()) == {1.0} and random["pooled"] == 1.0 and set(random["own_ks"].values()) == {1.0}
    assert all(random["median"][t] > 2 + result["oracle_median"][t] for t in result["oracle_median"])
    nll = document_nll(load_causal_lm(tiny_model_dir), load_checkpoint_tokenizer(tiny_model_dir), unseen)
    by_kind = {t: sorted(v for v, k in zip(nll, kinds, strict=True) if k == t) for t in TASKS}
    assert random["level"] == pytest.approx({t: v[(len(v) - 1) // 2] for t, v in by_kind.items()}, abs=1e-4)
