"""Sweeps: the grid, the proxy's pieces, and the work split over two CPU worker processes."""

from __future__ import annotations

import json
import random
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest
from oracles import best_by_brute_force

from repedit import pool as pool_module
from repedit import sweep as sweep_module
from repedit.data import load_documents
from repedit.grid import INPUT, Candidate, expand_grid, read_grid
from repedit.methods import config_from_dict
from repedit.metric import auc
from repedit.pool import run_tasks
from repedit.proxy import (
    ProxyConfig,
    chance_distances,
    farthest_from_chance,
    lcs_length,
    lcs_recall,
    task_aucs,
)
from repedit.results import pareto_front
from repedit.sweep import sweep
from repedit.worker import Worker

GRID = {
    "base": {"layers": [2, 3, 4], "adaptive": 5.0, "loss": {"alpha": 100.0}, "batch_size": 4, "max_length": 48},
    "grid": {"lr": [1e-3, 1e-2], "steps": [2, 4]},
}
FAILING = Candidate("bad", "layer 99", {"layers": [2, 99]})
PROXY = ProxyConfig(max_rows=2, sc_tokens=8, qa_tokens=4)  # small: the test is about the split, not the score


def test_grid_is_the_product_over_the_base(tmp_path):
    candidates = expand_grid(GRID)
    assert [c.label for c in candidates] == ["lr=0.001 steps=2", "lr=0.001 steps=4", "lr=0.01 steps=2",
                                             "lr=0.01 steps=4"]
    assert all(c.config["layers"] == [2, 3, 4] for c in candidates)
    assert [c.name for c in expand_grid([{"lr": 1e-3}, {"lr": 1e-2, "method": "rmu"}])] == ["c0", "c1"]
    # a candidate keeps its name when the grid grows past ten (stored rows are matched by name)
    assert [c.name for c in expand_grid([{"lr": 1e-3 * (i + 1)} for i in range(11)])][::10] == ["c0", "c10"]
    # a configuration's label names the varying keys it has, not those only others set (no "steps=null")
    listed = expand_grid({"base": {"lr": 1e-3}, "configs": [{}, {"steps": 4}, {"lr": 1e-2, "steps": 2}]})
    assert [c.label for c in listed] == ["lr=0.001", "lr=0.001 steps=4", "lr=0.01 steps=2"]
    assert [c.label for c in expand_grid([{}, {"steps": 4}])] == ["base", "steps=4"]
    file = tmp_path / "grid.json"
    file.write_text(json.dumps({**GRID, "proxy": {"max_rows": 3}}))
    candidates, proxy = read_grid(file)
    assert len(candidates) == 4 and proxy.max_rows == 3


@pytest.mark.parametrize(("grid", "message"), [
    ({"grids": {}}, "unknown key(s) ['grids']"),
    ({"grid": {"lr": 1e-3}}, "grid value(s) of ['lr'] must be non-empty lists"),
    ({"configs": [{"lr": 1e-3}, {"coef": 2}]}, "config 1: RMU config: unknown key(s) ['coef']"),
])
def test_grid_errors_name_the_problem(grid, message):
    with pytest.raises(ValueError) as error:
        expand_grid(grid, "g.json")
    assert message in str(error.value) and str(error.value).startswith("g.json")


def test_lcs_recall_is_rouge_l_recall_without_stemming():
    from rouge_score import rouge_scorer

    words = ["the", "cat", "sat", "on", "a", "mat", "running", "runs", "Dogs", "dog", "42", "x-ray"]
    plain = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    stemmed = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rng = random.Random(0)
    for _ in range(200):
        expected = " ".join(rng.choices(words, k=rng.randint(1, 12)))
        generated = " ".join(rng.choices(words, k=rng.randint(0, 12)))
        value = lcs_recall(expected, generated)
        assert value == pytest.approx(plain.score(expected, generated)["rougeL"].recall)
        assert value <= stemmed.score(expected, generated)["rougeL"].recall + 1e-12


def test_bit_parallel_lcs_equals_dynamic_programming():
    def reference(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    rng = random.Random(1)
    for _ in range(300):
        a, b = rng.choices("abcd", k=rng.randint(0, 70)), rng.choices("abcd", k=rng.randint(0, 70))
        assert lcs_length(a, b) == reference(a, b)


def test_auc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = random.Random(2)
    for _ in range(50):
        positive = [rng.choice([0.5, 1.0, 1.5, 2.0]) for _ in range(rng.randint(1, 9))]
        negative = [rng.choice([0.5, 1.0, 1.5, 2.0, 2.5]) for _ in range(rng.randint(1, 9))]
        expected = roc_auc_score([1] * len(positive) + [0] * len(negative), positive + negative)
        assert auc(positive, negative) == pytest.approx(expected)


def test_pareto_front_keeps_the_undominated():
    assert pareto_front([(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.5)]) == [0, 1, 3, 4]


def test_proxy_mia_is_the_task_farthest_from_chance(tiny_model_dir, synth_dir):
    """Each task's forget documents against the reference, as a loss attack on that task alone scores
    them; the reported AUC is the worst task's, so a task that overshoots cannot hide behind one that lags."""
    import torch

    from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
    from repedit.data import load_rows
    from repedit.generate import document_nll
    from repedit.proxy import ProxyScorer

    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    forget, retain = load_rows(synth_dir, "forget"), load_rows(synth_dir, "retain")
    reference = load_documents(synth_dir / "mia_data" / "nonmember.jsonl")
    every_row = ProxyConfig(max_rows=None, sc_tokens=8, qa_tokens=4)
    result = ProxyScorer(tokenizer, forget, retain, reference, every_row).score(model, None)
    nonmembers = [-v for v in document_nll(model, tokenizer, reference)]
    expected = {}
    for task in ("Task1", "Task2", "Task3"):
        documents = [r.document for r in forget if r.kind == "sc" and r.task == task]
        expected[task] = auc([-v for v in document_nll(model, tokenizer, documents)], nonmembers)
    assert result["task_mia_auc"] == pytest.approx(expected, abs=1e-6)
    assert abs(result["mia_auc"] - 0.5) == max(abs(a - 0.5) for a in expected.values())
    assert result["mia"] == pytest.approx(1 - 2 * abs(result["mia_auc"] - 0.5))
    # a reference of Task3's kind (the public nonmembers are Wikipedia biographies) speaks for Task3 alone
    task3 = ProxyScorer(tokenizer, forget, retain, reference, ProxyConfig.from_dict(
        {**asdict(every_row), "mia_tasks": ["Task3"]})).score(model, None)
    assert task3["task_mia_auc"] == pytest.approx(expected, abs=1e-6)
    assert task3["mia_auc"] == pytest.approx(expected["Task3"], abs=1e-6)
    with pytest.raises(ValueError, match="proxy: mia_tasks: Task9: no forget documents of that task"):
        ProxyScorer(tokenizer, forget, retain, reference, ProxyConfig(mia_tasks=("Task3", "Task9")))


def test_the_proxy_reads_the_oracle_ks_on_the_forget_documents_it_scores(tiny_model_dir, synth_dir):
    """Given a retrain oracle's NLL of each forget document, the proxy reports the KS distance of its own NLLs of
    those documents from the oracle's, per task and pooled (scipy's two-sample KS on NLLs computed apart), so the
    tune can read #23's KS bar; an oracle scored on other documents is refused, naming what it lacks."""
    import torch
    from scipy.stats import ks_2samp

    from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
    from repedit.data import load_rows
    from repedit.generate import document_nll
    from repedit.proxy import ProxyScorer

    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    forget, retain = load_rows(synth_dir, "forget"), load_rows(synth_dir, "retain")
    reference = load_documents(synth_dir / "mia_data" / "nonmember.jsonl")
    documents = {task: [r.document for r in forget if r.kind == "sc" and r.task == task]
                 for task in ("Task1", "Task2", "Task3")}
    mine = {task: document_nll(model, tokenizer, docs) for task, docs in documents.items()}
    shift = {"Task1": -3.0, "Task2": 0.05, "Task3": 3.0}  # the oracle: far below the model, a little, far above
    oracle = {doc: value + shift[task] for task, docs in documents.items()
              for doc, value in zip(docs, mine[task], strict=True)}
    config = ProxyConfig(max_rows=None, sc_tokens=4, qa_tokens=4)
    result = ProxyScorer(tokenizer, forget, retain, reference, config, oracle_nll=oracle).score(model, None)
    expected = {task: ks_2samp(mine[task], [oracle[d] for d in documents[task]]).statistic for task in documents}
    expected["all"] = ks_2samp([v for t in documents for v in mine[t]],
                               [oracle[d] for t in documents for d in documents[t]]).statistic
    assert result["oracle_ks"] == pytest.approx(expected, abs=1e-6)
    assert result["oracle_ks"]["Task1"] == result["oracle_ks"]["Task3"] == 1.0
    assert "oracle_ks" not in ProxyScorer(tokenizer, forget, retain, reference, config).score(model, None)
    lacking = {doc: value for doc, value in oracle.items() if doc != documents["Task2"][0]}
    with pytest.raises(ValueError, match=r"proxy: the oracle's NLLs lack 1 of the forget set's documents"):
        ProxyScorer(tokenizer, forget, retain, reference, config, oracle_nll=lacking)


def test_the_proxy_reads_the_oracle_ks_against_each_models_own_unseen_level(tiny_model_dir, synth_dir):
    """Given the oracle's NLL of each reference text too, the proxy also reports the KS of each model's forget NLLs
    less its own level of the kind's reference texts, the oracle's alike (scipy's KS on NLLs computed apart; the
    level, as the stop rule's, the lower of the two middle values where a kind has an even count): an oracle that
    reads a whole kind 5 nats less likely, forget and unseen texts alike, is at distance 0 there and 1 in absolute
    terms. Beside it, the proxy's attack on the oracle's own NLLs (pairwise counts here). Without the reference texts'
    NLLs neither is reported; a reference set with no text of a forget document's kind is refused by name."""
    import torch
    from scipy.stats import ks_2samp

    from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
    from repedit.data import load_rows
    from repedit.generate import document_nll
    from repedit.proxy import ProxyScorer

    def lower_median(values: list[float]) -> float:
        return sorted(values)[(len(values) - 1) // 2]

    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    forget, retain = load_rows(synth_dir, "forget"), load_rows(synth_dir, "retain")
    reference = load_documents(synth_dir / "mia_data" / "nonmember.jsonl")
    kinds = [("Task1", "Task2", "Task3")[i % 3] for i in range(len(reference))]
    tasks = ("Task1", "Task2", "Task3")
    documents = {task: [r.document for r in forget if r.kind == "sc" and r.task == task] for task in tasks}
    mine = {task: document_nll(model, tokenizer, docs) for task, docs in documents.items()}
    unseen = document_nll(model, tokenizer, reference)
    forget_shift, unseen_shift = {"Task1": 5.0, "Task2": 0.3, "Task3": -1.0}, {"Task1": 5.0, "Task2": 0.0, "Task3": 0.5}
    oracle = {doc: value + forget_shift[task] for task, docs in documents.items()
              for doc, value in zip(docs, mine[task], strict=True)}
    oracle.update({text: value + unseen_shift[kind]
                   for text, value, kind in zip(reference, unseen, kinds, strict=True)})
    config = ProxyConfig(max_rows=None, sc_tokens=4, qa_tokens=4)
    result = ProxyScorer(tokenizer, forget, retain, reference, config, reference_tasks=kinds,
                         oracle_nll=oracle).score(model, None)
    level = {task: lower_median([v for v, k in zip(unseen, kinds, strict=True) if k == task]) for task in tasks}
    run = {task: [v - level[task] for v in mine[task]] for task in tasks}
    never = {task: [oracle[d] - level[task] - unseen_shift[task] for d in documents[task]] for task in tasks}
    expected = {task: ks_2samp(run[task], never[task]).statistic for task in tasks}
    expected["all"] = ks_2samp([v for t in tasks for v in run[t]], [v for t in tasks for v in never[t]]).statistic
    assert result["oracle_ks_relative"] == pytest.approx(expected, abs=1e-6)
    assert result["oracle_ks_relative"]["Task1"] == 0.0 and result["oracle_ks"]["Task1"] == 1.0

    def pairwise_auc(members: list[float], nonmembers: list[float]) -> float:  # the lower NLL reads as member
        return sum((m < n) + 0.5 * (m == n) for m in members for n in nonmembers) / len(members) / len(nonmembers)
    oracle_unseen = {task: [oracle[t] for t, k in zip(reference, kinds, strict=True) if k == task] for task in tasks}
    assert result["oracle_task_mia_auc"] == pytest.approx(
        {task: pairwise_auc([oracle[d] for d in documents[task]], oracle_unseen[task]) for task in tasks})
    assert result["oracle_task_mia_auc"]["Task1"] == pytest.approx(result["task_mia_auc"]["Task1"])  # shifted alike
    forget_only = {doc: value for doc, value in oracle.items() if doc not in reference}
    scored = ProxyScorer(tokenizer, forget, retain, reference, config, reference_tasks=kinds,
                         oracle_nll=forget_only).score(model, None)
    assert "oracle_ks_relative" not in scored and "oracle_task_mia_auc" not in scored
    with pytest.raises(ValueError, match="proxy: no reference text of Task2: the oracle KS against each model's own"):
        ProxyScorer(tokenizer, forget, retain, reference, config, oracle_nll=oracle,
                    reference_tasks=[k.replace("Task2", "Task1") for k in kinds])


def test_chance_distances_judge_overshoot_only_against_a_reference_of_the_same_kind():
    aucs = {"Task1": 0.2, "Task2": 0.9, "Task3": 0.4}
    assert chance_distances(aucs) == pytest.approx([0.3, 0.4, 0.1])
    # stories and PII biographies against Wikipedia text: less likely than it says nothing; more likely, lag
    assert chance_distances(aucs, ("Task3",)) == pytest.approx([0.0, 0.4, 0.1])
    assert farthest_from_chance(aucs) == 0.9 and farthest_from_chance(aucs, ("Task1", "Task3")) == 0.2


def test_task_aucs_set_each_task_against_unseen_text_of_its_own_kind():
    members = [1.0, 3.0, 5.0, 7.0]  # NLLs: Task1 docs 1.0 and 3.0, Task2 docs 5.0 and 7.0
    tasks = ["Task1", "Task1", "Task2", "Task2"]
    unseen, kinds = [2.0, 4.0, 6.0, 8.0], ["Task1", "Task1", "Task2", "Task9"]
    # Task1 against its own unseen texts (2.0, 4.0): pairs where the member is likelier (lower NLL):
    # 1<2, 1<4, 3<4 of 4; Task2 against its one own text (6.0): 5<6 of 2 pairs
    assert task_aucs(members, tasks, unseen, kinds) == {"Task1": 0.75, "Task2": 0.5}
    # pooled: Task2 (5, 7) against all four: 5<6, 5<8, 7<8 of 8
    assert task_aucs(members, tasks, unseen)["Task2"] == 3 / 8
    # a task with no unseen text of its kind is set against all of them
    assert task_aucs(members, tasks, unseen, ["Task9"] * 4) == task_aucs(members, tasks, unseen)


@pytest.fixture(scope="module")
def sweeps(tiny_model_dir, synth_dir, tmp_path_factory):
    """The 2x2 grid, calibrated, plus a failing config, on two CPU worker processes and on one."""
    nonmembers = synth_dir / "mia_data" / "nonmember.jsonl"
    reference = load_documents(nonmembers)
    calibrated = {"calibration": {"unseen": str(nonmembers), "every": 2}}
    candidates = [*(Candidate(c.name, c.label, {**c.config, **calibrated}) for c in expand_grid(GRID)), FAILING]
    root = tmp_path_factory.mktemp("sweeps")
    return {workers: sweep(tiny_model_dir, synth_dir, synth_dir, candidates, root / f"w{workers}", PROXY,
                           reference, workers=workers, devices=["cpu"], threads=1, keep=keep)
            for workers, keep in ((2, "best"), (1, "none"))}


def test_two_workers_run_each_config_once(sweeps):
    result = sweeps[2]
    assert [r["name"] for r in result.results] == [INPUT, "c0", "c1", "c2", "c3", "bad"]
    assert [r["status"] for r in result.results] == ["ok"] * 5 + ["failed"]
    assert "--layers: layer(s) [99] out of range" in result.results[-1]["error"]
    assert {(r["device"], r["card"]) for r in result.results[:5]} == {("cpu", "cpu")}


def test_each_run_brings_its_calibration_checks(sweeps):
    for run in sweeps[2].results[1:5]:
        checks = run["calibration"]
        assert checks and checks[-1]["step"] == run["steps"]
        assert all({"step", "forget_nll", "target_nll"} <= set(check) for check in checks)


def test_each_run_streams_its_steps_beside_its_folder_and_keeps_them_where_its_weights_are_dropped(sweeps):
    """A sweep cut short says how far its unfinished runs got: one JSON line a step, as the run takes it."""
    result = sweeps[2]  # keep="best": the other runs' folders are gone (test_best_is_chosen_by_the_proxy_and_written)
    for run in result.results[1:5]:
        steps = [json.loads(line) for line in (result.out / "runs" / f"{run['name']}.steps.jsonl").open()]
        assert [s["step"] for s in steps] == list(range(1, run["steps"] + 1))
    assert not (result.out / "runs" / "bad.steps.jsonl").exists()  # refused before its first step


def test_results_equal_a_serial_run(sweeps):
    """Equal generations and task terms; NLLs to float32 rounding (CPU kernels may sum in another order
    from one process to the next)."""
    for parallel, serial in zip(sweeps[2].results, sweeps[1].results, strict=True):
        assert parallel["name"] == serial["name"] and parallel["status"] == serial["status"]
        assert parallel.get("steps") == serial.get("steps")
        if parallel["status"] == "ok":
            one, other = dict(parallel["proxy"]), dict(serial["proxy"])
            assert one.pop("terms") == other.pop("terms")
            assert one.pop("task_mia_auc") == pytest.approx(other.pop("task_mia_auc"), rel=1e-6)
            assert one == pytest.approx(other, rel=1e-6)


def test_best_is_chosen_by_the_proxy_and_written(sweeps):
    result = sweeps[2]
    runs = [r for r in result.results if r["config"] is not None and r["status"] == "ok"]
    assert result.best["name"] in best_by_brute_force(runs)
    assert all(0 <= r["proxy"]["final"] <= 1 for r in runs) and "mia" in runs[0]["proxy"]
    best_config = json.loads((result.out / "best_config.json").read_text())
    assert config_from_dict(best_config).lr == result.best["config"]["lr"]
    assert [p.name for p in (result.out / "runs").iterdir() if p.is_dir()] == [result.best["name"]]  # keep="best"
    assert not any(p.is_dir() for p in (sweeps[1].out / "runs").iterdir())  # keep="none": each run's steps alone
    table = (result.out / "results.csv").read_text().splitlines()
    assert len(table) == 7 and table[0].startswith("name,label,status")
    assert "proxy_task_mia_auc Task3" in table[0].split(",")  # a column a task, not a dict in a cell
    assert (result.out / "pareto.png").stat().st_size > 0
    saved = json.loads((result.out / "results.json").read_text())
    assert saved["best"] == result.best["name"] and len(saved["results"]) == 6


CRASHING_WORKER = textwrap.dedent("""
    import os

    from repedit.pool import worker_main


    class Flaky:
        def __init__(self, setup):
            self.pid = os.getpid()

        def run(self, task):
            if task["name"] == "crash":
                os._exit(3)
            return {**task, "status": "ok", "error": None, "device": "cpu", "pid": self.pid}
""")


class Flaky:  # the parent needs only the worker class's name; the processes run the script's
    pass


@pytest.mark.parametrize("devices", [["cpu", "cpu"], ["cpu"]])
def test_a_crashed_worker_fails_its_task_only(tmp_path, devices):
    """Tasks are taken from one queue: each runs once, a crash fails only its own task, a fresh
    worker takes the rest (one worker: the tasks before the crash ran in one process, those after it
    in another; with two, which worker takes which task is the processes' timing)."""
    script = tmp_path / "flaky.py"
    script.write_text(CRASHING_WORKER)
    names = ["a", "b", "crash", "c", "d", "e"]
    tasks = [{"name": n, "label": n, "config": {}, "dir": None} for n in names]
    results: list[dict] = []
    run_tasks(tasks, {}, devices, results.append, Flaky, str(script))
    assert sorted(r["name"] for r in results) == sorted(names)
    crashed = next(r for r in results if r["name"] == "crash")
    assert crashed["status"] == "failed" and "exited with code 3" in crashed["error"]
    assert all(r["status"] == "ok" for r in results if r["name"] != "crash")
    if len(devices) == 1:
        pid = {r["name"]: r["pid"] for r in results if "pid" in r}
        assert pid["a"] == pid["b"] != pid["c"] == pid["d"] == pid["e"]



@pytest.mark.parametrize(("devices", "workers", "retried"), [(["cuda:0"], 2, True), (["cuda:0", "cuda:1"], 2, False)])
def test_a_run_that_failed_beside_others_on_its_device_runs_once_more_alone(monkeypatch, tmp_path, devices, workers,
                                                                          retried):
    """A run that failed while two workers shared its GPU runs again on one worker, from an empty folder, and
    its second result is the one reported and ranked; where no device was shared a failure stands."""
    calls: list[tuple[list[str], list[str]]] = []

    def fake_run_tasks(tasks, setup, assigned, on_result, worker, script=None, deadline=None):
        calls.append(([task["name"] for task in tasks], list(assigned)))
        for task in tasks:
            if task["name"] == "c1" and len(calls) == 1:  # fails the first time, leaving part of its output
                Path(task["dir"]).mkdir(parents=True)
                (Path(task["dir"]) / "model.safetensors").write_text("half")
                on_result({**task, "status": "failed", "error": "RuntimeError: cuDNN mha_graph.execute"})
                continue
            if task["dir"] is not None:
                assert not Path(task["dir"]).exists()  # nothing of an earlier attempt
            final = 0.7 if task["name"] == "c1" else 0.5
            proxy = {"final": final, "mean": final, "forget": final, "retain": 1.0, "terms": {}}
            on_result({**task, "status": "ok", "error": None, "proxy": proxy, "seconds": 1.0})

    monkeypatch.setattr(sweep_module, "run_tasks", fake_run_tasks)
    candidates = [Candidate("c0", "lr 1e-4", {"layers": [2, 3, 4], "lr": 1e-4}),
                  Candidate("c1", "lr 1e-3", {"layers": [2, 3, 4], "lr": 1e-3})]
    result = sweep(tmp_path / "model", tmp_path, tmp_path, candidates, tmp_path / "sweep", PROXY, workers=workers,
                   devices=devices, keep="all")
    c1 = next(r for r in result.results if r["name"] == "c1")
    if retried:
        assert calls == [([INPUT, "c0", "c1"], ["cuda:0", "cuda:0"]), (["c1"], ["cuda:0"])]
        assert c1["status"] == "ok" and c1["first_error"] == "RuntimeError: cuDNN mha_graph.execute"
        assert result.best["name"] == "c1"
        assert "RuntimeError: cuDNN" in (result.out / "results.csv").read_text()
    else:
        assert len(calls) == 1 and c1["status"] == "failed" and result.best["name"] == "c0"


def test_a_run_whose_evaluation_fails_is_a_failed_run_so_that_the_sweep_runs_it_again(monkeypatch, tmp_path):
    """A run that trained but whose official evaluation ran out of memory beside others is failed, not "ok" with no
    score: the report reads only scored rows, and the sweep runs a failed one again with fewer workers."""
    import importlib

    import torch

    from repedit.worker import EvaluatingWorker, Worker

    evaluation = importlib.import_module("repedit.evaluate")  # the module: the package names its function so

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.63 GiB")

    monkeypatch.setattr(Worker, "run", lambda self, task: {**task, "status": "ok", "error": None})
    monkeypatch.setattr(evaluation, "evaluate", out_of_memory)
    worker = EvaluatingWorker.__new__(EvaluatingWorker)  # its model is not needed: the run is stood in for
    worker.evaluation, worker.model_dir, worker.device = {"data": str(tmp_path), "out": str(tmp_path)}, tmp_path, "cpu"
    result = worker.run({"name": "c0", "dir": str(tmp_path / "c0")})
    assert result["status"] == "failed" and result["error"].startswith("evaluation failed: OutOfMemoryError")
    assert "score" not in result
    monkeypatch.setattr(evaluation, "evaluate", lambda *args, **kwargs: {"aggregate-score": 0.7})
    assert worker.run({"name": "c0", "dir": str(tmp_path / "c0")}) | {"evaluation": None} == {
        "name": "c0", "dir": str(tmp_path / "c0"), "status": "ok", "error": None, "score": 0.7, "evaluation": None}


def test_runs_that_ran_a_shared_device_out_of_memory_run_again_with_half_the_workers_until_they_fit(monkeypatch,
                                                                                                       tmp_path):
    """Eight workers on one GPU, three runs that fit only two at a time: they run again four to the device (three
    workers, one a run), fail again, then two to the device and pass; each keeps the error of its first attempt."""
    calls: list[tuple[list[str], list[str]]] = []
    heavy = {"c1", "c2", "c3"}

    def fake_run_tasks(tasks, setup, assigned, on_result, worker, script=None, deadline=None):
        calls.append(([task["name"] for task in tasks], list(assigned)))
        for task in tasks:
            if task["name"] in heavy and len(assigned) > 2:
                on_result({**task, "status": "failed", "error": f"OutOfMemoryError: {len(assigned)} workers"})
                continue
            proxy = {"final": 0.5, "mean": 0.5, "forget": 0.5, "retain": 1.0, "terms": {}}
            on_result({**task, "status": "ok", "error": None, "proxy": proxy, "seconds": 1.0})

    monkeypatch.setattr(sweep_module, "run_tasks", fake_run_tasks)
    candidates = [Candidate(f"c{i}", f"lr {i}e-4", {"layers": [2, 3, 4], "lr": (i + 1) * 1e-4}) for i in range(5)]
    result = sweep(tmp_path / "model", tmp_path, tmp_path, candidates, tmp_path / "sweep", PROXY, workers=8,
                   devices=["cuda:0"], keep="all")
    assert calls[1:] == [(["c1", "c2", "c3"], ["cuda:0"] * 3), (["c1", "c2", "c3"], ["cuda:0"] * 2)]
    assert all(r["status"] == "ok" for r in result.results)
    assert {r["name"]: r.get("first_error") for r in result.results if r["name"] in heavy} == dict.fromkeys(
        heavy, "OutOfMemoryError: 8 workers")


def test_on_two_devices_the_runs_run_again_take_the_devices_in_turn(monkeypatch, tmp_path):
    """Eight workers on two GPUs, three runs that fit one to a device: run again two to a device, the three go to
    both devices in turn (not three to the first), fail where two share one, then one to a device and pass."""
    calls: list[list[str]] = []
    heavy = {"c1", "c2", "c3"}

    def fake_run_tasks(tasks, setup, assigned, on_result, worker, script=None, deadline=None):
        calls.append(list(assigned))
        shared = max(assigned.count(device) for device in assigned) > 1
        for task in tasks:
            ok = not (task["name"] in heavy and shared)
            proxy = {"final": 0.5, "mean": 0.5, "forget": 0.5, "retain": 1.0, "terms": {}}
            on_result({**task, "status": "ok" if ok else "failed", "error": None if ok else "OutOfMemoryError",
                       "proxy": proxy if ok else None, "seconds": 1.0})

    monkeypatch.setattr(sweep_module, "run_tasks", fake_run_tasks)
    candidates = [Candidate(f"c{i}", f"lr {i}e-4", {"layers": [2, 3, 4], "lr": (i + 1) * 1e-4}) for i in range(5)]
    result = sweep(tmp_path / "model", tmp_path, tmp_path, candidates, tmp_path / "sweep", PROXY, workers=8,
                   devices=["cuda:0", "cuda:1"], keep="all")
    assert calls[1:] == [["cuda:0", "cuda:1", "cuda:0"], ["cuda:0", "cuda:1"]]
    assert all(r["status"] == "ok" for r in result.results)


def test_a_sweep_cut_short_keeps_the_rows_of_the_runs_that_finished(monkeypatch, tmp_path):
    """The machine taken away mid-sweep: ``results.csv`` already holds each run that finished (the failed one
    too, with its error), in grid order, and none that did not; read back as ``quality.py tune --previous`` reads
    it, the finished run's row is its candidate's configuration and the proxy as scored, per-task AUCs and terms
    nested again (the tune's bar shortfall reads them)."""
    import csv
    import sys

    def fake_run_tasks(tasks, setup, assigned, on_result, worker, script=None, deadline=None):
        for task in tasks[:3]:
            proxy = {"final": 0.5, "mean": 0.5, "forget": 0.5, "retain": 1.0, "utility": 0.9,
                     "task_mia_auc": {"Task1": 0.61, "Task3": 0.47}, "terms": {"forget Task1 sc": 0.8,
                                                                                 "retain Task1 sc": 0.97}}
            failed = task["name"] == "c1"
            on_result({**task, "status": "failed" if failed else "ok", "error": "OutOfMemoryError" if failed else None,
                       "proxy": None if failed else proxy, "seconds": 1.0, "card": "NVIDIA H100 80GB HBM3"})
        raise KeyboardInterrupt  # the call's time ran out before c2 finished

    monkeypatch.setattr(sweep_module, "run_tasks", fake_run_tasks)
    candidates = [Candidate(f"c{i}", f"lr {lr}", {"layers": [2, 3, 4], "lr": lr})
                  for i, lr in enumerate([1e-4, 1e-3, 3e-3])]
    with pytest.raises(KeyboardInterrupt):
        sweep(tmp_path / "model", tmp_path, tmp_path, candidates, tmp_path / "sweep", PROXY, workers=1, keep="all")
    with open(tmp_path / "sweep" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["name"], r["status"]) for r in rows] == [(INPUT, "ok"), ("c0", "ok"), ("c1", "failed")]
    assert rows[2]["error"] == "OutOfMemoryError"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import quality

    stored = quality._csv_results(tmp_path / "sweep" / "results.csv")
    assert stored[1]["config"] == candidates[0].config
    assert stored[1]["card"] == "NVIDIA H100 80GB HBM3"  # the tune makes again a row of another card than its own
    assert stored[1]["proxy"] == {"final": 0.5, "mean": 0.5, "forget": 0.5, "retain": 1.0, "utility": 0.9,
                                  "task_mia_auc": {"Task1": 0.61, "Task3": 0.47},
                                  "terms": {"forget Task1 sc": 0.8, "retain Task1 sc": 0.97}}
    assert not (tmp_path / "sweep" / "results.json").exists()  # the finished sweep's files come at its end


@pytest.mark.parametrize(("visible", "device", "expected"), [
    (None, "cuda:1", ({"CUDA_VISIBLE_DEVICES": "1"}, "cuda")),
    ("3,5", "cuda:1", ({"CUDA_VISIBLE_DEVICES": "5"}, "cuda")),  # the parent's numbering, not the machine's
    ("3,5", "cuda", ({}, "cuda")),
    ("3,5", "cpu", ({"CUDA_VISIBLE_DEVICES": ""}, "cpu")),  # a CPU worker sees no GPU at all
])
def test_each_worker_sees_only_its_own_gpu(monkeypatch, visible, device, expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert pool_module._device_env(device) == expected


@pytest.mark.parametrize(("device", "message"), [
    ("cuda:2", r"'cuda:2' is not a visible GPU \(CUDA_VISIBLE_DEVICES=3,5 shows 2\)"),
    ("cuda:x", r"'cuda:x' is not a visible GPU"),
    ("tpu:0", r"'tpu:0' is not cpu, cuda or cuda:N"),
])
def test_a_device_the_worker_cannot_see_is_refused(monkeypatch, device, message):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with pytest.raises(ValueError, match=rf"--devices: {message}"):
        pool_module._device_env(device)


def test_workers_are_spawned_with_their_gpu_and_the_default_is_every_gpu(monkeypatch):
    """No GPU needed: the GPU count and the process start are replaced by recorders."""
    monkeypatch.setattr(pool_module.torch.cuda, "device_count", lambda: 2)
    assert pool_module.available_devices() == ["cuda:0", "cuda:1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6,7")
    spawned: list[dict] = []

    class Recorder:
        def __init__(self, command, pass_fds, env):
            spawned.append(env)

    monkeypatch.setattr(pool_module.subprocess, "Popen", Recorder)
    pool = pool_module._Pool([], {}, Worker, None, lambda result: None, pool_module._Clock(None))
    locals_ = [pool._spawn(device).local for device in pool_module.available_devices()]
    assert locals_ == ["cuda", "cuda"] and [env["CUDA_VISIBLE_DEVICES"] for env in spawned] == ["6", "7"]


def test_utility_is_the_kind_that_rose_most_where_kinds_are_given():
    from repedit.proxy import utility

    before, after = [3.0, 3.0, 8.0, 8.0], [3.6, 3.6, 8.0, 8.0]  # PII biographies +20%, Wikipedia text unchanged
    assert utility(before, after, ["Task2", "Task2", "Task3", "Task3"]) == pytest.approx(3.0 / 3.6)
    assert utility(before, after) == pytest.approx(22.0 / 23.2)  # pooled: the rise hides at 0.948
    assert utility(after, before, ["Task2", "Task2", "Task3", "Task3"]) == 1.0  # falling is no loss


def test_each_kinds_rise_is_its_mean_nll_after_over_before():
    from repedit.proxy import kind_rises

    before, after = [3.0, 3.0, 8.0, 6.0], [3.6, 3.6, 6.3, 7.7]  # PII biographies +20%, Wikipedia text +0.0%
    assert kind_rises(before, after, ["Task2", "Task2", "Task3", "Task3"]) == pytest.approx(
        {"Task2": 0.2, "Task3": 0.0})


def test_the_proxy_scores_utility_per_reference_kind(tiny_model_dir, synth_dir):
    import torch

    from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
    from repedit.data import load_rows
    from repedit.generate import document_nll
    from repedit.proxy import ProxyScorer

    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    forget, retain = load_rows(synth_dir, "forget"), load_rows(synth_dir, "retain")
    reference = load_documents(synth_dir / "mia_data" / "nonmember.jsonl")
    kinds = ["Task1" if i % 2 else "Task3" for i in range(len(reference))]
    now = document_nll(model, tokenizer, reference)  # independent of the proxy's batched NLLs
    before = [0.5 * v if kind == "Task1" else v for v, kind in zip(now, kinds, strict=True)]  # Task1 doubled
    config = ProxyConfig(max_rows=2, sc_tokens=4, qa_tokens=4)
    scored = ProxyScorer(tokenizer, forget, retain, reference, config, kinds).score(model, before)
    assert scored["utility"] == pytest.approx(0.5, abs=1e-4)
    assert scored["reference_rise"] == pytest.approx({"Task1": 1.0, "Task3": 0.0}, abs=1e-4)  # Task1 doubled
    pooled = ProxyScorer(tokenizer, forget, retain, reference, config).score(model, before)
    assert pooled["utility"] == pytest.approx(sum(before) / sum(now), abs=1e-4)
    assert "reference_rise" not in pooled  # no kinds, no rise by kind
