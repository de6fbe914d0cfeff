"""Which attacker gives the edit back? The relearn attack's fine-tuning with other budgets and weights.

For each run of ``bench/method_cpu.py``, fine-tunes the unlearned checkpoint on the 4 forget documents the
relearning attacker knows (``repedit.relearn``: 10%, seed 0) with only the named weights trainable, and
reports the probed documents' mean NLL and the recovered fraction of the gap the edit opened: the attack
itself (every weight, 30 steps at 1e-4), the attackers ``repedit.adversary`` plays in the loop (the edited
MLPs or every weight, 3 steps at 1e-3; the option, tried and removed, is at commit 13aa2bb) and the attack
restricted to parts of the model. Its answer on the tiny target (BENCHMARKS.md): relearning goes around the edit
through the layers below it.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/relearn_attackers.py --work /tmp/adv --runs "today,..."
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

from repedit.attack import recovered_fraction
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import documents, load_rows, training_examples
from repedit.generate import document_nll, pad_id
from repedit.relearn import FinetuneConfig, finetune, split_documents

EDITED = tuple(f"model.layers.{i}.mlp.{m}_proj." for i in (2, 3, 4) for m in ("gate", "up", "down"))
BELOW = ("model.embed", "model.layers.0.", "model.layers.1.")
ABOVE = ("model.layers.5.", "model.norm", "lm_head")
ATTACKERS = {  # name: (steps, lr, does a parameter name train?)
    "the attack (every weight, 30 x 1e-4)": (30, 1e-4, lambda n: True),
    "in-loop, edited MLPs (3 x 1e-3)": (3, 1e-3, lambda n: n.startswith(EDITED)),
    "in-loop, every weight (3 x 1e-3)": (3, 1e-3, lambda n: True),
    "edited MLPs, 30 x 1e-4": (30, 1e-4, lambda n: n.startswith(EDITED)),
    "layers 2-4, 30 x 1e-4": (30, 1e-4, lambda n: n.startswith(tuple(f"model.layers.{i}." for i in (2, 3, 4)))),
    "layers 0-1 + embeddings, 30 x 1e-4": (30, 1e-4, lambda n: n.startswith(BELOW)),
    "layer 5 + norm + head, 30 x 1e-4": (30, 1e-4, lambda n: n.startswith(ABOVE)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="bench/method_cpu.py's work directory")
    parser.add_argument("--runs", required=True, help="comma-separated run names under WORK/runs")
    parser.add_argument("--out", type=Path, help="JSON results (default: WORK/relearn_attackers.json)")
    args = parser.parse_args()
    tokenizer = load_checkpoint_tokenizer(args.work / "target")
    known, probed = split_documents(load_rows(args.work / "data", "forget"), 0.1, 0)
    examples = training_examples(known, tokenizer, 512, whole_documents=True)
    texts = documents([r for r in probed if r.kind == "sc"])

    def nll(model) -> float:
        return statistics.fmean(document_nll(model, tokenizer, texts))

    original = nll(load_causal_lm(args.work / "target"))
    results: dict = {"original": original}
    for run in args.runs.split(","):
        unlearned = load_causal_lm(args.work / "runs" / run)
        before = nll(unlearned)
        results[run] = {"unlearned": before}
        for name, (steps, lr, trains) in ATTACKERS.items():
            model = copy.deepcopy(unlearned)
            for parameter_name, parameter in model.named_parameters():
                parameter.requires_grad_(trains(parameter_name))
            finetune(model, examples, FinetuneConfig(steps=steps, lr=lr), pad_id(tokenizer), name)
            after = nll(model)
            results[run][name] = {"nll": after, "recovered": recovered_fraction(original, before, after, 0.0)}
        print(run, f"{before:.2f}", {k: f"{v['recovered']:.2f}" for k, v in results[run].items() if k != "unlearned"},
              flush=True)
    (args.out or args.work / "relearn_attackers.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
