"""Why calibration checks swing, on the tiny CPU target (bench/method_cpu.py's data and method).

Each run is the method with one change, its checks printed and its written model measured as
method_cpu measures it: ``gate-off`` keeps every forget row in the forget term (no per-document
gate); ``cycle`` checks every 15 steps, once per pass over the forget batches; ``full-batch`` puts
every forget row in each step; ``ema`` checks, and writes, an exponential moving average (decay 0.9)
of the edited weights while the live ones train as before.

    PYTHONPATH=$PWD OMP_NUM_THREADS=2 python bench/swings_cpu.py --work /tmp/method --run ema --out ema.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import method_cpu
import torch

from repedit.calibration import Calibrator
from repedit.rmu import RMUConfig
from repedit.unlearn import unlearn

CHANGES = {"gate-off": {}, "cycle": {"calibration.every": 15}, "full-batch": {"batch_size": 120, "steps": 300},
           "ema": {}}


def gate_off() -> None:
    check = Calibrator.check

    def ungated(self, model, step, trainable):
        record, done = check(self, model, step, trainable)
        self.calibrated.zero_()
        return record, done

    Calibrator.check = ungated  # type: ignore[method-assign]


def averaged(decay: float) -> None:
    average: dict[int, torch.Tensor] = {}
    step = torch.optim.AdamW.step
    check = Calibrator.check

    def stepped(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    average.setdefault(id(p), p.detach().clone()).mul_(decay).add_(p.detach(), alpha=1 - decay)
        return out

    def on_average(self, model, at, trainable):
        live = {n: p.detach().clone() for n, p in trainable.items()}
        for p in trainable.values():
            p.data.copy_(average[id(p)])
        try:  # the best check keeps (and the run writes) the averaged weights
            return check(self, model, at, trainable)
        finally:
            for n, p in trainable.items():
                p.data.copy_(live[n])

    torch.optim.AdamW.step = stepped  # type: ignore[method-assign]
    Calibrator.check = on_average  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--run", choices=list(CHANGES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.run == "gate-off":
        gate_off()
    if args.run == "ema":
        averaged(0.9)
    paths = method_cpu.prepare(args.work)
    values, reference = method_cpu.RUNS["method"]
    config = RMUConfig.from_dict({**values, **CHANGES[args.run], "calibration.unseen": str(paths[reference])})
    result = unlearn(paths["target"], paths["data"], paths["data"], args.work / "runs" / args.run, config,
                     progress=False)
    for c in result.calibration:
        print(c["step"], f"{c['forget_nll']:.2f}", " ".join(f"{a:.2f}" for a in c["task_auc"].values()))
    scores = method_cpu.measure(result.output_dir, paths)
    args.out.write_text(json.dumps({"steps": len(result.losses), "stopped": result.stopped, "scores": scores,
                                    "calibration": result.calibration}, indent=1))
    method_cpu.print_table({args.run: {"steps": len(result.losses), "scores": scores}})


if __name__ == "__main__":
    main()
