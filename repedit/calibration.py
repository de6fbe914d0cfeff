"""Calibration: when forget documents look like text the model never saw, stop.

A loss-based membership attack tells members from nonmembers by their NLL. Calibration scores the
forget documents and a set of unseen texts (``--calibrate``) during the run and stops once the
attack is at chance: per task, its AUC within a tolerance of 0.5 (``calibration_gap``, the checks
ranked by it so the run can back off to the closest one, or to that check's edit scaled:
``--calibrate-edit-scales``). The unseen texts also give each task's
NLL level (``task_levels``) that ``forget_ascent`` raises rows to, the misdirection's "unseen"
destination (``repedit.subspace.kind_statistics``) and, unless ``--anchor-texts`` names others, the anchor's texts;
``--calibrate-anchor-share`` gives some of them to the anchor instead (``held_out``).
"""

from __future__ import annotations

import logging
import math
import random
import statistics
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import cast

import torch

from repedit.calibration_config import Calibration
from repedit.data import TASKS, Row
from repedit.distributed import in_turns
from repedit.document_scores import ScoredDocuments, cache_documents, document_batches, document_nlls
from repedit.proxy import calibration_level, chance_distances, farthest_from_chance, task_aucs, task_levels
from repedit.rmu import PrefixBatch, cache_prefix, layer_output
from repedit.rmu_config import RMUConfig
from repedit.share_goals import ShareGoals
from repedit.standins import Standins, make_standins, recombined_pii, retain_documents
from repedit.subspace import clearing_shares, kind_statistics
from repedit.synth import invented_documents

__all__ = ["UNSEEN_TEXTS", "Calibrator", "UnseenTexts", "calibration_gap", "calibration_level",
           "document_goals", "held_out", "median_nll_under", "read_unseen", "task_levels",
           "unseen_tasks", "unseen_texts", "with_standins"]


def unseen_texts(path: str) -> list[str]:
    from repedit.data import DataError, load_documents

    try:
        return load_documents(path, "text")
    except DataError:
        return load_documents(path, "document")


def unseen_tasks(path: str) -> list[str] | None:
    """Each unseen text's ``task``, when every row has one (else None: one level for all tasks)."""
    from repedit.data import TASKS, DataError, load_documents

    try:
        tasks = load_documents(path, "task")
    except DataError:
        return None
    if unknown := sorted(set(tasks) - set(TASKS)):
        raise ValueError(f"--calibrate: {path}: unknown task(s) {unknown}; expected some of {', '.join(TASKS)}")
    return tasks


def document_goals(level: float | torch.Tensor, tasks: list[str]) -> torch.Tensor:
    """Each scored document's calibration level (float64, CPU): the one level, or its task's."""
    if isinstance(level, torch.Tensor):
        return level.double().cpu()[[TASKS.index(t) for t in tasks]]
    return torch.full((len(tasks),), level, dtype=torch.float64)


def quantile_goals(nlls: torch.Tensor, tasks: list[str], unseen_nll: torch.Tensor,
                   text_tasks: list[str] | None) -> torch.Tensor:
    """Each scored document's goal (float64, CPU) under ``--calibrate-goals quantiles``: the unseen texts' NLL (its
    task's, as ``task_levels`` reads them) at the quantile of the document's rank among its task's documents now,
    (rank + 0.5) / count, as the texts' empirical distribution inverts it (the least NLL with that share of texts at
    or below it). Every document at its goal is a set no less unlikely than unseen text at any quantile (a set just
    like the texts is there), not one whose least unlikely document is past the median."""
    goals = torch.empty(len(tasks), dtype=torch.float64)
    scored, unseen = nlls.double().cpu(), unseen_nll.double().cpu()
    for task in dict.fromkeys(tasks):
        mine = torch.tensor([i for i, t in enumerate(tasks) if t == task])
        kind = [i for i, t in enumerate(text_tasks or []) if t == task]
        texts = (unseen[kind] if kind else unseen).sort().values
        ranks = scored[mine].argsort().argsort()
        index = torch.ceil(len(texts) * (ranks + 0.5) / len(mine)).long() - 1
        goals[mine] = texts[index.clamp(0, len(texts) - 1)]
    return goals


def calibration_gap(check: dict, tasks: Collection[str] | None) -> tuple[float, float, float]:
    """How far a check is from calibrated, as checks are ranked: the worst task's attack distance from
    chance (``chance_distances``: both ways for ``tasks``), the tasks' mean distance, then the mean
    forget NLL's distance from the level (the record's ``target_nll``)."""
    distances = [round(d, 9) for d in chance_distances(check["task_auc"], tasks)]  # 7/18 - 0.5 ties 0.5 - 11/18
    return max(distances), round(sum(distances) / len(distances), 9), abs(check["forget_nll"] - check["target_nll"])


UNSEEN_TEXTS = 256  # calibration texts read (scored at every check, or held by the anchor)


@dataclass
class UnseenTexts:
    """What calibration reads: the texts the stop rule scores, their tasks (None: one level), the anchor's
    own texts (``--anchor-texts``, ``--invented-anchors``, the stand-ins'; None: the scored texts) and the
    unseen texts held by the anchor instead of scored (``--calibrate-anchor-share``)."""

    texts: list[str]
    tasks: list[str] | None
    anchors: list[str] | None
    held: list[str]

    def anchor_texts(self) -> list[str] | None:
        """The anchor's texts: its own and the held ones; None where it holds the scored texts."""
        return None if self.anchors is None and not self.held else (self.anchors or []) + self.held


def held_out(texts: list[str], tasks: list[str] | None, share: float) -> tuple[list[int], list[int]]:
    """The indices of ``texts`` kept for the stop rule and those the anchor holds: a ``share`` of each
    task's texts (of all, without ``tasks``), spread evenly through them (a task's k-th text is held where
    floor((k + 1) * share) steps up: never its first)."""
    kept: list[int] = []
    held: list[int] = []
    seen: dict[str, int] = {}
    for i in range(len(texts)):
        task = tasks[i] if tasks else ""
        k = seen[task] = seen.get(task, -1) + 1
        (held if math.floor((k + 1) * share) > math.floor(k * share) else kept).append(i)
    return kept, held


def read_unseen(config: RMUConfig, tasks: list[str], retain_rows: Sequence[Row] = ()) -> UnseenTexts:
    """The unseen texts (at most ``UNSEEN_TEXTS``), their tasks, checked against the forget documents' ``tasks``, the
    anchor's texts where they are others (``--anchor-texts``, ``--recombined-pii-anchors``' made of ``retain_rows``,
    then ``--invented-anchors``') and the share of them it holds instead (``held_out``), read before any model loads."""
    calibration = cast(Calibration, config.calibration)
    loss = config.loss
    given = unseen_texts(loss.anchor_texts) if loss.anchor_texts else []
    recombined = recombined_pii(retain_rows, loss.recombined_pii_anchors, config.seed)
    invented = [d["text"] for d in invented_documents(loss.invented_anchors)] if loss.invented_anchors else []
    anchors = (given + recombined + invented)[:loss.anchor_limit] if loss.has_own_anchor_texts else None
    if missing := sorted(set(calibration.tasks or ()) - set(tasks)):
        raise ValueError(f"--calibrate-tasks: {', '.join(missing)}: no forget documents of that task "
                         f"(the forget set's: {', '.join(sorted(set(tasks)))})")
    path = cast(str, calibration.unseen)  # validated
    texts, text_tasks = unseen_texts(path)[:UNSEEN_TEXTS], unseen_tasks(path)
    if text_tasks is None and calibration.standins is not None:
        raise ValueError(f"--calibrate-standins: {path}: the texts need a task field, to know which tasks lack them")
    if text_tasks is not None:
        text_tasks = text_tasks[:UNSEEN_TEXTS]
        if (lacking := sorted(set(tasks) - set(text_tasks))) and calibration.standins is None:
            raise ValueError(f"--calibrate: {calibration.unseen}: no unseen texts of {', '.join(lacking)}, a task "
                             "of the forget documents (give every task's, or no task field at all)")
    kept, held = held_out(texts, text_tasks, calibration.anchor_share)
    return UnseenTexts(texts=[texts[i] for i in kept], tasks=[text_tasks[i] for i in kept] if text_tasks else None,
                       anchors=anchors, held=[texts[i] for i in held])


def median_nll_under(model, tokenizer, config: RMUConfig) -> Callable[[list[str]], float]:
    """The median over documents of their mean token NLL under ``model``, read as the stop rule reads it
    (``config``'s layers and length): what stand-ins are matched by."""
    first, layer = min(config.layers), config.layer

    def median_nll(documents: list[str]) -> float:
        cached = cache_documents(model, documents, tokenizer, config.max_length, config.pass_rows, first)
        return statistics.median(document_nlls(model, cached.batches, first, layer).tolist())

    return median_nll


def with_standins(model, tokenizer, config: RMUConfig, unseen: UnseenTexts, retain_rows: list[Row],
                  tasks: list[str]) -> tuple[UnseenTexts, Standins]:
    """``read_unseen``'s texts with stand-ins for the forget ``tasks`` they lack (``make_standins``, NLLs
    under the frozen ``model``), and the anchor's own texts: the stand-ins' after ``--anchor-texts``' and
    ``--invented-anchors``' (in their place, invented documents held less of the sim's unseen text: BENCHMARKS.md,
    twenty-fifth call), or none of theirs (``--calibrate-standin-anchors false``)."""
    calibration = cast(Calibration, config.calibration)
    scales = dict(zip(TASKS, calibration.standin_scales, strict=True)) if calibration.standin_scales else None
    made = make_standins(median_nll_under(model, tokenizer, config), retain_documents(retain_rows), unseen.texts,
                         cast(list[str], unseen.tasks), tasks, cast(float, calibration.standins),
                         count=calibration.standin_count, scales=scales)
    theirs = made.anchors if calibration.standin_anchors else []
    anchors = ((unseen.anchors or []) + theirs)[:config.loss.anchor_limit]
    left_out = len(unseen.anchors or []) + len(theirs) - len(anchors)
    if left_out:  # 256 invented a kind and 96 stand-ins a kind (the preset) leave out the last kinds' swaps
        logging.getLogger(__name__).warning(
            "the anchor holds %d texts at most: %d of the stand-ins' %d anchor texts left out (the last kinds' "
            "swapped retain documents; --anchor-limit)", config.loss.anchor_limit, left_out, len(made.anchors))
    return UnseenTexts(texts=made.texts, tasks=made.tasks, anchors=anchors, held=unseen.held), made


class Calibrator:
    """Calibration through one run: the cached forget documents and unseen texts, the level, which
    documents reached it, and the checked weights that came closest (restored at the end).

    ``level``: one NLL, or for unseen texts with tasks one per task ((len(TASKS),)); measured once on
    the frozen model, or re-measured at every check (``Calibration.level``; by default one level
    rises, levels per task do not). The stop rule's attack scores the unseen texts anew (an edit that raises
    them with the forget documents leaves those as recognisable as before), or with ``unseen_at`` "start" as the
    edit's first model did, for a repair that takes their rise back (``Calibration.unseen_at``).
    """

    def __init__(self, model, config: RMUConfig, scored: list[Row], unseen: UnseenTexts, tokenizer,
                 device: torch.device, retain: Sequence[str] = ()):
        self.config, self.calibration = config, cast(Calibration, config.calibration)
        self.first, self.layer = min(config.layers), config.layer
        text_tasks = unseen.tasks
        self.tasks, self.text_tasks = [r.task for r in scored], text_tasks
        batch = config.pass_rows  # a check's or an anchor batch's rows in a step's memory
        self.documents = cache_documents(model, [r.document for r in scored], tokenizer, config.max_length, batch,
                                         self.first)
        self.unseen = cache_documents(model, unseen.texts, tokenizer, config.max_length, batch, self.first)
        self.calibrated = torch.zeros(len(scored) + 1, dtype=torch.bool, device=device)  # the last: no document
        self.device = device
        self.rising = self.calibration.level == "rising" or (self.calibration.level == "auto" and text_tasks is None)
        self.offsets = torch.tensor(self.calibration.text_offsets(text_tasks, len(unseen.texts)))  # as NLLs: CPU
        self.unseen_nll = self.start_nll = self.unseen_nlls(model)  # the goals' texts, as measured
        self.level = self.levels(self.unseen_nll)
        worded = self.calibration.share_goals  # the kinds whose documents each get a goal from their wording
        self.share_goals = (ShareGoals(tokenizer, [r.document for r in scored], unseen.texts, text_tasks, retain,
                                       worded, self.calibration.share_ngram) if worded else None)
        anchor_texts = unseen.anchor_texts()
        if anchor_texts is not None and config.loss.anchor_shuffle:
            anchor_texts = random.Random(config.seed).sample(anchor_texts, len(anchor_texts))
        self.anchor_texts = unseen.texts if anchor_texts is None else anchor_texts  # what the anchor holds, in order
        anchors = [cache_prefix(model, b, self.first) for b in document_batches(
            self.anchor_texts, tokenizer, config.max_length, batch)] if config.loss.anchor else []
        with torch.no_grad():  # the anchor's goals: the frozen model's h_L of its texts, a step's passes together
            held = [(b, layer_output(model, b, self.first, self.layer)) for b in anchors]
        self.anchors = [held[i : i + config.passes] for i in range(0, len(held), config.passes)]
        self.destination: torch.Tensor | None = None
        self.projectors: torch.Tensor | None = None  # --destination-keep's, with the destination from the same pass
        self.kept_shares: dict | None = None  # --destination-keep-margin's choice, and what it read
        if config.loss.destination == "unseen":
            kinds = kind_statistics(model, self.unseen.batches,
                                    text_tasks and [text_tasks[i] for i in self.unseen.order], self.first,
                                    self.layer, directions=config.loss.keeps_directions)
            self.destination, keep = kinds.means, config.loss.destination_keep
            if (margin := config.loss.destination_keep_margin) is not None:
                keep, past = clearing_shares(model, self.documents, self.tasks, self.first, self.layer, kinds,
                                             self.level, margin)
                self.kept_shares = {"shares": dict(zip(TASKS, keep, strict=True)), "margin": margin,
                                    "goal_past_level": {t: {str(k): v for k, v in p.items()} for t, p in past.items()}}
                logging.getLogger(__name__).info("--destination-keep-margin %g: each kind's kept share %s", margin,
                                                 ", ".join(f"{t} {k:g}" for t, k in zip(TASKS, keep, strict=True)))
            if config.loss.keeps_directions:
                self.projectors = kinds.projectors(cast(tuple[float, ...], keep))
        # (gap, weights) of the closest check: the worst task's attack AUC distance from 0.5, the tasks'
        # mean distance, the mean forget NLL's distance from the level
        self.best: tuple[tuple[float, float, float], dict[str, torch.Tensor]] | None = None
        self.best_step = 0
        self.far = True  # --calibrate-every-far: until a check says otherwise

    def levels(self, unseen_nll: torch.Tensor) -> float | torch.Tensor:
        """``calibration_level`` of the unseen texts' NLLs, or ``task_levels`` when they have tasks."""
        if self.text_tasks is None:
            return calibration_level(unseen_nll)
        return task_levels(unseen_nll, self.text_tasks).to(self.device)

    def anchor(self, step: int) -> list[tuple[PrefixBatch, torch.Tensor]]:
        """The batch the anchor holds at ``step`` (0-based) in its passes, each with its frozen h_L: the unseen
        texts', or the ``--anchor-texts``'; none without an anchor."""
        return self.anchors[step % len(self.anchors)] if self.anchors else []

    def due(self, step: int) -> bool:
        """Whether a check follows ``step`` (1-based): every ``every`` steps (``every_far`` while the last check's
        attack told every forget document from every unseen text), and after the last."""
        every = (self.far and self.calibration.every_far) or self.calibration.every
        return step % every == 0 or step == self.config.steps

    def check(self, model, step: int, trainable: dict[str, torch.nn.Parameter]) -> tuple[dict, str | None]:
        """Score the forget documents and unseen texts now (re-measuring rising levels): the record, and why the run
        stops here if it does: "calibrated", or "patience" (``--calibrate-patience`` steps since the closest check)."""
        record, reached = self.score(model, step)
        self.calibrated[:-1] = reached.to(self.calibrated.device)  # a document that falls back below rejoins
        gap = calibration_gap(record, self.calibration.tasks)
        self.far = gap[1] >= 0.5  # every kind's attack AUC 1 (or 0): no document near its level
        if self.best is None or gap < self.best[0]:
            self.best, self.best_step = (gap, {n: p.detach().clone() for n, p in trainable.items()}), step
        if gap[0] <= self.calibration.tolerance or bool(reached.all()):
            return record, "calibrated"
        patience = self.calibration.patience
        return record, "patience" if patience is not None and step - self.best_step >= patience else None

    def score(self, model, step: int) -> tuple[dict, torch.Tensor]:
        """A check's record of the model as it is now, and which forget documents reached their goals."""
        nlls = self.dealt_nlls(model, self.documents)
        start = self.calibration.unseen_at == "start"
        unseen_now = self.start_nll if start and not self.rising else self.unseen_nlls(model)
        if self.rising:
            self.unseen_nll, self.level = unseen_now, self.levels(unseen_now)
        goals = (quantile_goals(nlls, self.tasks, self.unseen_nll, self.text_tasks)
                 if self.calibration.goals == "quantiles" else document_goals(self.level, self.tasks))
        if self.share_goals:
            goals = self.share_goals.apply(goals, self.tasks, self.unseen_nll, self.text_tasks)
        reached = nlls >= goals
        attacked = self.start_nll if start else unseen_now  # what an attacker scores now, or once repaired
        aucs = task_aucs(nlls.tolist(), self.tasks, attacked.tolist(), self.text_tasks)
        record = {"step": step, "forget_nll": nlls.mean().item(),
                  "target_nll": self.level if isinstance(self.level, float) else goals.mean().item(),
                  "calibrated_documents": int(reached.sum()),
                  "auc": farthest_from_chance(aucs, self.calibration.tasks), "task_auc": aucs}
        if isinstance(self.level, torch.Tensor):  # each kind's level: stand-ins' too, to set against unseen text
            record["task_level"] = dict(zip(TASKS, self.level.tolist(), strict=True))
        return record, reached

    def dealt_nlls(self, model, documents: ScoredDocuments) -> torch.Tensor:
        """Each document's NLL in the texts' order, the batches dealt over the ranks, the scores gathered on each."""
        return documents.in_given_order(torch.cat(in_turns(
            documents.batches, lambda batch: document_nlls(model, [batch], self.first, self.layer))))

    def unseen_nlls(self, model) -> torch.Tensor:
        """The unseen texts' NLLs as the stop rule reads them: ``--calibrate-offsets`` nats more likely."""
        return self.dealt_nlls(model, self.unseen) - self.offsets

    def restore(self, trainable: dict[str, torch.nn.Parameter]) -> None:
        """Back off to the checked weights that came closest to calibrated."""
        if self.best is not None:
            for name, weights in self.best[1].items():
                trainable[name].data.copy_(weights)

    @torch.no_grad()
    def scale_edit(self, model, trainable: dict[str, torch.nn.Parameter], frozen: dict[str, torch.Tensor],
                   step: int) -> list[dict]:
        """``--calibrate-edit-scales``: the restored check's edit scaled by each scale (frozen + s x edit), scored as
        a check; the weights closest to calibrated, the check's own among them, stay. Returns the scaled records."""
        if self.best is None:
            return []
        check = self.best[1]  # the check's weights, kept as they are when a scaled edit becomes the closest
        records = []
        for scale in cast(tuple[float, ...], self.calibration.edit_scales):
            for name, param in trainable.items():
                param.copy_(torch.lerp(frozen[name], check[name], scale))  # frozen + scale x (check - frozen)
            torch.clear_autocast_cache()  # autocast casts a weight once a region: the scaled ones are cast anew
            record = {**self.score(model, step)[0], "edit_scale": scale}
            records.append(record)
            if (gap := calibration_gap(record, self.calibration.tasks)) < self.best[0]:
                self.best = (gap, {n: p.detach().clone() for n, p in trainable.items()})
        self.restore(trainable)
        return records
