"""--calibrate-share-goals (repedit.share_goals): each forget document of the kinds named gets the goal on its
kind's line of unseen-text NLL over the share of token n-grams the retain documents hold."""

import json

import numpy as np
import pytest
import torch

from repedit.data import load_rows
from repedit.rmu import RMUConfig
from repedit.share_goals import ShareGoals, held_share, known_ngrams, share_goals
from repedit.synth import synthesize

RETAIN = ["the quick brown fox jumps over the lazy dog", "she was born in Paris and was a French poet"]


class Words:
    """A tokenizer that gives each new word the next id."""

    def __init__(self):
        self.vocabulary: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [self.vocabulary.setdefault(w, len(self.vocabulary)) for w in text.split()]}


def bigram_share(text: str, kept: list[str]) -> float:
    """The share of ``text``'s word bigrams some kept text holds, from the strings themselves."""
    def bigrams(t: str) -> list[str]:
        w = t.split()
        return [f"{a} {b}" for a, b in zip(w, w[1:], strict=False)]
    known = {g for t in kept for g in bigrams(t)}
    return sum(g in known for g in bigrams(text)) / len(bigrams(text))


@pytest.mark.parametrize("text", ["the quick brown cat", "she was born in Rome", "nothing shared here", "a b"])
def test_a_texts_share_counts_its_ngrams_the_retain_documents_hold(text):
    words = Words()
    known = known_ngrams((words(t)["input_ids"] for t in RETAIN), 2)
    assert held_share(words(text)["input_ids"], known, 2) == pytest.approx(bigram_share(text, RETAIN))
    assert held_share(words("one")["input_ids"], known, 2) == 0.0  # under n tokens


def test_each_named_kinds_document_sits_on_its_kinds_line_as_numpy_fits_it_within_the_texts_range():
    """Task3's documents get numpy's least-squares line of Task3's texts at their own share, clipped to those texts'
    NLL range; Task1's keep the goals they had."""
    generator = np.random.default_rng(0)
    text_tasks = ["Task3"] * 9 + ["Task1"] * 4
    text_shares = generator.uniform(0.0, 0.4, len(text_tasks)).tolist()
    text_nll = torch.tensor([10.0 - 6 * s + generator.normal(0, 0.3) for s in text_shares])
    tasks = ["Task1", "Task3", "Task3", "Task3", "Task3"]
    shares = [0.2, 0.0, 0.15, 0.3, 0.9]  # 0.9: past the texts' shares, its line value under their least NLL
    before = torch.tensor([7.0, 8.0, 8.0, 8.0, 8.0], dtype=torch.float64)
    goals = share_goals(before, shares, tasks, text_shares, text_nll, text_tasks, ["Task3"])
    mine = [i for i, t in enumerate(text_tasks) if t == "Task3"]
    slope, intercept = np.polyfit([text_shares[i] for i in mine], text_nll[mine].numpy(), 1)
    low, high = text_nll[mine].min().item(), text_nll[mine].max().item()
    expected = [7.0] + [float(np.clip(intercept + slope * s, low, high)) for s in shares[1:]]
    assert goals.tolist() == pytest.approx(expected)
    assert goals[4].item() == pytest.approx(low) and before[1].item() == 8.0  # clipped; the input left as it was


def test_a_kind_whose_texts_share_no_two_values_stops_the_run_naming_the_flag():
    with pytest.raises(ValueError, match=r"--calibrate-share-goals: Task3: its 2 unseen text\(s\) hold 1 distinct"):
        ShareGoals(Words(), ["a forget document"], ["the same text", "the same text", "a story"],
                   ["Task3", "Task3", "Task1"], RETAIN, ["Task3"], 2)


@pytest.mark.parametrize(("change", "message"), [
    ({"calibration.share_goals": ("Task9",)}, "--calibrate-share-goals: Task9: some of Task1, Task2, Task3"),
    ({"calibration.share_goals": ("Task3",), "calibration.share_ngram": 0}, "--calibrate-share-ngram: 0: at least 1"),
])
def test_bad_share_goal_settings_are_refused_by_their_flags(tmp_path, change, message):
    reference = tmp_path / "reference.jsonl"
    reference.write_text(json.dumps({"text": "Unseen.", "task": "Task3"}) + "\n")
    config = RMUConfig.from_dict({"layers": (2, 3, 4), "calibration.unseen": str(reference), **change})
    with pytest.raises(ValueError, match=message):
        config.validate(6)


def test_the_stop_rule_counts_a_document_reached_at_its_own_goal(tiny_model_dir, synth_dir, tmp_path):
    """A check under --calibrate-share-goals Task3 counts a Task3 document reached once its NLL is at the line of the
    Task3 texts' NLL over their share of retain bigrams, at its own share (fitted here with numpy on the documents'
    NLLs as repedit.generate scores them, the bigrams counted here), and every other document at its kind's median."""
    from repedit.calibration import Calibrator, read_unseen
    from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
    from repedit.generate import document_nll

    unseen = [r for r in load_rows(synthesize(tmp_path / "unseen", seed=1, docs=6), "retain") if r.kind == "sc"]
    scored = [r for r in load_rows(synthesize(tmp_path / "scored", seed=2, docs=6), "forget") if r.kind == "sc"]
    retain = [r.document for r in load_rows(synth_dir, "retain")]
    reference = tmp_path / "reference.jsonl"
    reference.write_text("".join(json.dumps({"text": r.document, "task": r.task}) + "\n" for r in unseen))
    model, tokenizer = load_causal_lm(tiny_model_dir, torch.float32, "cpu"), load_checkpoint_tokenizer(tiny_model_dir)
    config = RMUConfig.from_dict({"layers": (2, 3, 4), "steps": 6, "batch_size": 4, "max_length": 512,
                                  "calibration.unseen": str(reference), "calibration.share_goals": ("Task3",)})
    config.validate(6)
    calibrator = Calibrator(model, config, scored, read_unseen(config, [r.task for r in scored]), tokenizer,
                            torch.device("cpu"), retain)
    record, _ = calibrator.check(model, 1, {})

    def bigrams(text: str) -> list[tuple[int, int]]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(zip(ids, ids[1:], strict=False))

    known = {g for text in retain for g in bigrams(text)}
    share = {text: sum(g in known for g in bigrams(text)) / len(bigrams(text))
             for text in [r.document for r in unseen + scored]}
    text_nll = dict(zip([r.document for r in unseen], document_nll(model, tokenizer, [r.document for r in unseen]),
                        strict=True))
    goals = {}
    for task in {r.task for r in scored}:
        texts = [r.document for r in unseen if r.task == task]
        nlls = [text_nll[t] for t in texts]
        if task == "Task3":
            slope, intercept = np.polyfit([share[t] for t in texts], nlls, 1)
            for r in scored:
                if r.task == task:
                    goals[r.document] = float(np.clip(intercept + slope * share[r.document], min(nlls), max(nlls)))
        else:
            median = sorted(nlls)[(len(nlls) - 1) // 2]  # the lower middle one, as torch's median
            goals |= {r.document: median for r in scored if r.task == task}
    nll = document_nll(model, tokenizer, [r.document for r in scored])
    reached = [v >= goals[r.document] - 1e-6 for v, r in zip(nll, scored, strict=True)]
    assert len({goals[r.document] for r in scored if r.task == "Task3"}) > 1  # a goal of each document's own
    assert record["calibrated_documents"] == sum(reached)


def test_an_unlearning_run_reads_the_retain_documents_wording(tiny_model_dir, synth_dir, tmp_path):
    """The run hands its retain documents to the stop rule: without them no unseen text would share a bigram, and
    the line would have no two shares to go through (the ValueError above); with them the run ends and its checks
    record goals that are the Task3 documents' own."""
    from repedit.unlearn import unlearn

    texts = [(r.document, r.task) for r in load_rows(synthesize(tmp_path / "unseen", seed=1, docs=6), "retain")
             if r.kind == "sc"]
    reference = tmp_path / "reference.jsonl"
    reference.write_text("".join(json.dumps({"text": t, "task": k}) + "\n" for t, k in texts))
    common = {"layers": (2, 3, 4), "steps": 4, "batch_size": 4, "max_length": 128, "calibration.unseen": str(reference),
              "calibration.every": 2}
    plain, worded = (unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / name, RMUConfig.from_dict(config),
                             progress=False)
                     for name, config in (("plain", common), ("worded", {**common,
                                                                         "calibration.share_goals": ("Task3",)})))
    assert (worded.output_dir / "config.json").is_file()
    assert [c["target_nll"] for c in worded.calibration] != [c["target_nll"] for c in plain.calibration]
