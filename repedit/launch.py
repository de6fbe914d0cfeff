"""The submission's data-parallel run: the file itself in one process per GPU, joined as torchrun would.

The challenge calls ``unlearn`` in one process on a machine of 8 GPUs, and the recommended recipe at
7B needs several of them to end inside the hour (BENCHMARKS.md). ``spread`` starts ``processes``
interpreters that load the submission file (``runpy``, as the sweep's workers do: a file loaded by
path has no module name to re-import) and call one of its functions with the same payload, with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set, so that
``repedit.distributed.joined`` forms the group (nccl on GPUs, gloo on CPU) and rank 0 writes.

Only torch and the standard library, so that ``repedit export`` can inline it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from repedit.pool import PARENT_PATH, child_environment, interpreter_flags

GRACE_SECONDS = 120.0  # past the deadline before the ranks are stopped: the last save takes time


def processes_to_use() -> int:
    """One per visible GPU, or ``REPEDIT_PROCESSES`` (CPU processes where there is no GPU)."""
    return int(os.environ.get("REPEDIT_PROCESSES", "0")) or max(torch.cuda.device_count(), 1)


def spread(script: str, function: str, payload: dict, processes: int, deadline: float) -> dict:
    """``function(payload)`` of the file ``script`` in ``processes`` ranks; rank 0's return value.

    Raises RuntimeError when a rank fails or the ranks outrun ``deadline`` (wall-clock seconds) by
    ``GRACE_SECONDS``: every rank is then stopped.
    """
    with tempfile.TemporaryDirectory(prefix="repedit-ranks-") as scratch:
        given, returned = Path(scratch) / "payload.json", Path(scratch) / "result.json"
        given.write_text(json.dumps(payload))
        code = (f"{PARENT_PATH}\nimport runpy\n"
                f"value = runpy.run_path({script!r})[{function!r}](json.loads(open({str(given)!r}).read()))\n"
                "if os.environ['RANK'] == '0':\n"
                f"    open({str(returned)!r}, 'w').write(json.dumps(value, default=str))\n")
        group = {"WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes), "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}
        ranks = [subprocess.Popen([sys.executable, *interpreter_flags(), "-c", code],
                                  env={**child_environment(), **group, "RANK": str(r), "LOCAL_RANK": str(r)})
                 for r in range(processes)]
        try:
            codes = [rank.wait(timeout=max(deadline + GRACE_SECONDS - time.time(), 1.0)) for rank in ranks]
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"data-parallel run: the {processes} ranks outran the time budget; stopped") from None
        finally:
            for rank in ranks:
                if rank.poll() is None:
                    rank.kill()
        if any(codes) or not returned.is_file():
            raise RuntimeError(f"data-parallel run: rank exit codes {codes} (the errors are above)")
        return json.loads(returned.read_text())


def free_port() -> int:
    """A TCP port free on this machine now, for the ranks to meet on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
