import pytest
import torch
import torch.nn.functional as F
from oracles import token_nll

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import IGNORE_INDEX, Example, load_rows, training_examples
from repedit.particulars import TokenClasses, particular_weights
from repedit.rmu import RMUConfig, cache_prefix, control_vector, layer_output, rmu_losses
from repedit.step_cache import paired_batches
from repedit.unlearn import unlearn


def test_a_bigram_is_shared_only_when_two_documents_have_it():
    rows = [Example([5, 6, 7, 8], [5, 6, 7, 8]),  # document a
            Example([7, 8, 3], [IGNORE_INDEX, IGNORE_INDEX, 3]),  # a again: (7, 8) twice, one document
            Example([5, 6, 9, 8], [5, 6, 9, 8])]  # document b shares (5, 6) with a
    classes = TokenClasses.of(rows, ["a", "a", "b"])
    assert classes.shared == {(5, 6)}
    assert particular_weights(rows[0], classes).weights == [0.0, 0.0, 1.0, 1.0]  # the first token: no bigram
    assert particular_weights(rows[1], classes).weights == [0.0, 0.0, 1.0]  # unlabelled: never weighed
    assert particular_weights(rows[2], classes).labels == [5, 6, 9, 8]  # the labels stay the document's
    with pytest.raises(ValueError, match="3 examples for 2 document ids"):
        TokenClasses.of(rows, ["a", "b"])


def test_a_member_documents_particulars_are_its_own_bigrams_an_unseen_texts_those_no_member_has():
    rows = [Example([5, 6, 7, 8], [5, 6, 7, 8]), Example([5, 6, 9, 8], [5, 6, 9, 8])]  # a and b share (5, 6)
    classes = TokenClasses.of(rows, ["a", "b"])
    assert classes.member([5, 6, 7, 8]) == [False, False, True, True]
    assert classes.unseen([5, 6, 7, 3]) == [False, False, False, True]  # (6, 7) is a's: not an unseen text's own
    assert classes.unseen([9, 8, 2]) == [False, False, True]  # (9, 8) is b's


def test_a_trigram_is_shared_when_two_documents_have_all_three_tokens_in_order():
    rows = [Example([5, 6, 7, 8], [5, 6, 7, 8]), Example([4, 6, 7, 8], [4, 6, 7, 8])]  # (6, 7, 8) in both
    classes = TokenClasses.of(rows, ["a", "b"], n=3)
    assert classes.shared == {(6, 7, 8)}
    # the first two tokens have no trigram; (5, 6, 7) is a's alone, (6, 7, 8) is shared
    assert particular_weights(rows[0], classes).weights == [0.0, 0.0, 1.0, 0.0]


def naive_particulars(example: Example, others: list[list[int]], n: int) -> list[bool]:
    """Independent oracle: a labelled position whose n-gram is found in none of ``others`` by scanning."""
    ids = example.input_ids
    return [i >= n - 1 and example.labels[i] != IGNORE_INDEX
            and not any(o[j:j + n] == ids[i - n + 1:i + 1] for o in others for j in range(len(o) - n + 1))
            for i in range(len(ids))]


def synth_examples(synth_dir, tokenizer):
    forget, retain = load_rows(synth_dir, "forget"), load_rows(synth_dir, "retain")
    examples = (training_examples(forget, tokenizer, 256, whole_documents=True)
                + training_examples(retain, tokenizer, 256))
    return forget, examples, [r.document_id for r in forget + retain]


@pytest.mark.parametrize("n", [2, 4])  # the default, and --particulars-ngram 4
def test_particulars_match_a_scan_of_every_other_document_and_leave_the_template(synth_dir, tiny_model_dir, n):
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    forget, examples, documents = synth_examples(synth_dir, tokenizer)
    classes = TokenClasses.of(examples, documents, n)
    template = tokenizer(" can be reached via phone at", add_special_tokens=False)["input_ids"]
    for row, example in zip(forget, examples, strict=False):
        others = [e.input_ids for e, d in zip(examples, documents, strict=True) if d != row.document_id]
        kept = [w == 1.0 for w in particular_weights(example, classes).weights]
        assert kept == naive_particulars(example, others, n)
        if row.kind == "sc" and row.task == "Task2":  # a PII biography: its template is no particular
            ids = example.input_ids
            start = next(i for i in range(len(ids)) if ids[i:i + len(template)] == template)
            assert not any(kept[start + n - 1:start + len(template)])
            assert any(kept)


def test_a_longer_ngram_keeps_every_bigram_particular_and_adds_values_the_bigrams_call_template(synth_dir,
                                                                                               tiny_model_dir):
    """By 4-gram, PII biographies have more particulars than by bigram (a number's tokens each follow the same
    token in some other document), and every bigram particular past the third token stays one."""
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    forget, examples, documents = synth_examples(synth_dir, tokenizer)
    by = {n: TokenClasses.of(examples, documents, n) for n in (2, 4)}
    for row, example in zip(forget, examples, strict=False):
        if row.kind == "sc" and row.task == "Task2":
            bigram, fourgram = (particular_weights(example, by[n]).weights for n in (2, 4))
            assert all(f == 1.0 for b, f in zip(bigram[3:], fourgram[3:], strict=True) if b == 1.0)
            assert sum(fourgram) > 1.2 * sum(bigram), (sum(fourgram), sum(bigram))


def test_the_forget_term_weighs_each_position_by_its_next_tokens_weight(tiny_model_dir, synth_dir):
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    forget, examples, documents = synth_examples(synth_dir, tokenizer)
    classes = TokenClasses.of(examples, documents)
    weighted = [particular_weights(e, classes) for e in examples[:3]]
    [(joint, n)] = paired_batches(weighted, examples[-2:], 3, 1, tokenizer.pad_token_id)
    cached = cache_prefix(model, joint, 2, n)
    steering = 5.0 * control_vector(model.config.hidden_size, 0)
    config = RMUConfig.from_dict({"layers": (2, 3, 4), "loss.forget_tokens": "particulars", "adaptive": 5.0})
    hidden = layer_output(model, cached, 2, 4)
    losses = rmu_losses(model, config, cached, hidden[n:], steering)
    total = count = 0.0  # by hand: the position before each labelled token, at that token's weight
    for i, example in enumerate(weighted):
        per_token = (hidden[i] - steering).pow(2).mean(-1)
        for t in range(1, len(example.input_ids)):
            total += example.weights[t] * per_token[t - 1].item()
            count += example.weights[t]
    torch.testing.assert_close(losses["forget"].item(), total / count, rtol=1e-5, atol=1e-6)


def per_token_change(before, after, rows):
    """Mean NLL change of the forget documents' particular tokens and of their other tokens."""
    moved = {True: [], False: []}
    for example, particular in rows:
        ids = torch.tensor([example.input_ids])
        with torch.no_grad():
            nll = [F.cross_entropy(m(ids).logits[0, :-1], ids[0, 1:], reduction="none") for m in (before, after)]
        for i, is_particular in enumerate(particular[1:]):
            moved[is_particular].append((nll[1][i] - nll[0][i]).item())
    return {k: sum(v) / len(v) for k, v in moved.items()}


def test_misdirecting_particulars_moves_them_far_more_than_the_template(tiny_target, synth_dir, tmp_path):
    tokenizer = load_checkpoint_tokenizer(tiny_target)
    forget, examples, documents = synth_examples(synth_dir, tokenizer)
    classes = TokenClasses.of(examples, documents)
    rows = [(e, [w == 1.0 for w in particular_weights(e, classes).weights])
            for row, e in zip(forget, examples, strict=False) if row.kind == "sc"]
    before = load_causal_lm(tiny_target, torch.float32, "cpu")
    change = {}
    for name, tokens in (("document", {"loss.forget_tokens": "document"}),
                         ("particulars", {"loss.forget_tokens": "particulars"})):
        config = RMUConfig.from_dict({"layers": (2, 3, 4), "params": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
                                      "adaptive": 3.0, "lr": 3e-3, "loss.alpha": 10.0, "batch_size": 8,
                                      "max_length": 256, "steps": 30, **tokens})
        unlearn(tiny_target, synth_dir, synth_dir, tmp_path / name, config, progress=False)
        change[name] = per_token_change(before, load_causal_lm(tmp_path / name, torch.float32, "cpu"), rows)
    assert change["particulars"][True] > 0.5  # measured: +1.6 nats a particular token
    assert change["particulars"][False] < 0.25 * change["particulars"][True]  # measured: +0.10
    assert change["document"][False] > 2 * change["particulars"][False]  # measured: +0.26 the template


def bigram_owners(tokenizer, sets) -> dict[tuple[int, int], set[str]]:
    """By hand: each bigram of the forget and retain sets' documents, and the documents that have it."""
    owners: dict[tuple[int, int], set[str]] = {}
    for r in (r for name in ("forget", "retain") for r in load_rows(sets, name) if r.kind == "sc"):
        ids = tokenizer(r.document)["input_ids"]
        for pair in zip(ids, ids[1:], strict=False):
            owners.setdefault(pair, set()).add(r.document_id)
    return owners


def test_particulars_cpu_splits_an_edits_rise_on_unseen_documents_into_particulars_and_template(
        synth_dir, tiny_model_dir, tmp_path, monkeypatch):
    """bench/particulars_cpu.py --edited: each class's mean NLL rise on the unseen documents, the class of a token
    by whether its bigram occurs in a forget or retain document (by hand), its NLL from the logits (by hand); an
    edit with the target's own weights moves nothing; and each class's mean NLL on the forget documents after the
    edit, a forget token a particular where no other forget or retain document has its bigram; and each kind's unseen
    documents' rise per nat its forget documents rose (document means, by hand), none where they did not move."""
    import json
    import shutil
    import statistics
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import particulars_cpu
    from conftest import save_perturbed

    documents = {r.document: r.task for r in load_rows(synth_dir, "retain") if r.kind == "sc"}
    unseen = [(text, task) for text, task in documents.items() if task in ("Task1", "Task2")][:4]
    unseen_file = tmp_path / "unseen.jsonl"
    unseen_file.write_text("".join(json.dumps({"document": f"{t} A new ending.", "task": k}) + "\n"
                                   for t, k in unseen))
    same, moved = tmp_path / "same", tmp_path / "moved"
    shutil.copytree(tiny_model_dir, same)
    model = save_perturbed(tiny_model_dir, moved, layer=2)
    out = tmp_path / "split.json"
    monkeypatch.setattr(sys, "argv", ["particulars_cpu.py", "--target", str(tiny_model_dir), "--sets", str(synth_dir),
                                      "--unseen", str(unseen_file), "--out", str(out),
                                      "--edited", f"same={same}", f"moved={moved}"])
    particulars_cpu.main()
    found = json.loads(out.read_text())

    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    trained = [tokenizer(r.document)["input_ids"] for name in ("forget", "retain")
               for r in load_rows(synth_dir, name) if r.kind == "sc"]
    seen = {(ids[i], ids[i + 1]) for ids in trained for i in range(len(ids) - 1)}
    target = load_causal_lm(tiny_model_dir, torch.float32, "cpu")

    def class_means(m, task: str) -> dict[str, float]:
        nlls: dict[str, list[float]] = {"particulars": [], "template": []}
        for text, k in unseen:
            if k != task:
                continue
            ids = tokenizer(f"{text} A new ending.")["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(m(torch.tensor([ids])).logits[0].float(), dim=-1)
            for i in range(1, len(ids)):
                nlls["template" if (ids[i - 1], ids[i]) in seen else "particulars"].append(-logp[i - 1, ids[i]].item())
        return {k: statistics.fmean(v) for k, v in nlls.items()}

    owners = bigram_owners(tokenizer, synth_dir)

    def forget_means(m, task: str) -> dict[str, float]:
        nlls: dict[str, list[float]] = {"particulars": [], "template": []}
        for r in load_rows(synth_dir, "forget"):
            if r.kind != "sc" or r.task != task:
                continue
            ids = tokenizer(r.document)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(m(torch.tensor([ids])).logits[0].float(), dim=-1)
            for i in range(1, len(ids)):
                own = owners[(ids[i - 1], ids[i])] == {r.document_id}
                nlls["particulars" if own else "template"].append(-logp[i - 1, ids[i]].item())
        return {k: statistics.fmean(v) for k, v in nlls.items()}

    def document_mean(m, texts: list[str]) -> float:  # what the attack scores: each document's mean token NLL
        with torch.no_grad():
            return statistics.fmean(token_nll(m(ids).logits, ids).item()
                                    for ids in (torch.tensor([tokenizer(text)["input_ids"]]) for text in texts))

    for task in {k for _, k in unseen}:
        after_forget = forget_means(model, task)
        texts = {"unseen": [f"{t} A new ending." for t, k in unseen if k == task],
                 "forget": [r.document for r in load_rows(synth_dir, "forget") if r.kind == "sc" and r.task == task]}
        rise = {name: document_mean(model, t) - document_mean(target, t) for name, t in texts.items()}
        assert found[task]["edited"]["moved"]["rise_per_nat"] == pytest.approx(rise["unseen"] / rise["forget"],
                                                                              rel=1e-3)
        assert found[task]["edited"]["same"]["rise_per_nat"] is None  # the forget documents did not move
        for k in ("particulars", "template"):
            assert found[task]["edited"]["moved"]["forget"][f"{k}_nll"] == pytest.approx(after_forget[k], rel=1e-4)
            unmoved = found[task]["edited"]["same"]["forget"][f"{k}_nll"]
            assert unmoved == pytest.approx(found[task]["forget"][f"{k}_nll"])
        before, after = class_means(target, task), class_means(model, task)
        assert found[task]["edited"]["same"]["template_rise"] == pytest.approx(0.0, abs=1e-6)
        assert found[task]["edited"]["same"]["particulars_rise"] == pytest.approx(0.0, abs=1e-6)
        for k in ("particulars", "template"):
            assert found[task]["edited"]["moved"][f"{k}_rise"] == pytest.approx(after[k] / before[k] - 1, rel=1e-4)
        assert found[task]["edited"]["moved"]["template_rise"] != pytest.approx(0.0, abs=1e-3)


def test_stragglers_lists_each_forget_document_below_its_kinds_level_with_its_particulars_share(
        synth_dir, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """bench/stragglers.py: per run, one entry per forget document, its mean token NLL under the edit and under the
    oracle (by hand, from the logits), its share of particulars (bigrams no other forget or retain document has, by
    hand), and the level it is held against (its kind's, from that run's last calibration check); a run without
    per-kind levels (a baseline's) is left out, named, and a call with none that has them is refused before any model
    is loaded."""
    import json
    import statistics
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import stragglers
    from conftest import save_perturbed

    run, oracle = tmp_path / "run", tmp_path / "oracle"
    edited = save_perturbed(tiny_model_dir, run, layer=1)
    control = save_perturbed(tiny_model_dir, oracle, layer=2)
    levels = {"Task1": 3.0, "Task2": 5.0, "Task3": 100.0}
    (run / "unlearn.json").write_text(json.dumps({"calibration": [{"step": 10, "task_level": levels}]}))
    out = tmp_path / "stragglers.json"
    argv = ["stragglers.py", "--target", str(tiny_model_dir), "--sets", str(synth_dir), "--oracle", str(oracle),
            "--out", str(out), "--runs", f"edit={run}"]
    monkeypatch.setattr(sys, "argv", argv)
    stragglers.main()
    found = json.loads(out.read_text())["edit"]

    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    owners = bigram_owners(tokenizer, synth_dir)

    def mean_nll(m, ids: list[int]) -> float:
        with torch.no_grad():
            logp = torch.log_softmax(m(torch.tensor([ids])).logits[0].float(), dim=-1)
        return statistics.fmean(-logp[i - 1, ids[i]].item() for i in range(1, len(ids)))

    forget = {r.document_id: r for r in load_rows(synth_dir, "forget") if r.kind == "sc"}
    assert len(found) == len(forget)
    for entry, row in zip(found, forget.values(), strict=True):
        ids = tokenizer(row.document)["input_ids"]
        own = [owners[(ids[i - 1], ids[i])] == {row.document_id} for i in range(1, len(ids))]
        assert entry["task"] == row.task and entry["level"] == levels[row.task]
        assert entry["particular_share"] == pytest.approx(statistics.fmean(own))
        assert entry["nll"] == pytest.approx(mean_nll(edited, ids), rel=1e-4)
        assert entry["oracle_nll"] == pytest.approx(mean_nll(control, ids), rel=1e-4)
    assert any(e["nll"] < e["level"] for e in found) and any(e["nll"] >= e["level"] for e in found)

    # a baseline's run (no stop level) beside it is left out, named, and the edit's entries are the same
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "unlearn.json").write_text(json.dumps({"calibration": []}))
    monkeypatch.setattr(sys, "argv", [*argv, f"none={empty}"])
    stragglers.main()
    assert json.loads(out.read_text()) == {"edit": found}
    assert "none: no per-kind levels" in capsys.readouterr().out
    # with no run of levels, refused before any model is loaded
    monkeypatch.setattr(sys, "argv", [*argv[:-1], f"none={empty}"])
    monkeypatch.setattr(stragglers, "load_causal_lm", None)
    with pytest.raises(SystemExit, match="no run has per-kind levels.*empty"):
        stragglers.main()
