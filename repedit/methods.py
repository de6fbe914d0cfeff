"""The methods, by name: each one's config class and its loop. One table, read by ``unlearn``, the
CLI, the sweep and the export, so that neither method module imports the other. Named presets
(``repedit/presets/*.json``: ``published``, the paper's RMU; ``standins``, the README's recipe: the
representation edit calibrated on unseen texts of one kind and stand-ins of the others; ``ascent``, the
bounded-ascent recipe the README gave before it; ``demo``, the tiny CPU target's) are configs in JSON
form, without the paths of the texts a user gives (the unseen texts; for ``standins`` the general text its anchor
holds too, ``loss.anchor_texts``).

>>> config = config_from_dict({"method": "npo", "beta": 0.2})
>>> METHODS[config.method].run is run_baseline
True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Protocol

import torch

from repedit.baseline_configs import BaselineConfig, GradDiffConfig, NPOConfig, SUGDConfig
from repedit.baselines import run_baseline
from repedit.data import Row
from repedit.repair import run_rmu_repaired
from repedit.rmu import RMUConfig
from repedit.runtime import Budget, UnlearnResult, deterministic_algorithms

MethodConfig = RMUConfig | BaselineConfig
PRESETS = Path(__file__).parent / "presets"


class Run(Protocol):
    def __call__(self, model_dir: Path, forget_rows: list[Row], retain_rows: list[Row], out: Path, config,
                 device: torch.device, dtype: torch.dtype, budget: Budget, log: str | Path | None = None,
                 progress: bool = True) -> UnlearnResult: ...


class Method(NamedTuple):
    config: type[RMUConfig] | type[BaselineConfig]  # whose ``from_dict`` reads the JSON form
    run: Run  # the loop, for rows already read


METHODS: dict[str, Method] = {
    "rmu": Method(RMUConfig, run_rmu_repaired),
    "graddiff": Method(GradDiffConfig, run_baseline),
    "npo": Method(NPOConfig, run_baseline),
    "sugd": Method(SUGDConfig, run_baseline),
}


def config_from_dict(values: dict) -> MethodConfig:
    """A method's config from its JSON form; ``method`` picks the class (default ``rmu``)."""
    method = values.get("method", "rmu")
    if method not in METHODS:
        raise ValueError(f"--method: {method!r} is not one of {list(METHODS)}")
    return METHODS[method].config.from_dict(values)


def run_method(model_dir: Path, forget_rows: list[Row], retain_rows: list[Row], out: Path, config: MethodConfig,
               device: torch.device, dtype: torch.dtype, budget: Budget, log: str | Path | None = None,
               progress: bool = True) -> UnlearnResult:
    """The method's loop for rows already read (``config.method`` picks it), writing ``out``."""
    if device.type == "cuda":  # unlearn.json's peak_gib is this run's, whatever this process ran before it
        torch.cuda.reset_peak_memory_stats(device)
    with deterministic_algorithms(config.deterministic):
        return METHODS[config.method].run(model_dir, forget_rows, retain_rows, out, config, device, dtype, budget,
                                          log, progress)


RECIPE = "standins"  # the README's recipe: the preset ``repedit export`` writes when given no config


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.json"))


def preset(name: str) -> dict:
    """The JSON form of the preset ``name`` (``--preset``); give ``"calibration.unseen"`` beside it to
    calibrate: ``config_from_dict({**preset("standins"), "calibration.unseen": "unseen.jsonl"})``."""
    path = PRESETS / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"--preset: {name!r} is not one of {preset_names()}")
    return json.loads(path.read_text())
