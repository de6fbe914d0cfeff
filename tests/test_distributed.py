"""Data-parallel RMU (``repedit.distributed``): two CPU processes joined through gloo, launched with
the environment ``torchrun`` and ``accelerate launch`` set, edit what one process edits."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from repedit.checkpoint import load_tensors, weight_map
from repedit.distributed import active, all_reduce_grads, broadcast, is_main, share, total
from repedit.rmu import RMUConfig
from repedit.unlearn import unlearn

# Five rows a set per batch: the two processes hold 3 and 2 of each, so the shares are unequal.
CONFIG = {"layers": [2, 3, 4], "steps": 4, "batch_size": 5, "max_length": 64, "adaptive": 5.0, "loss.alpha": 100.0,
          "lr": 1e-3, "loss.retain_nll": 1.0}


def launch(config: Path, model_dir: Path, synth_dir: Path, out: Path) -> list[str]:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "repedit.cli", "unlearn", "--model", str(model_dir), "--forget", str(synth_dir),
               "--retain", str(synth_dir), "--out", str(out), "--config", str(config), "--device", "cpu"]
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))  # this checkout
    base = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    processes = [subprocess.Popen(command, env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    return outputs


def test_without_a_process_group_every_helper_is_the_identity():
    batch = {"input_ids": torch.arange(12).view(4, 3), "documents": torch.tensor([7, 8])}
    assert not active() and is_main() and broadcast("stop") == "stop"
    assert share(batch, 2) == (batch, 2)
    count = torch.tensor(3.0)
    assert total(count) is count
    weight = torch.nn.Parameter(torch.ones(2))
    weight.grad = torch.tensor([1.0, 2.0])
    all_reduce_grads([weight])
    assert weight.grad.tolist() == [1.0, 2.0]


def test_two_processes_edit_what_one_edits_and_write_it_once(tiny_model_dir, synth_dir, tmp_path):
    config_file = tmp_path / "rmu.json"
    config_file.write_text(json.dumps(CONFIG))
    outputs = launch(config_file, tiny_model_dir, synth_dir, tmp_path / "two")
    one = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "one", RMUConfig.from_dict(CONFIG), device="cpu",
                  progress=False)
    two = tmp_path / "two"
    assert "wrote" in outputs[0] and "wrote" not in outputs[1]  # only the main process reports and writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "rmu.json", "two"]  # no scratch left behind
    written = sorted(p.name for p in one.output_dir.iterdir())
    assert sorted(p.name for p in two.iterdir()) == sorted([*written, "unlearn_curves.png"])  # the CLI's plot
    logged = [json.loads(line) for line in (two / "unlearn_log.jsonl").read_text().splitlines()]
    assert len(logged) == len(one.losses) == 4
    for mine, theirs in zip(logged, one.losses, strict=True):  # every term, over the whole batch
        for term in ("loss", "forget", "retain", "retain_nll"):
            assert abs(mine[term] - theirs[term]) <= 1e-5 * (1 + abs(theirs[term])), (term, mine, theirs)
    for name, shard in weight_map(tiny_model_dir).items():
        torch.testing.assert_close(load_tensors(two / shard, {name})[name],
                                   load_tensors(one.output_dir / shard, {name})[name], rtol=1e-5, atol=1e-5)
