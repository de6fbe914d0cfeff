"""``unlearn``: run one method on a checkpoint and write the edited checkpoint.

The method's config picks its loop through ``repedit.methods``; what every loop shares lives in
``repedit.runtime``, the RMU loop in ``repedit.rmu_loop``, the baselines' in ``repedit.baselines``.

>>> result = unlearn("target/", "data/", "data/", "out/", RMUConfig(layers=(5, 6, 7), adaptive=5.0))
>>> result.output_dir, result.losses[-1]
"""

from __future__ import annotations

from pathlib import Path

from repedit.calibration import unseen_texts
from repedit.checkpoint import check_modules, check_output_path, read_config
from repedit.guard import check_options
from repedit.methods import config_from_dict, run_method
from repedit.runtime import Budget, StepLog, UnlearnResult, pick_device, read_sets

# ``config_from_dict`` (now repedit.methods), ``reference_texts`` (now repedit.calibration.unseen_texts) and
# ``StepLog`` (repedit.runtime) moved out of this module (issue #20); importable here only until attack.py,
# sweep.py and tests/test_guard.py import them from their new homes.
reference_texts = unseen_texts
__all__ = ["StepLog", "UnlearnResult", "config_from_dict", "reference_texts", "unlearn"]


def unlearn(model: str | Path, forget: str | Path, retain: str | Path, out: str | Path, config,
            device: str | None = None, dtype: str | None = None, log: str | Path | None = None,
            progress: bool = True) -> UnlearnResult:
    """Unlearn ``forget`` from the checkpoint ``model`` while keeping ``retain``; write to ``out``.

    ``config`` selects the method: ``RMUConfig`` for RMU, or a baseline's config
    (``repedit.baselines``). ``log`` streams one JSON line per step.
    """
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
