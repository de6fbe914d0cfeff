"""A process pool for sweeps: one worker process per device, all fed from one queue.

Workers are Python processes started from code (``boot_code``), not multiprocessing's spawn: spawn
re-imports the parent's ``__main__`` (in the challenge, the organizers' harness, which may start
unlearning again on import) and unpickles the worker function by its module name, which a
submission file loaded by path does not have. A worker is any class built from a setup dict with a
``run(task) -> result`` method (``repedit.worker.Worker``); a worker's crash or a task's error is
reported for that task and the rest go on.

>>> run_tasks(tasks, setup, ["cuda:0", "cuda:1"], results.append, Worker)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Protocol

import torch

# How a child interpreter sees the packages its parent sees: the parent's ``sys.path`` travels in the
# environment (``child_environment``) and the child's code starts with this line.
PARENT_PATH = "import json, os, sys; sys.path[:] = json.loads(os.environ['REPEDIT_WORKER_PATH'])"


def child_environment() -> dict[str, str]:
    """This process's environment with its ``sys.path`` for ``PARENT_PATH`` to restore."""
    return {**os.environ, "REPEDIT_WORKER_PATH": json.dumps(sys.path)}


def boot_code(worker: str, script: str | None = None, module: str = "repedit.worker") -> str:
    """The code a worker process runs: the parent's ``sys.path``, then ``worker_main`` with the class
    named ``worker``, from ``module`` or from the submission file ``script`` that inlines both."""
    main = worker_main.__name__  # a reference, so that the exported submission inlines it
    load = (f"import runpy; ns = runpy.run_path({script!r}); main, cls = ns[{main!r}], ns[{worker!r}]"
            if script else f"import importlib, repedit.pool; main = repedit.pool.{main}; "
            f"cls = getattr(importlib.import_module({module!r}), {worker!r})")
    return f"{PARENT_PATH}; {load}; main(cls)"


class WorkerType(Protocol):
    """What the pool runs: built once per process from the setup, then one task after another."""

    def __init__(self, setup: dict) -> None: ...

    def run(self, task: dict) -> dict: ...


def worker_main(worker: type[WorkerType]) -> None:
    """A worker process: read the setup, build ``worker``, then run tasks until told to stop (None)."""
    conn = Connection(int(sys.argv[1]))
    setup = conn.recv()
    try:
        state = worker(setup)
    except Exception as error:
        conn.send({"kind": "failed", "error": describe(error), "traceback": traceback.format_exc()})
        return
    conn.send({"kind": "ready"})
    while (task := conn.recv()) is not None:
        conn.send({"kind": "result", "result": state.run(task)})


def describe(error: Exception) -> str:
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


def interpreter_flags() -> list[str]:
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


class _Pool:
    """Worker processes fed from one queue: each takes the next task when it reports the last."""

    def __init__(self, tasks: Sequence[dict], setup: dict, worker: type[WorkerType], script: str | None,
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
        code = boot_code(self.worker.__name__, self.script, self.worker.__module__)
        command = [sys.executable, *interpreter_flags(), "-c", code, str(child.fileno())]
        popen = subprocess.Popen(command, pass_fds=[child.fileno()],
                                 env={**child_environment(), **env})
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
              worker: type[WorkerType], script: str | None = None,
              deadline: float | None = None) -> None:
    """Run ``tasks`` on a worker process per entry of ``devices``, each taking the next task when it
    finishes one; ``on_result`` gets each task's result in this process as it arrives: failures,
    crashes and tasks left at ``deadline`` (``time.time()``) included. No devices: run them here."""
    clock = _Clock(deadline)
    if devices:
        pool = _Pool(tasks, setup, worker, script, on_result, clock)
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
