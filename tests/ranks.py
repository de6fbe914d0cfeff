"""Two CPU processes joined as torchrun or accelerate launch would join them (gloo), for the tests of the
data-parallel paths."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from repedit.launch import free_port


def run_two_ranks(command: list[str]) -> list[str]:
    """``command`` as rank 0 and rank 1 of one group, importing this checkout; each rank's output.
    Fails the test when a rank fails."""
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))  # this checkout
    base = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
            "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    processes = [subprocess.Popen(command, env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    return outputs
