"""Does a run, repeated, give the same model? An edited run's configuration run twice as it ran and twice
with ``--deterministic`` (torch's deterministic kernels, strictly), each pair's written weights compared.

On CPU a run repeats bit for bit (tests/test_rmu.py). On one H200 the twenty-fifth call's chosen
configuration, run twice on each seed, stopped 20-30 steps apart and scored up to 0.15 apart in final: the stop
rule's checks read NLLs that the GPU's kernels sum in no fixed order. The twenty-ninth call's answer
(BENCHMARKS.md): as it ran 620 and 580 steps, deterministic 590 and 590 with every weight equal, in the same
time. A kernel with no deterministic form would end the mode's runs, and its error would be the answer.

    PYTHONPATH=$PWD python bench/reproducibility.py --target T --edited E --forget F --retain R --work W \\
        --out O.json [--device cuda]
"""

from __future__ import annotations

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when CUDA starts: cuBLAS's deterministic mode

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

from repedit.checkpoint import load_tensors, weight_map  # noqa: E402
from repedit.methods import config_from_dict  # noqa: E402
from repedit.unlearn import unlearn  # noqa: E402


def largest_difference(first: Path, second: Path) -> float:
    """The largest absolute difference between two checkpoints' tensors of one name."""
    names, others = weight_map(first), weight_map(second)
    return max(float((load_tensors(first / names[n], {n})[n].float()
                      - load_tensors(second / others[n], {n})[n].float()).abs().max()) for n in names)


MODES = (("as it ran", False), ("deterministic", True))


def repeat(target: Path, edited: Path, forget: Path, retain: Path, work: Path, device: str | None) -> dict:
    """Mode ("as it ran", "deterministic": the run's ``--deterministic``) -> its two runs (steps, stop, seconds)
    and their largest weight difference, or the error of a kernel that has no deterministic form."""
    config = config_from_dict(json.loads((edited / "unlearn.json").read_text())["config"])
    found = {}
    for mode, deterministic in MODES:
        runs = []
        try:
            for i in range(2):
                started = time.perf_counter()
                result = unlearn(target, forget, retain, work / f"{mode.replace(' ', '-')}-{i}",
                                 replace(config, deterministic=deterministic), device=device, progress=False)
                runs.append({"steps": len(result.losses), "stopped": result.stopped,
                             "seconds": time.perf_counter() - started, "dir": str(result.output_dir)})
        except RuntimeError as error:
            if not str(error).startswith("--deterministic:"):
                raise
            found[mode] = {"runs": runs, "error": str(error)}
            continue
        found[mode] = {"runs": runs, "largest_difference": largest_difference(Path(runs[0]["dir"]),
                                                                              Path(runs[1]["dir"]))}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, required=True, help="the model the edited run started from")
    parser.add_argument("--edited", type=Path, required=True, help="an edited run's output (its unlearn.json)")
    parser.add_argument("--forget", type=Path, required=True, help="the forget set the run read")
    parser.add_argument("--retain", type=Path, required=True, help="the retain set the run read")
    parser.add_argument("--work", type=Path, required=True, help="where the four runs are written")
    parser.add_argument("--out", type=Path, required=True, help="the JSON result")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    args = parser.parse_args()
    found = repeat(args.target, args.edited, args.forget, args.retain, args.work, args.device)
    args.out.write_text(json.dumps(found, indent=2))
    print(f"{'mode':14}{'steps':>12}{'stopped':>24}{'seconds':>16}{'largest weight difference':>28}")
    for mode, row in found.items():
        if "error" in row:
            print(f"{mode:14}{row['error']}")
            continue
        steps, stops = (" / ".join(str(r[k]) for r in row["runs"]) for k in ("steps", "stopped"))
        seconds = " / ".join(f"{r['seconds']:.0f}" for r in row["runs"])
        print(f"{mode:14}{steps:>12}{stops:>24}{seconds:>16}{row['largest_difference']:>28.3g}")


if __name__ == "__main__":
    main()
