"""Stand-ins for the kinds the calibration texts lack (``--calibrate-standins``): the swap fraction is the
one that matches the texts a kind does have, and the method then forgets every kind with them."""

import json
import statistics

import pytest
import torch
from conftest import forgetting_step
from tiny_settings import METHOD_TEST, tasked_reference

from repedit.calibration import unseen_texts
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import load_rows
from repedit.generate import document_nll
from repedit.rmu import RMUConfig
from repedit.standins import RECOMBINED, make_standins
from repedit.synth import synthesize
from repedit.unlearn import unlearn


def kind(task: str, documents: int, words: int = 40) -> list[str]:
    """Documents whose words are numbered in order ("Task1:d3:w7"), and every one has "the" (its template)."""
    return [" ".join(["the", *(f"{task}:d{d}:w{w}" for w in range(words))]) for d in range(documents)]


def broken_pairs(text: str) -> float:
    """The share of adjacent numbered words that are not one document's consecutive words: a word swapped
    for another document's breaks both of its pairs, so at swap fraction f it is 1 - (1 - f)^2."""
    words = text.split()[1:]
    broken = 0
    for a, b in zip(words, words[1:], strict=False):
        (ta, da, wa), (tb, db, wb) = a.split(":"), b.split(":")
        broken += not (ta == tb and da == db and int(wb[1:]) == int(wa[1:]) + 1)
    return broken / (len(words) - 1)


def test_the_fraction_matches_the_texts_of_a_kind_they_have_and_stand_ins_fill_the_others():
    """An NLL stand-in that is the share of broken word pairs: the texts (Task3's) sit at 0.36, so the
    fraction is 1 - sqrt(1 - 0.36) = 0.2 (the analytic inverse, not the bisection); Task1 and Task2 get
    stand-ins of their first half of documents, the anchor recombined documents and stand-ins of the second
    half of every kind; the template word is never swapped."""
    retain = {task: kind(task, 16) for task in ("Task1", "Task2", "Task3")}
    texts = [f"REFERENCE {i}" for i in range(5)]

    def median_nll(documents: list[str]) -> float:
        return statistics.median(0.36 if d.startswith("REFERENCE") else broken_pairs(d) for d in documents)

    made = make_standins(median_nll, retain, texts, ["Task3"] * 5, ["Task1", "Task2", "Task3"], template=0.5, count=6)
    assert made.matched_on == "Task3"
    assert made.fraction == pytest.approx(0.2, abs=0.04)
    assert made.texts[:5] == texts and made.tasks == ["Task3"] * 5 + ["Task1"] * 6 + ["Task2"] * 6
    for text, task in zip(made.texts[5:], made.tasks[5:], strict=True):
        kept = [w for w in text.split()[1:] if w.startswith(f"{task}:")]
        assert text.split()[0] == "the" and len(kept) >= 20
        assert {int(w.split(":")[1][1:]) for w in kept} <= set(range(6))  # the first half's documents
    assert len(made.anchors) == 3 * RECOMBINED + 3 * 6
    for text in made.anchors[3 * RECOMBINED:]:
        documents = [int(w.split(":")[1][1:]) for w in text.split()[1:]]
        assert 6 <= statistics.mode(documents) < 12  # the second half's: none the calibration's stand-ins used


def test_a_kind_s_scale_multiplies_its_fraction_and_a_small_half_is_swapped_again_up_to_the_count():
    """Scales (1, 0.5, 1): Task2's stand-ins break 1 - (1 - 0.1)^2 = 0.19 of their pairs where Task1's break
    0.36, the anchor's Task2 stand-ins too; a kind of 6 documents (a half of 3) gives 6 stand-ins a use,
    no two alike, each of one of the half's documents."""
    retain = {"Task1": kind("Task1", 40), "Task2": kind("Task2", 6), "Task3": kind("Task3", 40)}
    texts = [f"REFERENCE {i}" for i in range(5)]

    def median_nll(documents: list[str]) -> float:
        return statistics.median(0.36 if d.startswith("REFERENCE") else broken_pairs(d) for d in documents)

    made = make_standins(median_nll, retain, texts, ["Task3"] * 5, ["Task1", "Task2", "Task3"], template=0.5,
                         count=6, scales={"Task2": 0.5})
    assert made.fractions["Task2"] == pytest.approx(made.fraction / 2) and made.fractions["Task1"] == made.fraction
    by_task = {t: [x for x, u in zip(made.texts, made.tasks, strict=True) if u == t] for t in ("Task1", "Task2")}
    assert statistics.mean(map(broken_pairs, by_task["Task1"])) == pytest.approx(0.36, abs=0.06)
    assert statistics.mean(map(broken_pairs, by_task["Task2"])) == pytest.approx(0.19, abs=0.06)
    assert len(by_task["Task2"]) == 6 and len(set(by_task["Task2"])) == 6
    assert {statistics.mode(int(w.split(":")[1][1:]) for w in x.split()[1:]) for x in by_task["Task2"]} == {0, 1, 2}
    anchored = [x for x in made.anchors[3 * RECOMBINED:] if "Task2:" in x]
    assert len(anchored) == 6 and statistics.mean(map(broken_pairs, anchored)) == pytest.approx(0.19, abs=0.06)


def test_too_few_documents_or_no_kind_to_match_on_is_a_clear_error():
    retain = {"Task1": kind("Task1", 3), "Task3": kind("Task3", 8)}
    with pytest.raises(ValueError, match="--calibrate-standins: too few retain documents of Task1"):
        make_standins(lambda d: 1.0, retain, ["x"], ["Task3"], ["Task1", "Task3"], template=0.1)
    with pytest.raises(ValueError, match="no task has both --calibrate texts and 4 retain documents"):
        make_standins(lambda d: 1.0, {"Task1": kind("Task1", 8)}, ["x"], ["Task2"], ["Task1"], template=0.1)


def test_texts_without_tasks_are_refused_and_nothing_is_written(tiny_model_dir, synth_dir, tmp_path):
    reference = tmp_path / "reference.jsonl"
    reference.write_text(json.dumps({"text": "An unseen biography."}) + "\n")
    config = RMUConfig.from_dict({"layers": (2, 3, 4), "steps": 2, "calibration.unseen": str(reference),
                                  "calibration.standins": 0.1})
    with pytest.raises(ValueError, match="--calibrate-standins: .*reference.jsonl: the texts need a task field"):
        unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe", [{}, {"loss.destination_keep_margin": 2.5, "loss.recombined_pii_anchors": 16}],
                         ids=["the method", "with the preset's kept directions and recombined PII biographies"])
def test_with_texts_of_one_kind_the_method_forgets_every_kind_and_needs_its_misdirection(tiny_target, synth_dir,
                                                                                       tmp_path, recipe):
    """Unseen texts of Task3 only, as the challenge gives: without stand-ins the run refuses (no texts of
    Task1, Task2); with them the stop rule scores every kind, forget documents of every kind rise from
    about 0.05 nats to at least 35% of unseen documents' NLL (on the tiny target even stand-ins with every
    particular swapped stay more familiar than unseen text, so their level is lower), other unseen
    documents (never read) move less than 25%, retain rows stay under 0.1 nats; with its misdirection
    weighted 0 nothing is forgotten (NLL under 1) in as many steps as the method took to pass 2 nats. The same
    with the preset's terms that need no file: each kind's directions kept by its margin, and recombined retain PII
    biographies held."""
    unseen = synthesize(tmp_path / "unseen", seed=1, docs=4)
    reference = tasked_reference(tmp_path / "reference.jsonl", [(r.document, r.task) for r in
                                                                 load_rows(unseen, "retain")
                                                                 if r.kind == "sc" and r.task == "Task3"])
    withheld = [r.document for r in load_rows(unseen, "forget") if r.kind == "sc"]
    documents = [r for r in load_rows(synth_dir, "forget") if r.kind == "sc"]
    retained = [r.document for r in load_rows(synth_dir, "retain") if r.kind == "sc"]
    tokenizer = load_checkpoint_tokenizer(tiny_target)

    def nlls(model_dir, texts):
        return document_nll(load_causal_lm(model_dir, torch.float32, "cpu"), tokenizer, texts)

    settings = {**METHOD_TEST, "calibration.unseen": reference, **recipe}
    with pytest.raises(ValueError, match="no unseen texts of Task1, Task2"):
        unlearn(tiny_target, synth_dir, synth_dir, tmp_path / "refused", RMUConfig.from_dict(settings), progress=False)
    before = statistics.mean(nlls(tiny_target, withheld))

    def run(name, **changes):
        """A run of the method with stand-ins, and its forget documents' mean NLL by kind."""
        config = RMUConfig.from_dict({**settings, "calibration.standins": 0.1, **changes})
        result = unlearn(tiny_target, synth_dir, synth_dir, tmp_path / name, config, progress=False)
        assert result.standins["matched_on"] == "Task3" and 0 < result.standins["fraction"] < 1
        assert set(result.calibration[0]["task_auc"]) == {"Task1", "Task2", "Task3"}
        # the margin chose the kinds' shares (the recombined biographies the anchor holds: their own test below)
        assert (result.kept_shares or {}).get("margin") == recipe.get("loss.destination_keep_margin")
        forget = nlls(result.output_dir, [r.document for r in documents])
        return result, {t: statistics.mean(v for v, r in zip(forget, documents, strict=True) if r.task == t)
                        for t in ("Task1", "Task2", "Task3")}

    # METHOD_TEST's 120 steps: capped at 200 instead, both runs wrote the same weights (their best checks came sooner)
    result, forget = run("method")
    method = {"forget": forget, "withheld": statistics.mean(nlls(result.output_dir, withheld)),
              "retain": statistics.mean(nlls(result.output_dir, retained))}
    reference_nll = statistics.mean(nlls(tiny_target, unseen_texts(reference)))
    assert min(method["forget"].values()) >= 0.35 * reference_nll, (method, reference_nll)
    assert method["withheld"] <= 1.25 * before, (method, before)
    assert method["retain"] < 0.1, method
    # without its misdirection, as many steps as the method took to pass 2 nats
    steps = forgetting_step(result.calibration, 2.0)
    off = run("off", **{"loss.misdirection": 0.0, "steps": steps, "calibration.every": steps})[1]
    assert max(off.values()) < 1.0, (off, result.calibration)


def task3_setup(tiny_model_dir, synth_dir, tmp_path):
    """Unseen texts of Task3 alone (so a run makes stand-ins of the other two kinds), the tiny model and its
    tokenizer, the synthetic retain rows and the three tasks."""
    unseen = synthesize(tmp_path / "unseen", seed=1, docs=4)
    reference = tasked_reference(tmp_path / "reference.jsonl", [(r.document, r.task) for r in
                                                                 load_rows(unseen, "retain")
                                                                 if r.kind == "sc" and r.task == "Task3"])
    model, tokenizer = load_causal_lm(tiny_model_dir, torch.float32, "cpu"), load_checkpoint_tokenizer(tiny_model_dir)
    return reference, model, tokenizer, load_rows(synth_dir, "retain"), ["Task1", "Task2", "Task3"]


def test_anchor_texts_are_held_beside_the_standins_anchors(tiny_model_dir, synth_dir, tmp_path):
    """``--anchor-texts`` and ``--invented-anchors`` with ``--calibrate-standins``: the anchor holds the given
    texts, then that many invented documents of every kind, then every text the stand-ins give it (their
    recombined and swapped retain documents), not one in place of another."""
    from repedit.calibration import read_unseen, with_standins
    from repedit.synth import invented_documents

    reference, model, tokenizer, retain, tasks = task3_setup(tiny_model_dir, synth_dir, tmp_path)
    given = [f"An invented story number {i} about a lighthouse keeper." for i in range(3)]
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text("".join(json.dumps({"text": t}) + "\n" for t in given))
    held = {}
    for texts, invented in ((None, 0), (str(anchors), 0), (str(anchors), 2)):
        config = RMUConfig.from_dict({**METHOD_TEST, "calibration.unseen": reference, "calibration.standins": 0.1,
                                      "loss.anchor": 1.0, "loss.anchor_texts": texts,
                                      "loss.invented_anchors": invented})
        read, made = with_standins(model, tokenizer, config, read_unseen(config, tasks), retain, tasks)
        assert made.anchors
        held[texts, invented] = read.anchor_texts()
    assert held[str(anchors), 0][: len(given)] == given
    assert sorted(held[str(anchors), 0][len(given):]) == sorted(held[None, 0])
    stories_and_lives = [d["text"] for d in invented_documents(2)]  # two of each of the three kinds
    assert len(stories_and_lives) == 6 and len(set(stories_and_lives)) == 6
    assert held[str(anchors), 2] == given + stories_and_lives + held[str(anchors), 0][len(given):]


def test_recombined_pii_biographies_are_held_after_the_given_texts_and_before_the_invented(tiny_model_dir, synth_dir,
                                                                                          tmp_path):
    """``--recombined-pii-anchors``: the anchor holds that many of the retain set's PII biographies with other people's
    names and new numbers (``recombine_fields``, drawn with the run's seed) after ``--anchor-texts``' and before
    ``--invented-anchors``', and a run writes them among its anchor's texts; a retain set without two PII biographies
    to make them of is refused, naming the option, before any model loads."""
    from repedit.calibration import read_unseen, with_standins
    from repedit.standins import retain_documents
    from repedit.synth import invented_documents, recombine_fields

    reference, model, tokenizer, retain, tasks = task3_setup(tiny_model_dir, synth_dir, tmp_path)
    given = ["A lighthouse keeper's story, invented."]
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(json.dumps({"text": given[0]}) + "\n")
    values = {**METHOD_TEST, "calibration.unseen": reference, "calibration.standins": 0.1, "loss.anchor": 1.0,
              "loss.anchor_texts": str(anchors), "loss.recombined_pii_anchors": 3, "loss.invented_anchors": 1,
              "seed": 5}
    config = RMUConfig.from_dict(values)
    config.validate(6)
    read, made = with_standins(model, tokenizer, config, read_unseen(config, tasks, retain), retain, tasks)
    biographies = retain_documents(retain)["Task2"]
    recombined = recombine_fields(biographies, 3, seed=5)
    assert read.anchor_texts() == given + recombined + [d["text"] for d in invented_documents(1)] + made.anchors
    assert all(" was born on " in t and t not in biographies for t in recombined)
    unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "run", RMUConfig.from_dict({**values, "steps": 2}),
            progress=False)
    assert set(recombined) <= set(unseen_texts(str(tmp_path / "run" / "anchor_texts.jsonl")))
    with pytest.raises(ValueError, match=r"--recombined-pii-anchors: the retain set's PII biographies \(Task2\): "
                                         r"recombine_fields: needs at least 2 documents"):
        read_unseen(config, tasks, [r for r in retain if r.task != "Task2"])


def test_without_the_standins_anchors_the_anchor_holds_only_its_own_texts_and_the_stop_rule_scores_the_same(
        tiny_model_dir, synth_dir, tmp_path):
    """``--calibrate-standin-anchors false``: the stop rule scores the same stand-ins, but the anchor holds only the
    invented documents (none of the swapped or recombined retain documents that are the stand-ins' siblings), and a
    run's anchor_texts.jsonl says so; with nothing of its own to hold instead, or without stand-ins, it is refused."""
    from repedit.calibration import read_unseen, with_standins
    from repedit.synth import invented_documents

    reference, model, tokenizer, retain, tasks = task3_setup(tiny_model_dir, synth_dir, tmp_path)
    values = {**METHOD_TEST, "calibration.unseen": reference, "calibration.standins": 0.1, "loss.anchor": 1.0,
              "loss.invented_anchors": 2}
    read = {}
    for held in (True, False):
        config = RMUConfig.from_dict({**values, "calibration.standin_anchors": held})
        config.validate(6)
        read[held], made = with_standins(model, tokenizer, config, read_unseen(config, tasks), retain, tasks)
    invented = [d["text"] for d in invented_documents(2)]
    assert read[True].anchors == invented + made.anchors and len(made.anchors) > 0
    assert read[False].anchors == invented
    assert (read[False].texts, read[False].tasks) == (read[True].texts, read[True].tasks)
    config = RMUConfig.from_dict({**values, "calibration.standin_anchors": False, "steps": 2})
    unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "run", config, progress=False)
    assert unseen_texts(str(tmp_path / "run" / "anchor_texts.jsonl")) == invented
    assert json.loads((tmp_path / "run" / "unlearn.json").read_text())["standins"]["anchors_held"] == 0
    for change in ({"loss.invented_anchors": 0}, {"calibration.standins": None}):
        with pytest.raises(ValueError, match="--calibrate-standin-anchors: false needs --calibrate-standins, and"):
            RMUConfig.from_dict({**values, "calibration.standin_anchors": False, **change}).validate(6)


def test_the_anchors_limit_leaves_out_the_last_stand_ins_and_the_run_says_how_many(tiny_model_dir, synth_dir,
                                                                                   tmp_path, caplog):
    """The anchor holds ``--anchor-limit`` texts at most: its invented documents first, then the stand-ins' until
    the limit, the last kinds' swaps left out (the preset, 256 invented and 96 stand-ins a kind, is past the default
    1,024: 768 + 372). The cut is logged, naming the option, and a run records how many of the stand-ins' anchor
    texts its anchor held."""
    from repedit.calibration import read_unseen, with_standins
    from repedit.synth import invented_documents

    reference, model, tokenizer, retain, tasks = task3_setup(tiny_model_dir, synth_dir, tmp_path)
    values = {**METHOD_TEST, "calibration.unseen": reference, "calibration.standins": 0.1, "loss.anchor": 1.0,
              "loss.invented_anchors": 2}
    config = RMUConfig.from_dict(values)
    invented = [d["text"] for d in invented_documents(2)]
    read, made = with_standins(model, tokenizer, config, read_unseen(config, tasks), retain, tasks)
    assert read.anchors == invented + made.anchors and "left out" not in caplog.text  # under the cap: every one
    values["loss.anchor_limit"] = len(invented) + len(made.anchors) - 5
    config = RMUConfig.from_dict(values)
    read, made = with_standins(model, tokenizer, config, read_unseen(config, tasks), retain, tasks)
    assert read.anchors == invented + made.anchors[:-5]
    assert f"5 of the stand-ins' {len(made.anchors)} anchor texts left out" in caplog.text
    assert "--anchor-limit" in caplog.text
    unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "run", RMUConfig.from_dict({**values, "steps": 2}),
            progress=False)
    record = json.loads((tmp_path / "run" / "unlearn.json").read_text())["standins"]
    assert (record["anchors"], record["anchors_held"]) == (len(made.anchors), len(made.anchors) - 5)


def test_a_run_makes_as_many_stand_ins_a_kind_as_its_count_asks_and_refuses_none(tiny_model_dir, synth_dir, tmp_path):
    """``--calibrate-standin-count``: the stop rule scores that many stand-ins of each kind its texts lack, and the
    anchor holds as many again of each kind, each a swap of one of its half of the retain documents; a count under 1
    is refused by its flag."""
    from repedit.calibration import read_unseen, with_standins
    from repedit.standins import retain_documents

    reference, model, tokenizer, retain, tasks = task3_setup(tiny_model_dir, synth_dir, tmp_path)
    documents = retain_documents(retain)
    for count in (6, 20):
        config = RMUConfig.from_dict({**METHOD_TEST, "calibration.unseen": reference, "calibration.standins": 0.1,
                                      "calibration.standin_count": count})
        read, made = with_standins(model, tokenizer, config, read_unseen(config, tasks), retain, tasks)
        for task in ("Task1", "Task2"):
            scored = [x for x, t in zip(read.texts, read.tasks, strict=True) if t == task]
            assert len(scored) == count
            words = [set(d.split()) for d in documents[task][: len(documents[task]) // 2]]
            assert all(max(len(set(x.split()) & w) for w in words) > len(x.split()) / 2 for x in scored)
        assert len(made.anchors) == RECOMBINED * 3 + 3 * count
    with pytest.raises(ValueError, match="--calibrate-standin-count: 0: at least 1"):
        RMUConfig.from_dict({**METHOD_TEST, "calibration.unseen": reference, "calibration.standins": 0.1,
                             "calibration.standin_count": 0}).validate(6)
