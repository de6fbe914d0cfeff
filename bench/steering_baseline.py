"""Activation steering alone, no weight changed: how far one direction added at a layer gets (#23's
baseline row), by the yardstick's NLL columns on a ``bench/quality.py build`` work directory.

The direction at layer L is the frozen target's mean h_L over train's unseen (withheld) documents minus
its mean over train's forget documents (each text's tokens averaged, then the texts), unit length. The
scale, in units of the forget tokens' mean ||h_L||, is chosen on train: the one whose worst task's
all-kind AUC is nearest 0.5. Validation is then measured with that steering on and off
(``repedit.collateral``: unseen and general NLL, all-kind AUC, oracle KS), beside the NLL of
validation's retain documents, which a steering vector cannot tell from forget ones. No generation, so
no official score: NLLs only, which a CPU computes for the small sim in minutes.

    python bench/steering_baseline.py --work W --layers 3,7,10 --out steering.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from probes.collect import collect
from probes.steering import steer
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.collateral import measure_collateral, nll_of, read_withheld
from repedit.data import TASKS, documents, load_rows
from repedit.membership import MEMBER_FILE, NONMEMBER_FILE

SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)  # x the forget tokens' mean ||h_L||


def mean_and_norm(model, tokenizer, texts: list[str], layer: int) -> tuple[torch.Tensor, float]:
    """The mean over texts of each text's token-mean h_L, and the tokens' mean ||h_L||, from one pass."""
    read = collect(model, tokenizer, texts, [layer], pooling="token")
    states = read.at(layer)
    sums = torch.zeros(len(texts), states.shape[1]).index_add_(0, read.source, states)
    counts = torch.bincount(read.source, minlength=len(texts)).unsqueeze(1)
    return (sums / counts).mean(0), states.norm(dim=-1).mean().item()


def worst_gap(result: dict) -> float:
    """How far the task furthest from chance is: what a per-task loss attack still sees."""
    return max(abs(auc - 0.5) for auc in result["all_kind_auc"].values())


def measure(model, tokenizer, work: Path, layer: int | None, direction: torch.Tensor | None, scale: float,
            retain: list[str], oracle_nll: dict) -> dict:
    """Validation's columns with ``scale`` x ``direction`` added at ``layer`` (None: the target as it is)."""
    validation = work / "sim" / "withheld" / "validation"
    general = work / "sim" / "heldout_general.jsonl"

    def columns() -> dict:
        result = measure_collateral(model, tokenizer, validation, general=general, oracle_nll=oracle_nll)
        result["retain_nll"] = statistics.fmean(nll_of(model, tokenizer, retain, "validation retain documents"))
        return result

    if layer is None:
        return columns()
    with steer(model, layer, direction, scale):
        return columns()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a bench/quality.py build work directory")
    parser.add_argument("--layers", default="7", help="layers to steer, one row each")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = load_causal_lm(args.work / "sim", torch.float32, torch.device("cpu"))
    tokenizer = load_checkpoint_tokenizer(args.work / "sim")
    train = args.work / "sim" / "withheld" / "train"
    forget_train = [t for texts in read_withheld(train, MEMBER_FILE).values() for t in texts]
    unseen_train = [t for texts in read_withheld(train, NONMEMBER_FILE).values() for t in texts]
    retain = documents([r for r in load_rows(args.work / "sets" / "validation", "retain") if r.kind == "sc"])
    oracle_nll = json.loads((args.work / "oracle_nll.json").read_text())

    started = time.monotonic()
    rows = {"target": measure(model, tokenizer, args.work, None, None, 0.0, retain, oracle_nll)}
    chosen: dict[int, dict] = {}
    for layer in map(int, args.layers.split(",")):
        forget_mean, unit = mean_and_norm(model, tokenizer, forget_train, layer)
        direction = mean_and_norm(model, tokenizer, unseen_train, layer)[0] - forget_mean
        direction = direction / direction.norm()
        tried = {}
        for scale in SCALES:
            with steer(model, layer, direction, scale * unit):
                tried[scale] = worst_gap(measure_collateral(model, tokenizer, train))
            print(f"layer {layer}, scale {scale}: worst task's |AUC - 0.5| on train {tried[scale]:.3f}", flush=True)
        best = min(tried, key=tried.__getitem__)
        chosen[layer] = {"scale": best, "unit": unit, "train_gap": tried}
        rows[f"steer layer {layer} x {best}"] = measure(model, tokenizer, args.work, layer, direction, best * unit,
                                                       retain, oracle_nll)
    args.out.write_text(json.dumps({"chosen": chosen, "rows": rows, "seconds": time.monotonic() - started},
                                   indent=1))
    target = rows["target"]
    print(f"{'row':24} {'forget NLL T1/T2/T3':>20} {'unseen NLL change':>20} {'retain':>8} {'general':>8} "
          f"{'all-kind AUC':>16} {'KS (all)':>9}")
    for name, r in rows.items():
        forget = "/".join(f"{statistics.median(r['forget_nll'][t]):.2f}" for t in TASKS)
        unseen = "/".join(f"{100 * (r['unseen_nll'][t] / target['unseen_nll'][t] - 1):+.0f}%" for t in TASKS)
        retain_change = f"{100 * (r['retain_nll'] / target['retain_nll'] - 1):+.0f}%"
        general = f"{100 * (r['general_nll'] / target['general_nll'] - 1):+.1f}%"
        auc = "/".join(f"{r['all_kind_auc'][t]:.2f}" for t in TASKS)
        print(f"{name:24} {forget:>20} {unseen:>20} {retain_change:>8} {general:>8} {auc:>16} "
              f"{r['oracle_ks']['all']:>9.2f}")


if __name__ == "__main__":
    main()
