"""Calibration: when forget documents look like text the model never saw, stop.

A loss-based membership attack tells members from nonmembers by their NLL. Calibration scores the
forget documents and a set of unseen texts (``--calibrate``) during the run and stops once the
attack is at chance: per task, its AUC within a tolerance of 0.5 (``calibration_gap``, the checks
ranked by it so the run can back off to the closest one). The unseen texts also give each task's
NLL level (``task_levels``) that ``forget_ascent`` raises rows to, and the misdirection's "unseen"
destination (``unseen_destination``).
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from repedit.data import TASKS, Example, collate
from repedit.proxy import chance_distances, farthest_from_chance, task_aucs
from repedit.rmu import PrefixBatch, RMUConfig, layer_output, row_nll

__all__ = ["calibration_gap", "calibration_level", "document_batches", "document_goals", "document_nlls",
           "farthest_from_chance", "task_aucs", "task_levels", "unseen_destination", "unseen_tasks", "unseen_texts"]


def unseen_texts(path: str) -> list[str]:
    from repedit.data import DataError, load_documents

    try:
        return load_documents(path, "text")
    except DataError:
        return load_documents(path, "document")


def unseen_tasks(path: str) -> list[str] | None:
    """Each reference text's ``task``, when every row has one (else None: one level for all tasks)."""
    from repedit.data import TASKS, DataError, load_documents

    try:
        tasks = load_documents(path, "task")
    except DataError:
        return None
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"--calibrate: {path}: unknown task(s) {unknown}; expected some of {', '.join(TASKS)}")
    return tasks


def document_batches(texts: list[str], tokenizer, max_length: int, batch_size: int) -> list[dict]:
    """Whole documents with every token labelled, as the membership attack scores them."""
    examples = []
    for text in texts:
        ids = tokenizer(text)["input_ids"][:max_length]
        examples.append(Example(ids, list(ids)))
    return [collate(examples[i : i + batch_size], tokenizer.pad_token_id) for i in range(0, len(examples), batch_size)]


def calibration_level(config: RMUConfig, reference: torch.Tensor) -> float:
    """The NLL forget documents are brought to: the reference texts' median when documents are
    calibrated one by one (members at the median give a loss attack AUC 0.5), else their mean."""
    level = reference.median() if config.calibrate_by == "document" else reference.mean()
    return config.calibrate_margin * level.item()


@torch.no_grad()
def unseen_destination(model, cached: list[PrefixBatch], tasks: list[str] | None, first: int,
                       target: int) -> torch.Tensor:
    """(len(TASKS), D): the frozen model's mean h_target over the real tokens of each task's reference
    texts; a task without texts (every task, for a reference without tasks) gets the mean over all."""
    sums = torch.zeros(len(TASKS), model.config.hidden_size, device=cached[0].hidden.device)
    counts = torch.zeros(len(TASKS), device=sums.device)
    row = 0
    for batch in cached:
        hidden = layer_output(model, batch, first, target).float()  # (B, T, D)
        mask = batch.mask.to(hidden.dtype)
        mine = tasks[row : row + len(mask)] if tasks else [TASKS[0]] * len(mask)
        index = torch.tensor([TASKS.index(t) for t in mine], device=sums.device)
        sums.index_add_(0, index, torch.einsum("btd,bt->bd", hidden, mask).float())  # autocast: bf16
        counts.index_add_(0, index, mask.sum(dim=1))
        row += len(mask)
    means = sums / counts.clamp(min=1).unsqueeze(1)
    overall = sums.sum(dim=0) / counts.sum().clamp(min=1)
    return torch.where(counts.unsqueeze(1) > 0, means, overall)


def task_levels(config: RMUConfig, reference: torch.Tensor, text_tasks: list[str]) -> torch.Tensor:
    """(len(TASKS),): ``calibration_target`` of each task's reference texts (of all, for a task with none)."""
    return torch.tensor([calibration_level(config, reference[[i for i, t in enumerate(text_tasks) if t == task]]
                                            if task in text_tasks else reference) for task in TASKS])


def document_goals(target_nll: float | torch.Tensor, tasks: list[str]) -> torch.Tensor:
    """Each scored document's calibration target (float64, CPU): the one level, or its task's."""
    if isinstance(target_nll, torch.Tensor):
        return target_nll.double().cpu()[[TASKS.index(t) for t in tasks]]
    return torch.full((len(tasks),), target_nll, dtype=torch.float64)


def calibration_gap(check: dict, tasks: Collection[str] | None) -> tuple[float, float, float]:
    """How far a by-document check is from the target, as checks are ranked: the worst task's attack
    distance from chance (``chance_distances``: both ways for ``tasks``), the tasks' mean distance, then
    the mean forget NLL's distance from the target."""
    distances = chance_distances(check["task_auc"], tasks)
    return max(distances), sum(distances) / len(distances), abs(check["forget_nll"] - check["target_nll"])


@torch.no_grad()
def document_nlls(model, cached: list[PrefixBatch], first: int, target: int) -> torch.Tensor:
    """Each document's mean token NLL, from cached prefixes (the LM head on real tokens only)."""
    values = []
    for batch in cached:
        every_row = torch.ones(batch.labels.shape[0], dtype=torch.bool, device=batch.labels.device)
        hidden = layer_output(model, batch, first, target)
        values.append(row_nll(model, hidden, batch, target, every_row).float().cpu())
    return torch.cat(values)
