"""Sweeps: every configuration of a grid, one worker per device, each result ranked by the proxy.

A grid file is ``{"base": {...}, "grid": {"lr": [1e-4, 3e-4], "steps": [50, 100]}}`` (the Cartesian
product of the listed values over ``base``), or ``{"base": {...}, "configs": [{...}, ...]}`` or a
plain list (each entry over ``base``); an optional ``"proxy"`` object sets ``ProxyConfig``.

Each worker owns one device and takes the next configuration when it finishes one. It keeps what
configurations share loaded: the forget and retain rows, the proxy's row sample and token ids, and
the input model used for scoring, into which each run's rewritten shards are swapped (and swapped
back) instead of loading the output checkpoint. Each method run loads its own weights from disk
(RMU only layers 0..L), as ``repedit unlearn`` does.

Workers are Python processes started from code (``boot_code``), not multiprocessing's spawn: spawn
re-imports the parent's ``__main__`` (in the challenge, the organizers' harness, which may start
unlearning again on import) and unpickles the worker function by its module name, which a
submission file loaded by path does not have. A worker's crash or a configuration's error is
reported for that configuration; the sweep goes on.

>>> candidates, proxy = read_grid("grid.json")
>>> result = sweep("target/", "data/", "data/", candidates, "sweeps/rmu", proxy, devices=["cuda:0", "cuda:1"])
>>> result.best["config"]
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch

from repedit.checkpoint import (
    atomic_directory,
    link_or_copy,
    load_causal_lm,
    load_checkpoint_tokenizer,
    load_tensors,
    read_config,
    save_edited,
    weight_map,
)
from repedit.proxy import ProxyConfig, ProxyScorer
from repedit.unlearn import Budget, config_from_dict, pick_device, read_sets, run_method

GRID_KEYS = ("base", "grid", "configs", "proxy")
KEEP = ("best", "all", "none")  # which run checkpoints a sweep leaves on disk
INPUT = "input"  # the task that scores the untouched input model, the baseline every run must beat


# --- grids ---


@dataclass(frozen=True)
class Candidate:
    name: str  # run directory name
    label: str  # the keys that vary across the grid, e.g. "lr=0.0001 steps=50"
    config: dict  # the method config in its JSON form (``config_from_dict``)


def expand_grid(grid: dict | list, where: str = "grid") -> list[Candidate]:
    """The candidates of a grid (module docstring); each config is checked by ``config_from_dict``."""
    if isinstance(grid, list):
        grid = {"configs": grid}
    if not isinstance(grid, dict):
        raise ValueError(f"{where}: expected a JSON object or list")
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {list(GRID_KEYS)}")
    base = grid.get("base", {})
    if "configs" in grid:
        configs = [{**base, **entry} if isinstance(entry, dict) else entry for entry in grid["configs"]]
    else:
        axes = grid.get("grid", {})
        bad = sorted(k for k, v in axes.items() if not isinstance(v, list) or not v)
        if bad:
            raise ValueError(f"{where}: grid value(s) of {bad} must be non-empty lists")
        configs = [{**base, **dict(zip(axes, values, strict=True))}
                   for values in itertools.product(*axes.values())]
    for index, config in enumerate(configs):
        if not isinstance(config, dict):
            raise ValueError(f"{where}: config {index} is not a JSON object")
        try:
            config_from_dict(dict(config))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: config {index}: {error}") from None
    keys = dict.fromkeys(k for c in configs for k in c)
    varying = [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]
    width = len(str(len(configs) - 1))
    labels = [" ".join(f"{k}={json.dumps(c.get(k))}" for k in varying) or "base" for c in configs]
    return [Candidate(f"c{i:0{width}d}", labels[i], c) for i, c in enumerate(configs)]


def read_grid(path: str | Path) -> tuple[list[Candidate], ProxyConfig]:
    """The candidates and proxy settings of a grid file; errors name the file."""
    path = Path(path)
    try:
        grid = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--grid: {path}: {error}") from None
    proxy = ProxyConfig.from_dict(grid.get("proxy", {}) if isinstance(grid, dict) else {}, f"{path}: proxy")
    return expand_grid(grid, str(path)), proxy


# --- one configuration on one device ---


def edited_shards(model_dir: Path, out: Path) -> list[str]:
    """Weight files of ``out`` that are not links to ``model_dir``'s: the ones a save rewrote."""
    return sorted(shard for shard in set(weight_map(out).values())
                  if not (model_dir / shard).exists() or not os.path.samefile(out / shard, model_dir / shard))


@torch.no_grad()
def load_shards(model: torch.nn.Module, directory: Path, shards: Sequence[str]) -> None:
    """Copy every tensor of ``shards`` (files in ``directory``) into the loaded ``model``, in place."""
    state = model.state_dict()
    for shard in shards:
        for name, tensor in load_tensors(directory / shard).items():
            if name not in state:
                raise ValueError(f"{directory / shard}: {name} is not a parameter of the loaded model")
            state[name].copy_(tensor)


class Worker:
    """One device's share of a sweep; ``setup`` names the model, the sets, the device and the proxy."""

    def __init__(self, setup: dict):
        from transformers.utils import logging

        logging.disable_progress_bar()  # one bar per weight load and worker would bury the results
        if setup.get("threads"):
            torch.set_num_threads(setup["threads"])
        self.model_dir = Path(setup["model"])
        self.device, self.dtype = pick_device(setup["device"], setup.get("dtype"))
        self.forget, self.retain = read_sets(setup["forget"], setup["retain"])
        self.num_layers = read_config(self.model_dir).num_hidden_layers
        self.scorer = ProxyScorer(load_checkpoint_tokenizer(self.model_dir), self.forget, self.retain,
                                  setup.get("reference"), ProxyConfig(**setup["proxy"]),
                                  setup.get("reference_tasks"))
        self.model = load_causal_lm(self.model_dir, self.dtype, self.device)
        self.model.requires_grad_(False)
        self.reference_before = self.scorer.reference_nll(self.model)

    def run(self, task: dict) -> dict:
        """Train (unless this is the input task) and score one task; an error becomes the result."""
        result = {"name": task["name"], "label": task["label"], "config": task["config"], "dir": task["dir"],
                  "device": str(self.device), "status": "ok", "error": None}
        started = time.monotonic()
        try:
            if task["config"] is None:
                result["proxy"], result["score_seconds"] = self._score()
            else:
                self._train_and_score(task, result)
        except Exception as error:
            result.update(status="failed", error=_describe(error), traceback=traceback.format_exc())
        result["seconds"] = time.monotonic() - started
        return result

    def _score(self) -> tuple[dict, float]:
        started = time.monotonic()
        return self.scorer.score(self.model, self.reference_before), time.monotonic() - started

    def _train_and_score(self, task: dict, result: dict) -> None:
        config = config_from_dict(dict(task["config"]))
        config.validate(self.num_layers)
        if task.get("train_until") is not None:  # leave time to score before the sweep's deadline
            left = task["train_until"] - time.time()
            if left < 1:
                result.update(status="skipped", error="no time left before the deadline")
                return
            config.time_budget = min(config.time_budget or left, left)
        out = Path(task["dir"])
        run = run_method(self.model_dir, self.forget, self.retain, out, config, self.device, self.dtype,
                         Budget(config.time_budget))
        shards = edited_shards(self.model_dir, out)
        try:
            load_shards(self.model, out, shards)
            result["proxy"], result["score_seconds"] = self._score()
        finally:  # the input model again, for the next task
            load_shards(self.model, self.model_dir, shards)
        result.update(steps=len(run.losses), stopped=run.stopped, train_seconds=run.timings.get("total"),
                      calibration=run.calibration)
        (out / "proxy.json").write_text(json.dumps(result, indent=2) + "\n")


class EvaluatingWorker(Worker):
    """A worker that also runs the official evaluation (``repedit.evaluate``) of each scored model.

    Kept apart from ``Worker`` so that the exported submission, which inlines ``Worker``, needs
    neither the evaluation's imports nor its data.
    """

    def __init__(self, setup: dict):
        super().__init__(setup)
        self.evaluation = setup.get("evaluate")

    def run(self, task: dict) -> dict:
        result = super().run(task)
        if self.evaluation and result["status"] == "ok":
            from repedit.evaluate import evaluate

            settings = self.evaluation
            try:
                scores = evaluate(result["dir"] or self.model_dir, settings["data"],
                                  Path(settings["out"]) / result["name"], mia_dir=settings.get("mia"),
                                  mmlu_dir=settings.get("mmlu"), mmlu_limit=settings.get("mmlu_limit"),
                                  device=str(self.device), withheld=settings.get("withheld"),
                                  general=settings.get("general"))
                result["score"] = scores["aggregate-score"]
                result["evaluation"] = {k: v for k, v in scores.items() if not k.endswith("-set")}
            except Exception as error:
                result["error"] = f"evaluation failed: {_describe(error)}"
        return result


# --- workers as processes ---


def boot_code(worker: str, script: str | None = None) -> str:
    """The code a worker process runs: the parent's ``sys.path``, then ``worker_main`` with the class
    named ``worker``, from repedit.sweep or from the submission file ``script`` that inlines it."""
    load = (f"import runpy; ns = runpy.run_path({script!r})" if script
            else "import repedit.sweep; ns = vars(repedit.sweep)")
    return ("import json, os, sys; sys.path[:] = json.loads(os.environ['REPEDIT_WORKER_PATH']); "
            f"{load}; ns[{worker_main.__name__!r}](ns[{worker!r}])")


def worker_main(worker: type[Worker]) -> None:
    """A worker process: read the setup, build ``worker``, then run tasks until told to stop (None)."""
    conn = Connection(int(sys.argv[1]))
    setup = conn.recv()
    try:
        state = worker(setup)
    except Exception as error:
        conn.send({"kind": "failed", "error": _describe(error), "traceback": traceback.format_exc()})
        return
    conn.send({"kind": "ready"})
    while (task := conn.recv()) is not None:
        conn.send({"kind": "result", "result": state.run(task)})


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def available_devices() -> list[str]:
    """Every visible GPU, else the CPU."""
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]


def _device_env(device: str) -> tuple[dict[str, str], str]:
    """Environment and device name for a worker that owns ``device`` alone (``cuda:N`` becomes the
    worker's only visible GPU, so nothing it runs can touch another worker's)."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return {"CUDA_VISIBLE_DEVICES": ""}, "cpu"
    if kind != "cuda":
        raise ValueError(f"--devices: {device!r} is not cpu, cuda or cuda:N")
    if not index:
        return {}, "cuda"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = visible.split(",") if visible else None
    if not index.isdigit() or (shown is not None and int(index) >= len(shown)):
        seen = f"CUDA_VISIBLE_DEVICES={visible} shows {len(shown)}" if shown else "expected cuda:N"
        raise ValueError(f"--devices: {device!r} is not a visible GPU ({seen})")
    return {"CUDA_VISIBLE_DEVICES": shown[int(index)] if shown else index}, "cuda"


def _interpreter_flags() -> list[str]:
    """The parent's isolation flags, so that a worker sees the packages the parent sees."""
    flags = (("-I", sys.flags.isolated), ("-E", sys.flags.ignore_environment),
             ("-s", sys.flags.no_user_site), ("-S", sys.flags.no_site))
    return [flag for flag, on in flags if on]


@dataclass
class _Process:
    device: str  # as the parent names it
    local: str  # as the worker names it
    popen: subprocess.Popen
    conn: Connection
    task: dict | None = None  # the task it is running
    ready: bool = False  # it has built its worker


def _unfinished(task: dict, status: str, error: str) -> dict:
    return {"name": task["name"], "label": task["label"], "config": task["config"], "dir": task["dir"],
            "status": status, "error": error}


class _Pool:
    """Worker processes fed from one queue: each takes the next task when it reports the last."""

    def __init__(self, tasks: Sequence[dict], setup: dict, worker: str, script: str | None,
                 on_result: Callable[[dict], None], clock: _Clock):
        self.pending, self.setup, self.worker, self.script = deque(tasks), setup, worker, script
        self.on_result, self.clock = on_result, clock
        self.processes: list[_Process] = []
        self.start_errors: list[str] = []

    def start(self, devices: Sequence[str]) -> None:
        """Start a worker per device, then send the setups: each reads its own once booted."""
        started = [self._spawn(device) for device in devices]
        for process in started:
            process.conn.send({**self.setup, "device": process.local})
        self.processes += started

    def _spawn(self, device: str) -> _Process:
        env, local = _device_env(device)
        parent, child = socket.socketpair()
        command = [sys.executable, *_interpreter_flags(), "-c", boot_code(self.worker, self.script),
                   str(child.fileno())]
        popen = subprocess.Popen(command, pass_fds=[child.fileno()],
                                 env={**os.environ, **env, "REPEDIT_WORKER_PATH": json.dumps(sys.path)})
        child.close()
        return _Process(device, local, popen, Connection(parent.detach()))

    def run(self) -> None:
        try:
            while self.processes and (self.pending or any(p.task for p in self.processes)):
                timeout = self.clock.wait_seconds()
                if timeout <= 0:
                    break
                for conn in wait([p.conn for p in self.processes], timeout):
                    self._serve(next(p for p in self.processes if p.conn is conn))
        finally:
            self._stop()

    def _serve(self, process: _Process) -> None:
        try:
            message = process.conn.recv()
        except (EOFError, OSError):
            self._lost(process)
            return
        if message["kind"] == "failed":  # the worker could not be built
            self.processes.remove(process)
            self.start_errors.append(f"worker on {process.device}: {message['error']}")
            return
        if message["kind"] == "result":
            process.task = None
            self.clock.record(message["result"])
            self.on_result(message["result"])
        process.ready = True
        if self.pending and not self.clock.fits():
            for task in self.pending:
                self.on_result(_unfinished(task, "skipped", "not enough time left before the deadline"))
            self.pending.clear()
        process.task = self.clock.timed(self.pending.popleft()) if self.pending else None
        process.conn.send(process.task)
        if process.task is None:  # told to stop
            self.processes.remove(process)
            process.popen.wait()

    def _lost(self, process: _Process) -> None:
        """A worker process died: its task failed; a fresh worker takes the rest of the queue."""
        self.processes.remove(process)
        code = process.popen.wait()
        if not process.ready:
            self.start_errors.append(f"worker on {process.device} exited with code {code} while starting")
            return
        if process.task is not None:
            error = f"worker on {process.device} exited with code {code}"
            self.on_result(_unfinished(process.task, "failed", error))
        if self.pending:
            self.start([process.device])

    def _stop(self) -> None:
        """Kill what still runs (the deadline came, or an error); report every task not done."""
        for process in self.processes:
            process.popen.kill()
            process.popen.wait()
            if process.task is not None:
                error = "the time budget ended before it finished"
                self.on_result(_unfinished(process.task, "stopped", error))
        for task in self.pending:
            if self.start_errors:
                error = "no worker could run it: " + "; ".join(self.start_errors)
                self.on_result(_unfinished(task, "failed", error))
            else:
                self.on_result(_unfinished(task, "skipped", "the time budget ended first"))


def run_tasks(tasks: Sequence[dict], setup: dict, devices: Sequence[str], on_result: Callable[[dict], None],
              worker: type[Worker] = Worker, script: str | None = None,
              deadline: float | None = None) -> None:
    """Run ``tasks`` on a worker process per entry of ``devices``, each taking the next task when it
    finishes one; ``on_result`` gets each task's result in this process as it arrives: failures,
    crashes and tasks left at ``deadline`` (``time.time()``) included. No devices: run them here."""
    clock = _Clock(deadline)
    if devices:
        pool = _Pool(tasks, setup, worker.__name__, script, on_result, clock)
        pool.start(devices)
        pool.run()
        return
    state, pending = worker(setup), deque(tasks)
    while pending and clock.fits():
        result = state.run(clock.timed(pending.popleft()))
        clock.record(result)
        on_result(result)
    for task in pending:
        on_result(_unfinished(task, "skipped", "not enough time left before the deadline"))


class _Clock:
    """The deadline of a set of tasks and what finished tasks took, to decide what still fits."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self.runs: list[float] = []  # seconds of each finished configuration (training and scoring)
        self.scores: list[float] = []  # seconds of each scoring

    def record(self, result: dict) -> None:
        if result.get("score_seconds") is not None:
            self.scores.append(result["score_seconds"])
            if result["config"] is not None:
                self.runs.append(result["seconds"])

    def wait_seconds(self) -> float:
        return 5.0 if self.deadline is None else min(5.0, self.deadline - time.time())

    def fits(self) -> bool:
        """Whether another configuration can finish in time, judged by the longest so far."""
        if self.deadline is None:
            return True
        return time.time() + (max(self.runs) if self.runs else 0.0) < self.deadline

    def timed(self, task: dict) -> dict:
        """``task`` with the time its training must end by, leaving room to score it by the deadline."""
        if self.deadline is None:
            return task
        left = self.deadline - time.time()
        reserve = 1.5 * max(self.scores) + 5 if self.scores else 0.2 * left
        return {**task, "train_until": self.deadline - reserve}


# --- a sweep: every candidate, results on disk ---


def rank(result: dict) -> tuple[float, float]:
    """What results are ranked by: the official score when evaluated, else the proxy; ties (often at
    0, the harmonic mean's floor) go to the higher mean of the proxy's task terms."""
    first = result["score"] if result.get("score") is not None else result["proxy"]["final"]
    return first, result["proxy"]["mean"]


def _tasks(candidates: Sequence[Candidate], runs: Path) -> list[dict]:
    """Scoring the input model (the baseline every run must beat), then each candidate into ``runs``."""
    entries = [{"name": c.name, "label": c.label, "config": c.config, "dir": str(runs / c.name)}
               for c in candidates]
    return [{"name": INPUT, "label": "input model", "config": None, "dir": None}, *entries]


def _setup(model: Path, forget: str | Path, retain: str | Path, proxy: ProxyConfig,
           reference: Sequence[str] | None, device: str, **more) -> dict:
    """What every worker is built from (``Worker``); sent to each worker process once."""
    return {"model": str(model), "forget": str(forget), "retain": str(retain), "proxy": asdict(proxy),
            "reference": list(reference) if reference else None, "device": device, **more}


@dataclass
class SweepResult:
    results: list[dict]  # one per task, the input model first, in grid order
    best: dict | None  # the best configuration's result, None when every run failed
    out: Path


def sweep(model: str | Path, forget: str | Path, retain: str | Path, candidates: Sequence[Candidate],
          out: str | Path, proxy: ProxyConfig | None = None, reference: Sequence[str] | None = None,
          workers: int | None = None, devices: Sequence[str] | None = None, threads: int | None = None,
          dtype: str | None = None, keep: str = "best", evaluate: dict | None = None,
          reference_tasks: Sequence[str] | None = None) -> SweepResult:
    """Run every candidate (and score the input model) on ``workers`` processes over ``devices``
    (default: one per GPU, else one on the CPU; 0 workers: in this process), then write
    ``results.csv``, ``results.json``, ``pareto.png`` and ``best_config.json`` into ``out``.

    ``reference_tasks`` gives each reference text's task, so the proxy's attack sets every task's forget
    documents against unseen text of their own kind. ``keep`` says which run checkpoints stay in
    ``out/runs``: the best, all or none. ``evaluate``
    (``data``, ``mia``, ``mmlu``, ``mmlu_limit``; ``withheld``, ``general`` for the collateral columns)
    also runs the official evaluation of each run.
    """
    if keep not in KEEP:
        raise ValueError(f"--keep: {keep!r} is not one of {list(KEEP)}")
    if not candidates:
        raise ValueError("--grid: no configurations")
    model, out = Path(model), Path(out)
    devices = list(devices or available_devices())
    assigned = [devices[i % len(devices)] for i in range(len(devices) if workers is None else workers)]
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, assigned.count("cpu")))
    setup = _setup(model, forget, retain, proxy or ProxyConfig(), reference, devices[0], dtype=dtype,
                   threads=threads, evaluate=evaluate and {**evaluate, "out": str(out / "evals")},
                   reference_tasks=list(reference_tasks) if reference_tasks else None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps([asdict(c) for c in candidates], indent=2) + "\n")
    tasks = _tasks(candidates, out / "runs")
    order = {task["name"]: index for index, task in enumerate(tasks)}
    results: dict[str, dict] = {}
    kept: list[dict] = []  # with keep="best": the best run so far

    def collect(result: dict) -> None:
        results[result["name"]] = result
        print(_result_line(result), flush=True)
        if result["dir"] is None or keep == "all":
            return
        dropped = [result]
        if result["status"] == "ok" and keep == "best":
            kept.append(result)
            kept.sort(key=lambda r: (*(-v for v in rank(r)), order[r["name"]]))  # ties: grid order, as below
            dropped = kept[1:]
            del kept[1:]
        for run in dropped:
            shutil.rmtree(run["dir"], ignore_errors=True)

    run_tasks(tasks, setup, assigned, collect, EvaluatingWorker)
    ordered = [results[task["name"]] for task in tasks]
    ranked = [r for r in ordered if r["config"] is not None and r["status"] == "ok"]
    best = max(ranked, key=rank) if ranked else None  # max keeps the first of equals: grid order
    write_results(out, ordered, best)
    return SweepResult(ordered, best, out)


def _result_line(result: dict) -> str:
    if result["status"] != "ok":
        return f"{result['name']} ({result['label']}): {result['status']}: {result['error']}"
    proxy = result["proxy"]
    score = f", score {result['score']:.4f}" if result.get("score") is not None else ""
    return (f"{result['name']} ({result['label']}): proxy {proxy['final']:.4f} "
            f"(forget {proxy['forget']:.3f}, retain {proxy['retain']:.3f}){score}, {result['seconds']:.1f} s")


def _row(result: dict) -> dict:
    """A flat row of the results table."""
    proxy = result.get("proxy") or {}
    row = {key: result.get(key) for key in ("name", "label", "status", "score")}
    for key, value in proxy.items():  # per-task values (task_mia_auc) get a column each
        if key != "terms":
            row.update({f"proxy_{key} {k}": v for k, v in value.items()} if isinstance(value, dict)
                       else {f"proxy_{key}": value})
    row.update(proxy.get("terms", {}))
    timing = ("steps", "stopped", "seconds", "train_seconds", "score_seconds", "device", "error")
    row.update({key: result.get(key) for key in timing})
    row["config"] = json.dumps(result["config"]) if result["config"] is not None else ""
    return row


def write_results(out: Path, results: Sequence[dict], best: dict | None) -> None:
    """``results.json`` (everything), ``results.csv`` (flat), ``pareto.png`` and ``best_config.json``."""
    summary = {"best": best and best["name"], "results": list(results)}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    rows = [_row(r) for r in results]
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    plot_pareto(results, best, out / "pareto.png")
    if best is not None:
        config = asdict(config_from_dict(dict(best["config"])))
        (out / "best_config.json").write_text(json.dumps(config, indent=2) + "\n")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximized)."""
    return [i for i, (x, y) in enumerate(points)
            if not any(a >= x and b >= y and (a, b) != (x, y) for a, b in points)]


def plot_pareto(results: Sequence[dict], best: dict | None, path: Path) -> None:
    """Forgetting (mean forget term) against keeping (mean retain term); the front joined, the best
    starred, the input model crossed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in results if r["status"] == "ok"]
    points = [(r["proxy"]["forget"], r["proxy"]["retain"]) for r in scored]
    figure, axes = plt.subplots(figsize=(6, 5))
    axes.scatter([x for x, _ in points], [y for _, y in points], color="tab:blue", label="runs")
    front = sorted(points[i] for i in pareto_front(points))
    axes.plot([x for x, _ in front], [y for _, y in front], color="tab:orange", label="Pareto front")
    for result, (x, y) in zip(scored, points, strict=True):
        axes.annotate(result["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if result["name"] == INPUT:
            axes.scatter([x], [y], marker="x", color="black", s=60, label="input model")
        if best is not None and result["name"] == best["name"]:
            axes.scatter([x], [y], marker="*", color="tab:red", s=200, label="best")
    axes.set_xlabel("forget: mean of the forget terms, 1 - regurgitation (higher: more forgotten)")
    axes.set_ylabel("retain: mean of the retain terms (higher: more kept)")
    axes.set_title("sweep: proxy terms per configuration")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --- a search inside the submission: the best checkpoint so far always at the output path ---


def promote(candidate: Path, out: Path) -> None:
    """Make the checkpoint directory ``candidate`` the one at ``out``, atomically (files linked)."""
    with atomic_directory(out) as tmp:
        for entry in candidate.iterdir():
            link_or_copy(entry, tmp / entry.name)


def search(model: Path, forget: str | Path, retain: str | Path, out: Path, candidates: Sequence[Candidate],
           proxy: ProxyConfig, reference: Sequence[str] | None, deadline: float,
           script: str | None) -> list[dict]:
    """Run ``candidates`` on every device until ``deadline``, keeping at ``out`` the checkpoint with the
    best proxy so far (the input model until a run beats it); ``out`` must hold a valid one already.

    Workers run ``script`` (the submission file); without one the candidates run here, one by one.
    """
    scratch = out.parent / f".{out.name}.search-{uuid.uuid4().hex[:8]}"
    devices = available_devices()
    results: list[dict] = []
    best: list[tuple[float, float]] = []  # the rank of the checkpoint at ``out``

    def collect(result: dict) -> None:
        results.append(result)
        print(f"search: {_result_line(result)}", flush=True)
        if result["status"] == "ok" and (not best or rank(result) > best[0]):
            if result["dir"] is not None:
                promote(Path(result["dir"]), out)
            elif best:  # the input model beats the run already promoted: back to the input
                save_edited(model, out, {})
            best[:] = [rank(result)]
            print(f"search: {out} now holds {result['name']} ({result['label']})", flush=True)
        if result["dir"] is not None:
            shutil.rmtree(result["dir"], ignore_errors=True)

    setup = _setup(model, forget, retain, proxy, reference, devices[0])
    try:
        run_tasks(_tasks(candidates, scratch), setup, devices if script else [], collect, Worker, script,
                  deadline)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results
