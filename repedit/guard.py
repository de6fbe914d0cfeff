"""Refuse non-finite numbers where they would otherwise travel silently into a checkpoint or a score.

A learning rate too large for the model turns the losses into NaN within a step or two; the loop
would go on, save NaN weights over a good checkpoint and exit 0, and evaluation would pass NaN NLLs
to scikit-learn. These checks stop at the first such number and name the step and the term.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch


class NonFiniteError(ValueError):
    """A loss, gradient, weight, option or NLL is NaN or infinite; the message names which."""


class NoStepError(ValueError):
    """A run ended before its first optimizer step, so its output would be the input unchanged."""


def _first_bad(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first tensor holding a NaN or an infinity, with one device sync for all."""
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(t.detach()).all() for t in tensors.values()])
    if bool(finite.all()):
        return None
    return list(tensors)[int((~finite).nonzero()[0])]


def check_step(step: int, losses: Mapping[str, torch.Tensor], parameters: Mapping[str, torch.Tensor]) -> None:
    """After an optimizer step: every loss term, every trained weight's gradient and the weight itself
    are finite. The error names the step and the first bad term (the total ``loss`` last, since it is
    bad whenever a term is), so the run stops before anything non-finite is saved."""
    terms = {name: value for name, value in losses.items() if name != "loss"}
    bad = _first_bad({**terms, **{k: v for k, v in losses.items() if k == "loss"}})
    if bad is not None:
        raise NonFiniteError(f"step {step}: the {bad} loss is {losses[bad].float().mean().item()}; "
                             "stopped before saving (lower --lr?)")
    grads = {name: p.grad for name, p in parameters.items() if p.grad is not None}
    for kind, tensors in (("gradient of", grads), ("weight", parameters)):
        bad = _first_bad(tensors)
        if bad is not None:
            raise NonFiniteError(f"step {step}: the {kind} {bad} is not finite; stopped before saving (lower --lr?)")


def check_made_a_step(steps: int, timings: Mapping[str, float], budget: float | None, leave_model: bool) -> None:
    """A run that made no step says so: an error, or with ``leave_model`` (the submission, which must
    always leave a model) a warning, since its output is then a copy of the input."""
    if steps:
        return
    spent = timings.get("load", 0.0) + timings.get("prepare", 0.0)
    reason = f"loading and preparing took {spent:.1f} s of the {budget:g} s time budget" if budget else "none planned"
    if leave_model:
        logging.getLogger(__name__).warning("no unlearning step made (%s); the output is the input model unchanged",
                                            reason)
        return
    raise NoStepError(f"no unlearning step made ({reason}); the output was left as it was"
                      + ("; raise --time-budget" if budget else ""))


def json_safe(record: Mapping) -> dict:
    """``record`` with NaN and infinities as null: ``json.dumps`` would write bare ``NaN``, not JSON."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def check_nlls(where: str, ids: Sequence, values: Sequence[float]) -> None:
    """Refuse a NaN or infinite NLL, naming the set and row: the score's AUC would fail in scikit-learn."""
    for row_id, value in zip(ids, values, strict=True):
        if not math.isfinite(value):
            raise NonFiniteError(f"{where}: row {row_id!r} has NLL {value}; the model's outputs are not finite "
                                 "(NaN or infinite weights?)")


def check_options(config) -> None:
    """Every number of a method config is finite (``float`` and JSON both accept NaN and Infinity);
    the error names the option as ``validate`` does, ``--lr``."""
    for field, value in vars(config).items():
        values = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise NonFiniteError(f"--{field.replace('_', '-')}: {value!r} is not a finite number")
