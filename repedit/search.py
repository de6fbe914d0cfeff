"""The search inside the exported submission: candidates on every device until a deadline, the best
checkpoint so far always at the output path (the input model until a run beats it)."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from repedit.checkpoint import atomic_directory, link_or_copy, save_edited
from repedit.grid import Candidate, grid_tasks
from repedit.pool import available_devices, run_tasks
from repedit.proxy import ProxyConfig
from repedit.results import rank, result_line
from repedit.worker import Worker, worker_setup


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
        logging.getLogger(__name__).info("search: %s", result_line(result))
        if result["status"] == "ok" and (not best or rank(result) > best[0]):
            if result["dir"] is not None:
                promote(Path(result["dir"]), out)
            elif best:  # the input model beats the run already promoted: back to the input
                save_edited(model, out, {})
            best[:] = [rank(result)]
            logging.getLogger(__name__).info("search: %s now holds %s (%s)", out, result["name"], result["label"])
        if result["dir"] is not None:
            shutil.rmtree(result["dir"], ignore_errors=True)

    setup = worker_setup(model, forget, retain, proxy, reference, devices[0])
    try:
        run_tasks(grid_tasks(candidates, scratch), setup, devices if script else [], collect, Worker, script,
                  deadline)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results
