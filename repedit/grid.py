"""Grids: the candidate configurations of a sweep, and the tasks a sweep's workers run.

A grid file is ``{"base": {...}, "grid": {"lr": [1e-4, 3e-4], "steps": [50, 100]}}`` (the Cartesian
product of the listed values over ``base``), or ``{"base": {...}, "configs": [{...}, ...]}`` or a
plain list (each entry over ``base``); an optional ``"proxy"`` object sets ``ProxyConfig``.

>>> candidates, proxy = read_grid("grid.json")
>>> [c.label for c in candidates]
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from repedit.methods import config_from_dict
from repedit.proxy import ProxyConfig

GRID_KEYS = ("base", "grid", "configs", "proxy")
INPUT = "input"  # the task that scores the untouched input model, the baseline every run must beat


@dataclass(frozen=True)
class Candidate:
    name: str  # run directory name
    label: str  # the keys that vary across the grid, as this config sets them, e.g. "lr=0.0001 steps=50"
    config: dict  # the method config in its JSON form (``config_from_dict``)


def expand_grid(grid: dict | list, where: str = "grid") -> list[Candidate]:
    """The candidates of a grid (module docstring); each config is checked by ``config_from_dict``."""
    if isinstance(grid, list):
        grid = {"configs": grid}
    if not isinstance(grid, dict):
        raise ValueError(f"{where}: expected a JSON object or list")
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {list(GRID_KEYS)}")
    base = grid.get("base", {})
    if "configs" in grid:
        configs = [{**base, **entry} if isinstance(entry, dict) else entry for entry in grid["configs"]]
    else:
        axes = grid.get("grid", {})
        bad = sorted(k for k, v in axes.items() if not isinstance(v, list) or not v)
        if bad:
            raise ValueError(f"{where}: grid value(s) of {bad} must be non-empty lists")
        configs = [{**base, **dict(zip(axes, values, strict=True))}
                   for values in itertools.product(*axes.values())]
    for index, config in enumerate(configs):
        if not isinstance(config, dict):
            raise ValueError(f"{where}: config {index} is not a JSON object")
        try:
            config_from_dict(dict(config))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: config {index}: {error}") from None
    keys = dict.fromkeys(k for c in configs for k in c)
    varying = [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]
    # a key a config does not set (another's dotted key beside the base's nested group) is left out, not "=null"
    labels = [" ".join(f"{k}={json.dumps(c[k])}" for k in varying if k in c) or "base" for c in configs]
    # names by position alone: a grid that grows keeps its earlier names (a tune's stored rows, `quality.py --previous`)
    return [Candidate(f"c{i}", labels[i], c) for i, c in enumerate(configs)]


def read_grid(path: str | Path) -> tuple[list[Candidate], ProxyConfig]:
    """The candidates and proxy settings of a grid file; errors name the file."""
    path = Path(path)
    try:
        grid = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--grid: {path}: {error}") from None
    proxy = ProxyConfig.from_dict(grid.get("proxy", {}) if isinstance(grid, dict) else {}, f"{path}: proxy")
    return expand_grid(grid, str(path)), proxy


STEP_LOG = ".steps.jsonl"  # a run's step log, beside its folder: ``grid_tasks``


def grid_tasks(candidates: Sequence[Candidate], runs: Path) -> list[dict]:
    """Scoring the input model (the baseline every run must beat), then each candidate into ``runs``, its steps
    streamed beside its folder (``steps``, a JSON line a step; a save replaces the folder): a sweep cut short says how
    far each unfinished run had got (the ninety-seventh session's three runs cut at about 470 s said nothing), and
    the file stays where the sweep drops the run's weights."""
    entries = [{"name": c.name, "label": c.label, "config": c.config, "dir": str(runs / c.name),
                "steps": str(runs / f"{c.name}{STEP_LOG}")} for c in candidates]
    return [{"name": INPUT, "label": "input model", "config": None, "dir": None, "steps": None}, *entries]
