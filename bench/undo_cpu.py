"""Unlearn, noise, distill (UNDO; Lee et al. 2025, "Distillation Robustifies Unlearning") on the tiny CPU
target: does a student that starts from the unlearned weights mixed with a fresh initialisation, and
learns only the unlearned model's outputs on text that is not the forget set, keep the forgetting
when an attacker relearns?

The representation edit hides the forget documents (relearning 10% of them gives back most of the
others' NLL gap on this target, BENCHMARKS.md); what the student never copies from the memorizing
weights it cannot be reminded of. Per ``--alpha`` (0: distillation alone), the student is
``(1 - alpha) * unlearned + alpha * fresh``, distilled (forward KL over every token) on the retain
documents, the reference texts and the public nonmembers; then measured as ``bench/method_cpu.py``
measures and written beside the run for ``repedit attack``. ``--hard-labels`` trains on the texts' own
tokens instead: what never seeing the forget documents gives, the control. Measured: every alpha gives
the documents back (BENCHMARKS.md, "CPU: the tiny target's tokenizer, and unlearn-noise-distill").

    PYTHONPATH=$PWD OMP_NUM_THREADS=2 python bench/undo_cpu.py --work /tmp/method2 --unlearned method \
        --alpha 1,0,0.5 [--hard-labels]
    repedit attack --model /tmp/method2/runs/undo-method-alpha-1 --reference /tmp/method2/target \
        --forget /tmp/method2/data --unseen /tmp/method2/withheld.jsonl --attacks relearn --out A
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from method_cpu import measure, prepare, print_table

from repedit.calibration import unseen_texts
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer, save_edited, weight_map
from repedit.data import load_rows
from repedit.generate import encode, pad, pad_id


def noised(model: torch.nn.Module, alpha: float, seed: int) -> torch.nn.Module:
    """``model`` with every weight moved ``alpha`` of the way to a fresh initialisation of its config."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(model.config)
    with torch.no_grad():
        for (name, weight), (fresh_name, value) in zip(model.named_parameters(), fresh.named_parameters(),
                                                       strict=True):
            assert name == fresh_name, (name, fresh_name)
            weight.mul_(1 - alpha).add_(value, alpha=alpha)
    return model


def distill(student: torch.nn.Module, teacher: torch.nn.Module | None, encoded: list[list[int]], pad_token: int,
            steps: int, lr: float, batch_size: int, seed: int) -> list[float]:
    """Forward KL(teacher || student) on every real token (no teacher: the texts' next-token loss), AdamW,
    seeded batches; the losses."""
    order = random.Random(seed)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    student.train()
    losses = []
    for _ in range(steps):
        input_ids, mask = pad(order.sample(encoded, batch_size), pad_token, "right")
        log_probs = F.log_softmax(student(input_ids=input_ids, attention_mask=mask).logits, -1)
        if teacher is None:  # the texts' own next tokens: a model that never saw the forget documents
            per_token = -log_probs[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)
            mask = mask[:, 1:]
        else:
            with torch.no_grad():
                target = F.log_softmax(teacher(input_ids=input_ids, attention_mask=mask).logits, -1)
            per_token = F.kl_div(log_probs, target, log_target=True, reduction="none").sum(-1)
        loss = (per_token * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    student.eval()
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="bench/method_cpu.py's scratch directory")
    parser.add_argument("--unlearned", default="method", help="a run of bench/method_cpu.py (WORK/runs/NAME), "
                        "or target: the same noise on the model before unlearning, the control")
    parser.add_argument("--alpha", default="1,0,0.5", help="comma-separated noise fractions")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--hard-labels", action="store_true", help="train the student on the texts' own "
                        "tokens instead of the teacher's outputs: what never seeing the forget documents gives")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, help="JSON results (default: WORK/undo_cpu.json)")
    args = parser.parse_args()
    paths = prepare(args.work)
    unlearned = paths["target"] if args.unlearned == "target" else args.work / "runs" / args.unlearned
    tokenizer = load_checkpoint_tokenizer(unlearned)
    texts = [r.document for r in load_rows(paths["data"], "retain")]
    texts += unseen_texts(str(paths["reference"])) + unseen_texts(str(paths["nonmember"]))
    encoded = [ids[: args.max_tokens] for ids in encode(tokenizer, texts)]
    teacher = load_causal_lm(unlearned)
    names = set(weight_map(unlearned))
    out = args.out or args.work / "undo_cpu.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    results[args.unlearned] = {"steps": 0, "scores": measure(unlearned, paths)}
    for alpha in (float(a) for a in args.alpha.split(",")):
        started = time.perf_counter()
        student = noised(load_causal_lm(unlearned), alpha, seed=0)
        losses = distill(student, None if args.hard_labels else teacher, encoded, pad_id(tokenizer), args.steps,
                         args.lr, args.batch_size, seed=0)
        name = f"{'hard' if args.hard_labels else 'undo'} {args.unlearned} alpha {alpha:g}"
        run = args.work / "runs" / name.replace(" ", "-")
        save_edited(unlearned, run, {k: v.detach() for k, v in student.state_dict().items() if k in names})
        results[name] = {
            "steps": args.steps, "seconds": time.perf_counter() - started, "alpha": alpha, "lr": args.lr,
            "texts": len(encoded), "losses": losses[:: max(1, args.steps // 50)], "dir": str(run),
            "scores": measure(run, paths)}
        out.write_text(json.dumps(results, indent=2))
        print_table(results)


if __name__ == "__main__":
    main()
