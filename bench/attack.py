"""Robustness of every quality-table method: each attack of ``repedit.attack`` on each checkpoint.

Given the checkpoints of the quality benchmark (``bench/quality.py``: recommended, published RMU,
ascent recipe, graddiff, NPO, SUGD), the target they were unlearned from, the forget set and the
retrain oracle, runs every attack against the same probed forget documents and prints one table,
method x attack, of the recovered fraction of regurgitation, QA and NLL (the goal for the recommended
method: at most 0.10 under each attack). The original model and the oracle control are measured once
for all methods. Usage (one GPU; also runs on a CPU against the tiny target):

    python bench/attack.py --runs recommended=W/rmu rmu-published=W/pub graddiff=W/gd ... \
        --reference W/sim --forget W/heldout --oracle W/oracle --unseen W/unseen.jsonl --out attack-h200
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from repedit.attack import ATTACKS, Attack, AttackConfig
from repedit.attack_report import write_report
from repedit.data import load_rows
from repedit.relearn import FinetuneConfig, split_documents


def named_runs(values: list[str]) -> dict[str, Path]:
    runs = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--runs: expected NAME=DIR, got {value!r}")
        if not Path(path).is_dir():
            raise SystemExit(f"--runs: {name}: {path}: no such checkpoint directory")
        runs[name] = Path(path)
    return runs


_attack: Attack | None = None  # a worker process's own, built once by ``_start``


def _start(reference: Path, forget: Path, config: AttackConfig, options: dict) -> None:
    global _attack
    _attack = Attack(reference, forget, config, **options)


def _run(directory: Path) -> dict:
    assert _attack is not None
    return _attack.run(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="NAME=DIR of each unlearned checkpoint")
    parser.add_argument("--reference", type=Path, required=True, help="the target before unlearning")
    parser.add_argument("--forget", type=Path, required=True, help="the forget set the runs unlearned")
    parser.add_argument("--oracle", type=Path, help="retrain oracle: relearning's control")
    parser.add_argument("--retain", type=Path, help="benign fine-tuning text (default: the retain set beside --forget)")
    parser.add_argument("--unseen", type=Path, help="documents never trained on (.jsonl)")
    parser.add_argument("--out", type=Path, required=True, help="directory: attack.json, attack.txt, attack.png")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="official: 256; less for CPU smoke runs")
    parser.add_argument("--eval-batch-size", type=int, default=256, help="a 36 MB sim is launch-bound (256)")
    parser.add_argument("--steps", type=int, default=FinetuneConfig.steps, help="fine-tuning steps")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated subset of "
                        f"{','.join(ATTACKS)} (default: every one; relearn alone on train's forget set, whose "
                        "1,112 rows make each attack four times validation's)")
    parser.add_argument("--relearn-known", type=int, help="forget documents the relearning attacker knows "
                        "(default: a tenth of them, 8 of validation's 81 on the sim; AttackConfig.relearn_known)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--jobs", type=int, default=1, help="processes attacking checkpoints side by side, each "
                        "measuring the original model (and oracle) once for itself")
    args = parser.parse_args()

    runs = named_runs(args.runs)
    config = AttackConfig(attacks=tuple(args.attacks.split(",")), max_new_tokens=args.max_new_tokens,
                          eval_batch_size=args.eval_batch_size, finetune=FinetuneConfig(steps=args.steps),
                          relearn_known=args.relearn_known)
    try:
        config.validate()
    except ValueError as error:
        parser.error(str(error))
    try:  # the attacker's documents, before a model loads or a worker starts: a count the set cannot give is refused
        split_documents(load_rows(args.forget, "forget"), config.relearn_fraction, config.finetune.seed,
                        config.relearn_known)
    except ValueError as error:
        parser.error(f"--forget {args.forget}: {error}")
    start = time.perf_counter()
    options = {"oracle": args.oracle, "retain": args.retain, "unseen": args.unseen, "device": args.device}
    reports = {}
    if args.jobs == 1:
        attack = Attack(args.reference, args.forget, config, **options)
        for name, directory in runs.items():
            reports[name] = attack.run(directory)
            print(f"{name}: attacked ({time.perf_counter() - start:.0f} s so far)", flush=True)
    else:  # a small model is launch-bound: processes sharing one GPU finish sooner than one
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                                 initargs=(args.reference, args.forget, config, options)) as pool:
            futures = {name: pool.submit(_run, directory) for name, directory in runs.items()}
            for name, future in futures.items():
                reports[name] = future.result()
                print(f"{name}: attacked ({time.perf_counter() - start:.0f} s so far)", flush=True)
    write_report(reports, args.out)
    (args.out / "timing.json").write_text(json.dumps({"seconds": time.perf_counter() - start}) + "\n")


if __name__ == "__main__":
    main()
