"""Sweeps: every configuration of a grid, one worker per device, each result ranked by the proxy.

The grid (``repedit.grid``) lists the candidates; a worker process per device (``repedit.pool``)
runs them one after another (``repedit.worker``), scoring the untouched input model first, the
baseline every run must beat; the results and a Pareto plot go into the sweep's folder
(``repedit.results``). The exported submission runs the same machinery through ``repedit.search``.

>>> candidates, proxy = read_grid("grid.json")
>>> result = sweep("target/", "data/", "data/", candidates, "sweeps/rmu", proxy, devices=["cuda:0", "cuda:1"])
>>> result.best["config"]
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from repedit.grid import GRID_KEYS, INPUT, Candidate, expand_grid, grid_tasks, read_grid
from repedit.pool import available_devices, boot_code, run_tasks, worker_main
from repedit.proxy import ProxyConfig
from repedit.results import pareto_front, plot_pareto, rank, result_line, write_results, write_rows
from repedit.search import promote, search
from repedit.worker import EvaluatingWorker, Worker, worker_setup

__all__ = ["GRID_KEYS", "INPUT", "KEEP", "Candidate", "EvaluatingWorker", "SweepResult", "Worker", "available_devices",
           "boot_code", "expand_grid", "pareto_front", "plot_pareto", "promote", "rank", "read_grid", "run_tasks",
           "search", "sweep", "worker_main", "write_results"]

log = logging.getLogger(__name__)
KEEP = ("best", "all", "none")  # which run checkpoints a sweep leaves on disk


@dataclass
class SweepResult:
    results: list[dict]  # one per task, the input model first, in grid order
    best: dict | None  # the best configuration's result, None when every run failed
    out: Path


def sweep(model: str | Path, forget: str | Path, retain: str | Path, candidates: Sequence[Candidate],
          out: str | Path, proxy: ProxyConfig | None = None, reference: Sequence[str] | None = None,
          workers: int | None = None, devices: Sequence[str] | None = None, threads: int | None = None,
          dtype: str | None = None, keep: str = "best", evaluate: dict | None = None,
          reference_tasks: Sequence[str] | None = None, oracle_nll: Mapping[str, float] | None = None,
          on_result: Callable[[dict], None] | None = None) -> SweepResult:
    """Run every candidate (and score the input model) on ``workers`` processes over ``devices``
    (default: one per GPU, else one on the CPU; 0 workers: in this process), then write
    ``results.csv``, ``results.json``, ``pareto.png`` and ``best_config.json`` into ``out``.

    ``reference_tasks`` gives each reference text's task, so the proxy's attack sets every task's forget
    documents against unseen text of their own kind; ``oracle_nll`` (a retrain oracle's NLL of each forget document,
    by its text, and of each reference text for ``oracle_ks_relative``) adds the proxy's ``oracle_ks``. ``keep``
    says which run checkpoints stay in ``out/runs``: the best, all or none. ``evaluate``
    (``data``, ``mia``, ``mmlu``, ``mmlu_limit``; ``withheld``, ``general`` for the collateral columns)
    also runs the official evaluation of each run. ``on_result`` is given each run's result as it arrives (a failed
    attempt's too, before the run is made again): a caller that keeps its own record of each run keeps those that
    finished when the sweep is cut short (the seventy-ninth call's report scored 16 of its 22 runs and kept none).
    """
    if keep not in KEEP:
        raise ValueError(f"--keep: {keep!r} is not one of {list(KEEP)}")
    if not candidates:
        raise ValueError("--grid: no configurations")
    model, out = Path(model), Path(out)
    devices = list(devices or available_devices())
    assigned = [devices[i % len(devices)] for i in range(len(devices) if workers is None else workers)]
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, assigned.count("cpu")))
    setup = worker_setup(model, forget, retain, proxy or ProxyConfig(), reference, devices[0], dtype=dtype,
                   threads=threads, evaluate=evaluate and {**evaluate, "out": str(out / "evals")},
                   reference_tasks=list(reference_tasks) if reference_tasks else None,
                   oracle_nll=dict(oracle_nll) if oracle_nll is not None else None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps([asdict(c) for c in candidates], indent=2) + "\n")
    tasks = grid_tasks(candidates, out / "runs")
    order = {task["name"]: index for index, task in enumerate(tasks)}
    results: dict[str, dict] = {}
    kept: list[dict] = []  # with keep="best": the best run so far

    def collect(result: dict) -> None:
        results[result["name"]] = result
        log.info("%s", result_line(result))
        # the runs finished so far, in grid order: a sweep cut short (a lent GPU's time ran out in the
        # forty-eighth call's tune, 26 minutes in) keeps them for ``quality.py tune --previous``
        write_rows(out, [results[task["name"]] for task in tasks if task["name"] in results])
        if on_result is not None:
            on_result(result)
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
    retry_fewer(tasks, results, setup, assigned, collect)
    ordered = [results[task["name"]] for task in tasks]
    ranked = [r for r in ordered if r["config"] is not None and r["status"] == "ok"]
    best = max(ranked, key=rank) if ranked else None  # max keeps the first of equals: grid order
    write_results(out, ordered, best)
    return SweepResult(ordered, best, out)


def retry_fewer(tasks: list[dict], results: dict[str, dict], setup: dict, assigned: list[str],
                collect: Callable[[dict], None]) -> None:
    """Run once more, with half as many workers a device each time down to one, the runs that failed while
    other workers shared their device: eight runs on one H200, two of the fortieth call's report failed in
    cuDNN's attention as they were scored, and ran clean three to the GPU; seven of the sixty-eighth call's
    thirteen ran it out of memory (18.5 GiB each), and run again one at a time they took longer than the device
    time left, where four at once would have fit. Each keeps its first error as ``first_error``."""
    first: dict[str, str] = {}
    share = max((assigned.count(device) for device in set(assigned)), default=1)
    while share > 1:
        failed = [task for task in tasks if results[task["name"]]["status"] == "failed"]
        if not failed:
            break
        share //= 2
        first |= {task["name"]: results[task["name"]]["error"] for task in failed if task["name"] not in first}
        log.info("%d run(s) failed beside others on their device; running them again, %d a device: %s",
                 len(failed), share, ", ".join(task["name"] for task in failed))
        for task in failed:  # what the failed attempt left of its output
            if task["dir"] is not None:
                shutil.rmtree(task["dir"], ignore_errors=True)
        workers = [device for _ in range(share) for device in sorted(set(assigned))]  # devices in turn
        run_tasks(failed, setup, workers[:len(failed)], collect, EvaluatingWorker)
    for name, error in first.items():
        results[name]["first_error"] = error
