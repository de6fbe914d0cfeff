"""Checks of user-given options that would otherwise fail late (after the model loads) or obscurely,
and the thread count a command runs with."""

from __future__ import annotations

import argparse
import math
import os
import re

import torch


def check_device(device: str | torch.device | None, option: str = "--device") -> None:
    """A CUDA device asked for on a machine or torch build without one is refused by name (torch would
    raise an AssertionError from deep inside the first ``.to``)."""
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"{option}: {device!r} is not a device; expected cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"{option} {device}: {why}; use --device cpu")


def finite_float(text: str) -> float:
    """An option's float that must be a finite number (``float`` accepts nan and inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An option's count that must be at least 1 (``--docs 0`` would otherwise mean the default)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {text!r}")
    return value


def pick_threads(cores: int | None = None, load: float | None = None) -> int:
    """Torch threads for a command: the cores not already busy, at least one. Two processes with two
    threads each on two cores slow each other 2-3x (the demo: 55 min against 8.4 min with one thread)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, cores - round(load)))


def set_threads() -> int:
    """Unless the user set ``OMP_NUM_THREADS``, use ``pick_threads`` here and in child processes."""
    given = os.environ.get("OMP_NUM_THREADS")
    if given:
        return torch.get_num_threads()
    threads = pick_threads()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    return threads


def relabel(message: str, given: set[str], from_file: set[str], config_file: str | None, defaults: dict) -> str:
    """An error that names an option (``--lr: ...``) as the user wrote it: the config file's key when
    the value came from ``--config``, or the default when the user gave neither."""
    match = re.match(r"--([a-z][a-z-]*)", message)
    if match is None:
        return message
    key = match.group(1).replace("-", "_")
    if key in given or key not in defaults:
        return message
    rest = message[match.end():]
    if key in from_file:
        return f"--config {config_file}: {key!r}{rest}"
    return f"--{match.group(1)} (not given; default {defaults[key]!r}){rest}"
