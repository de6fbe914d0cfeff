"""``unlearn``: run one method on a checkpoint and write the edited checkpoint.

The method's config picks its loop through ``repedit.methods``; what every loop shares lives in
``repedit.runtime``, the RMU loop in ``repedit.rmu_loop``, the baselines' in ``repedit.baselines``.

>>> result = unlearn("target/", "data/", "data/", "out/", RMUConfig(layers=(5, 6, 7), adaptive=5.0))
>>> result.output_dir, result.losses[-1]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, cast

import torch

from repedit.checkpoint import check_modules, check_output_path, checkpoint_tensors, read_config
from repedit.guard import check_options
from repedit.methods import run_method
from repedit.runtime import Budget, UnlearnResult, pick_device, read_sets


def unlearn(model, forget: str | Path, retain: str | Path, out: str | Path | None, config,
            device: str | None = None, dtype: str | None = None, log: str | Path | None = None,
            progress: bool = True, tokenizer=None) -> UnlearnResult:
    """Unlearn ``forget`` from ``model`` while keeping ``retain``; write the edited checkpoint to ``out``.

    ``model`` is a checkpoint directory, or a transformers causal LM in memory (give its ``tokenizer``):
    that one is edited in place and ``out`` may be None. ``config`` selects the method: ``RMUConfig``
    for RMU, or a baseline's config (``repedit.baseline_configs``). ``log`` streams one JSON line per step.
    """
    if isinstance(model, torch.nn.Module):
        return _unlearn_in_memory(model, tokenizer, forget, retain, out, config, device, dtype, log, progress)
    if out is None:
        raise ValueError("--out: needed for a checkpoint directory")
    budget = Budget(getattr(config, "time_budget", None))
    model, out = Path(model), check_output_path(Path(out))
    if out.resolve() == model.resolve():
        raise ValueError(f"--out: {out} is the input checkpoint; write the edit elsewhere")
    model_config = read_config(model)
    check_options(config)
    config.validate(model_config.num_hidden_layers)
    n_layers = model_config.num_hidden_layers
    layers = config.trained_layers(n_layers)
    check_modules(model, tuple(range(n_layers)) if layers is None else layers, config.params)  # before loading
    forget_rows, retain_rows = read_sets(forget, retain)
    device_, dtype_ = pick_device(device, dtype)
    return run_method(model, forget_rows, retain_rows, out, config, device_, dtype_, budget, log, progress)


def _unlearn_in_memory(model: torch.nn.Module, tokenizer, forget, retain, out, config, device, dtype, log,
                       progress) -> UnlearnResult:
    """Through a checkpoint on disk, as every method reads one: save ``model`` and ``tokenizer`` to a
    scratch directory, unlearn it into ``out`` (or scratch), then load the edited weights into ``model``."""
    if tokenizer is None:
        raise ValueError("tokenizer: an in-memory model needs its tokenizer")
    with tempfile.TemporaryDirectory(prefix="repedit-unlearn-") as scratch:
        source = Path(scratch) / "model"
        cast(Any, model).save_pretrained(source)
        tokenizer.save_pretrained(source)
        written = Path(out) if out is not None else Path(scratch) / "edited"
        result = unlearn(source, forget, retain, written, config, device, dtype, log, progress)
        model.load_state_dict(checkpoint_tensors(written), strict=False)
    return result
