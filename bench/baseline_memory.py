"""One training step of a fine-tuning baseline: its peak memory and time, with the LM head on the answer tokens
alone (``repedit.baselines.answer_nll``) against the whole logits (transformers' own ``labels=`` loss, as the
baselines computed it until the forty-eighth call, when eight graddiff/NPO/SUGD runs did not fit one H200).

The batch is the ``--batch`` longest rows of ``--rows`` (the worst step of an epoch: every row padded to the
longest), every weight trained, under bf16 autocast. Each path runs in a fresh process, so the peak is its own
(CPU: the process's peak resident memory less what it held before the step; CUDA: the allocator's peak), and
the time is a second step's: the forty-ninth call's first CUDA step took 3.8 s on the answer tokens, 0.7 on the logits.

    PYTHONPATH=$PWD python bench/baseline_memory.py --model W/sim --rows W/sets/train/forget.jsonl [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from repedit.baselines import answer_nll
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import IGNORE_INDEX, collate, load_rows, training_examples

PATHS = ("answer tokens", "whole logits")


def peak_bytes(device: str) -> int:
    """The CUDA allocator's peak since its last reset, or this process's peak resident memory."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def step(model_dir: Path, rows: Path, batch_size: int, device: str, path: str) -> dict:
    """Two forwards and backwards of ``path`` on the longest rows: the first's peak GiB above the loaded model,
    the second's seconds (the first's too: on CUDA it pays for the kernels' first launch)."""
    tokenizer = load_checkpoint_tokenizer(model_dir)
    examples = sorted(training_examples(load_rows(rows), tokenizer, 512), key=lambda e: -len(e.input_ids))
    batch = {k: v.to(device) for k, v in collate(examples[:batch_size], tokenizer.pad_token_id).items()}
    model = load_causal_lm(model_dir, torch.float32, device)
    model.requires_grad_(True)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    held = peak_bytes(device)

    def one_step() -> float:
        start = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            if path == "answer tokens":
                loss = answer_nll(model, batch)[0].mean()
            else:
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"], use_cache=False).loss
        loss.backward()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    cold = one_step()  # the peak: the first step allocates what every later one reuses (the gradients among it)
    peak = peak_bytes(device)
    model.zero_grad(set_to_none=True)
    seconds = one_step()  # the time: a warm step
    labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return {"path": path, "rows": len(batch["input_ids"]), "width": batch["input_ids"].shape[1],
            "labelled tokens": labelled, "peak GiB": (peak - held) / 2**30, "seconds": seconds,
            "first step seconds": cold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the checkpoint the baseline trains")
    parser.add_argument("--rows", type=Path, required=True, help="forget rows (.jsonl of input / output)")
    parser.add_argument("--batch", type=int, default=64, help="rows a step: 32 forget and 32 retain, graddiff's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--path", choices=PATHS, help="one path, in this process (default: each in its own)")
    parser.add_argument("--out", type=Path, help="JSON results")
    args = parser.parse_args()
    if args.path:
        print(json.dumps(step(args.model, args.rows, args.batch, args.device, args.path)))
        return
    found = []
    for path in PATHS:
        done = subprocess.run([sys.executable, __file__, "--model", str(args.model), "--rows", str(args.rows),
                               "--batch", str(args.batch), "--device", args.device, "--path", path],
                              capture_output=True, text=True, check=True)
        found.append(json.loads(done.stdout.splitlines()[-1]))
    print(f"{'path':16}{'rows':>6}{'width':>7}{'labelled':>10}{'peak GiB':>10}{'seconds':>9}{'first step':>12}")
    for r in found:
        print(f"{r['path']:16}{r['rows']:6}{r['width']:7}{r['labelled tokens']:10}{r['peak GiB']:10.2f}"
              f"{r['seconds']:9.2f}{r['first step seconds']:12.2f}")
    if args.out:
        args.out.write_text(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
