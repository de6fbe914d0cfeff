"""Which forget tokens RMU misdirects (``--forget-tokens all | answer | document``), side by side;
or any other RMU option (``--vary forget_ascent=0,1``).

Runs calibrated RMU once per value on one target, everything else equal, and evaluates each
checkpoint with the SemEval metric (MIA included; MMLU when ``--mmlu`` is given). By default the
target is the demo's: a synthetic LUME-shaped set, the ``tiny`` target built on it, on the CPU in
minutes, with the demo's RMU settings. ``--target`` and ``--data`` run it on another (say ``sim``
on a GPU) with ``--config`` settings. Usage:

    python bench/forget_tokens.py --work /tmp/ft --out forget_tokens.json
    python bench/forget_tokens.py --work W --target sim/ --data semeval25/train --mia semeval25/mia_data \\
        --reference reference.jsonl --config rmu.json --mmlu mmlu/ --out ft.json
    python bench/forget_tokens.py --work /tmp/fa --config rmu.json --vary forget_ascent=0,1,10 --out fa.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from repedit.demo import COMPARED, DEMO_RMU, demo_sets
from repedit.evaluate import evaluate
from repedit.rmu import FORGET_TOKENS, Calibration, Loss, RMUConfig
from repedit.target import build_target
from repedit.unlearn import unlearn

SUMMARY = dict(zip(COMPARED, ("task agg", "MIA AUC", "MIA", "MMLU", "final"), strict=True))  # key: column


def demo_target(work: Path, seed: int) -> tuple[Path, Path, Path, Path]:
    """The demo's synthetic sets, its unseen reference documents and the tiny target built on them."""
    data, reference = demo_sets(work, seed)
    target = work / "target"
    if not (target / "config.json").is_file():
        build_target("tiny", [data], target, seed=seed, mia=data / "mia_data")
    return target, data, data / "mia_data", reference


def parse_vary(text: str) -> tuple[str, list]:
    """``name=v1,v2``: an RMU config field and the values it takes (JSON, else strings)."""
    name, _, values = text.partition("=")
    known = {f.name for f in dataclasses.fields(RMUConfig) if f.init} | {
        f"{group}.{f.name}" for group, cls in (("loss", Loss), ("calibration", Calibration))
        for f in dataclasses.fields(cls)}
    if name not in known or not values:
        raise argparse.ArgumentTypeError(f"--vary {text!r}: expected FIELD=V1,V2 with FIELD one of {sorted(known)}")

    def parse(value: str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value

    return name, [parse(v) for v in values.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch: data, target, checkpoints, evaluations")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    parser.add_argument("--target", type=Path, help="a built target (default: build the demo's tiny one)")
    parser.add_argument("--data", type=Path, help="--target: forget and retain sets (unlearned and evaluated)")
    parser.add_argument("--mia", type=Path, help="--target: member and nonmember .jsonl")
    parser.add_argument("--reference", type=Path, help="--target: texts it never saw, for calibration")
    parser.add_argument("--config", type=Path, help="RMU config JSON (default: the demo's); --vary's option varies")
    parser.add_argument("--mmlu", type=Path, help="MMLU directory (default: no MMLU term)")
    parser.add_argument("--vary", type=parse_vary, default=("loss.forget_tokens", list(FORGET_TOKENS)),
                        help="FIELD=V1,V2: the option compared (default: loss.forget_tokens=all,answer,document)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.target is not None and None in (args.data, args.mia, args.reference):
        parser.error("--target needs --data, --mia and --reference")
    base = json.loads(args.config.read_text()) if args.config else DEMO_RMU
    name, values = args.vary
    try:  # every value checked before any work
        configs = {str(v): {**base, name: v} for v in values}
        for varied in configs.values():
            RMUConfig.from_dict({**varied, "calibration.unseen": "unseen.jsonl"})
    except ValueError as error:
        parser.error(f"--vary: {error}")
    if args.target is None:
        target, data, mia, reference = demo_target(args.work, args.seed)
    else:
        target, data, mia, reference = args.target, args.data, args.mia, args.reference
    report: dict = {"target": str(target), "config": base, "varied": name, "runs": {}}
    for choice, varied in configs.items():
        config = RMUConfig.from_dict({**varied, "calibration.unseen": str(reference)})
        result = unlearn(target, data, data, args.work / f"rmu-{name}-{choice}", config)
        scores = evaluate(result.output_dir, data, args.work / f"eval-{name}-{choice}", mia_dir=mia,
                          mmlu_dir=args.mmlu)
        report["runs"][choice] = {"steps": len(result.losses), "stopped": result.stopped,
                                  "unlearn_s": result.timings.get("total"), "scores": scores}
        args.out.write_text(json.dumps(report, indent=2, default=str))
    print_table(name, report["runs"])


def print_table(name: str, runs: dict) -> None:
    """The varied option's value, the 12 terms, the summary scores, steps and why the run stopped."""
    print(f"\n{name:14}" + "".join(f"{'t' + str(i + 1):>6}" for i in range(12))
          + "".join(f"{label:>9}" for label in SUMMARY.values()) + f"{'steps':>7}  stopped")
    for choice, run in runs.items():
        s = run["scores"]
        summary = "".join(f"{s[k]:9.3f}" if s.get(k) is not None else f"{'-':>9}" for k in SUMMARY)
        print(f"{choice:14}" + "".join(f"{v:6.2f}" for v in s["aggregated-terms"]) + summary
              + f"{run['steps']:7d}  {run['stopped']}")


if __name__ == "__main__":
    main()
