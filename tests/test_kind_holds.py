"""--calibrate-hold-kinds: a kind found at chance leaves the forget term and the anchor holds it where it was."""

import pytest
import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import load_rows
from repedit.document_scores import cache_documents
from repedit.kind_holds import KindHolds
from repedit.rmu import RMUConfig
from repedit.unlearn import unlearn

FIRST, LAYER = 2, 4


def test_a_kind_within_the_tolerance_is_held_at_its_documents_h_l_as_the_model_reads_them_alone(
        tiny_model_dir, synth_dir):
    """Only the kinds within the tolerance of 0.5 (either side) are held, each once; the held batches are that kind's
    documents, each at the h_L the model gives it run alone (transformers' own forward, no cached prefix)."""
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    rows = load_rows(synth_dir, "forget")
    texts, tasks = [r.document for r in rows], [r.task for r in rows]
    holds = KindHolds(cache_documents(model, texts, tokenizer, 512, 3, FIRST), tasks, 0.05, enabled=True)
    held = holds.update(model, {"Task1": 0.54, "Task2": 0.9, "Task3": 0.44}, FIRST, LAYER)
    assert holds.kinds == ["Task1"] and held.tolist() == [t == "Task1" for t in tasks]
    got = sorted((tuple(h[m.bool()].flatten().tolist()[:8]), int(m.sum())) for b, goal in holds.batches
                 for h, m in zip(goal, b.mask, strict=True))
    expected = []
    for text, task in zip(texts, tasks, strict=True):
        if task == "Task1":
            states = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states[LAYER + 1]
            expected.append((tuple(states[0].flatten().tolist()[:8]), states.shape[1]))
    assert len(got) == len(expected) > 1
    for (mine, length), (theirs, their_length) in zip(got, sorted(expected), strict=True):
        assert length == their_length and mine == pytest.approx(theirs, rel=1e-4, abs=1e-5)
    assert holds.update(model, {"Task1": 0.5, "Task2": 0.9, "Task3": 0.52}, FIRST, LAYER).tolist() == [
        t != "Task2" for t in tasks] and holds.kinds == ["Task1", "Task3"]  # Task1 not held twice
    off = KindHolds(holds.documents, tasks, 0.05, enabled=False)
    assert not off.update(model, {"Task1": 0.5}, FIRST, LAYER).any() and not off.batches


def test_a_run_holds_each_kind_from_the_first_check_that_finds_it_at_chance(tiny_model_dir, synth_dir, tmp_path):
    """The checks' records name the kinds held: each from the first check whose attack put it within the tolerance
    (read from the records themselves); the steps before it are the unheld run's, the steps after it not (its
    documents gone from the forget term, held by the anchor)."""
    reference = synth_dir / "mia_data" / "nonmember.jsonl"
    base = {"layers": (2, 3, 4), "steps": 24, "batch_size": 4, "max_length": 64, "adaptive": 5.0, "lr": 3e-3,
            "loss.alpha": 100.0, "loss.anchor": 10.0, "calibration.unseen": str(reference),
            "calibration.every": 4, "calibration.tolerance": 0.2}
    held = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "held",
                   RMUConfig.from_dict({**base, "calibration.hold_kinds": True}), progress=False)
    kinds: list[str] = []
    for check in held.calibration:
        kinds += [t for t, auc in check["task_auc"].items() if t not in kinds and abs(auc - 0.5) <= 0.2]
        assert check["held_kinds"] == kinds
    first = next(c["step"] for c in held.calibration if c["held_kinds"])
    assert first < len(held.losses)  # the fixture holds a kind mid-run
    plain = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "plain", RMUConfig.from_dict(base),
                    progress=False)

    def terms(losses: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("seconds", "forget_nll")} for r in losses]

    assert terms(held.losses[:first]) == terms(plain.losses[:first])
    assert held.losses[first]["anchor"] != plain.losses[first]["anchor"]
