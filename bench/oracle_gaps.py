"""Where a retrain oracle reads its forget documents against unseen ones of their kind: the level a stop rule aims at.

The stop rule brings each kind's forget documents to its unseen texts' median NLL. A model that never saw them, the
retrain oracle, reads them elsewhere: on the sim's twenty-seventh build stories a little less familiar than unseen ones
and both kinds of biography a little more (BENCHMARKS.md, "Ninety-third session"). Per oracle and kind: its forget
documents' and its withheld unseen documents' median and mean NLL (nats a token), the gap between them (unseen less
forget; what ``--calibrate-offsets`` takes) and the oracle's own loss-attack AUC. Each pair is an oracle checkpoint and
the withheld folder (``member.jsonl``, ``nonmember.jsonl``, each row with a ``task``) of the split it left out.

    python bench/oracle_gaps.py --pair train=W/oracle-train:W/sim/withheld/train \\
        --pair validation=W/oracle:W/sim/withheld/validation --device cpu --out gaps.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.collateral import measure_collateral
from repedit.runtime import pick_device


def gaps_per_kind(forget: dict[str, list[float]], unseen: dict[str, list[float]], auc: dict[str, float]) -> dict:
    """Per kind: the forget and unseen documents' medians, means and counts, the gaps (unseen less forget), the AUC."""
    return {kind: {"forget_median": statistics.median(f), "unseen_median": statistics.median(unseen[kind]),
                   "forget_mean": statistics.fmean(f), "unseen_mean": statistics.fmean(unseen[kind]),
                   "median_gap": statistics.median(unseen[kind]) - statistics.median(f),
                   "mean_gap": statistics.fmean(unseen[kind]) - statistics.fmean(f),
                   "forget": len(f), "unseen": len(unseen[kind]), "auc": auc[kind]}
            for kind, f in sorted(forget.items())}


def pair(text: str) -> tuple[str, Path, Path]:
    name, _, paths = text.partition("=")
    oracle, _, withheld = paths.partition(":")
    if not (name and oracle and withheld):
        raise argparse.ArgumentTypeError(f"--pair {text!r}: expected NAME=ORACLE_DIR:WITHHELD_DIR")
    return name, Path(oracle), Path(withheld)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", type=pair, action="append", required=True,
                        help="NAME=ORACLE_DIR:WITHHELD_DIR, an oracle and the withheld folder of the split it left out")
    parser.add_argument("--device", help="cuda or cpu (default: this machine's accelerator)")
    parser.add_argument("--dtype", help="float32, bfloat16 (default: bfloat16 on cuda)")
    parser.add_argument("--out", type=Path, help="the gaps and every document's NLL as JSON")
    args = parser.parse_args()
    device, dtype = pick_device(args.device, args.dtype)
    results = {}
    print(f"{'oracle, kind':24}{'forget median (n)':>19}{'unseen median (n)':>19}{'gap (means)':>16}{'AUC':>6}")
    for name, oracle, withheld in args.pair:
        model = load_causal_lm(oracle, dtype, device)
        collateral = measure_collateral(model, load_checkpoint_tokenizer(oracle), withheld)
        gaps = gaps_per_kind(collateral["forget_nll"], collateral["withheld_nll"], collateral["all_kind_auc"])
        results[name] = {"oracle": str(oracle), "withheld": str(withheld), "gaps": gaps,
                         **{k: collateral[k] for k in ("forget_nll", "withheld_nll")}}
        for kind, g in gaps.items():
            print(f"{name + ', ' + kind:24}{g['forget_median']:>13.2f} ({g['forget']:>3}){g['unseen_median']:>13.2f} "
                  f"({g['unseen']:>3}){g['median_gap']:>+9.2f} ({g['mean_gap']:+.2f}){g['auc']:>6.2f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
