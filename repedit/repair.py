"""The repair (``--repair-rounds``): after the edit, the layers above it trained to give the frozen model's next-token
distributions on unseen text again, reading the edited states.

The edit misdirects h_L on the forget documents and with it moves what every document of their kind shares: on the
sim the unseen stories rose 0.12 nats a token per nat the forget stories rose, whichever of their tokens were
misdirected and whatever the anchor held (BENCHMARKS.md, "Eighty-fifth session"). The repair leaves the edited layers
as they are and trains the MLPs of the layers above L by KL to the frozen model on the texts the anchor held (unseen
text of each kind, general text, stand-ins) and the retain documents. It gives back part of the forgetting it never
reads (BENCHMARKS.md, "Ninety-first session"); with ``forget_share`` it reads forget documents too, held at the edit's
own distributions, so the model written is the one the stop rule judged on them. The edit then runs again from the
repaired model, whose stop rule judges it, and is repaired again: ``rounds`` edits and repairs in all (BENCHMARKS.md,
"Eighty-sixth session").
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

import torch

from repedit.calibration import calibration_gap
from repedit.checkpoint import (
    checkpoint_name,
    checkpoint_tensors,
    load_causal_lm,
    load_checkpoint_tokenizer,
    save_edited,
    weight_map,
)
from repedit.data import Row
from repedit.distributed import active
from repedit.generate import encode, pad, pad_id
from repedit.guard import json_safe
from repedit.repair_config import Repair
from repedit.rmu import RMUConfig, select_parameters
from repedit.rmu_loop import run_rmu, swapped_in
from repedit.runtime import Budget, UnlearnResult, tqdm

MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
RECORDS = ("unlearn.json", "unlearn_log.jsonl", "anchor_texts.jsonl")  # the last edit's, written beside the repair


def repaired_layers(layer: int, count: int | None, num_hidden_layers: int) -> tuple[int, ...]:
    """The layers above L the repair trains: the next ``count`` (None: every one up to the last)."""
    return tuple(range(layer + 1, num_hidden_layers if count is None else min(num_hidden_layers, layer + 1 + count)))


def held_forget_rows(repair: Repair, forget: Sequence[str]) -> int:
    """How many forget documents each repair batch holds at the edit's distributions (a share under half a row: 0)."""
    return round(repair.batch_size * repair.forget_share) if forget else 0


def repair_batches(texts: Sequence[str], retain: Sequence[str], repair: Repair, seed: int,
                   forget: Sequence[str] = ()) -> Iterator[tuple[list[str], list[str]]]:
    """Each step's texts, those held at the frozen model's distributions (``retain_share`` of the batch drawn from
    ``retain``, the rest from ``texts``) and those held at the edit's (``held_forget_rows`` drawn from ``forget``)."""
    generator, texts, retain, forget = random.Random(seed), list(texts), list(retain), list(forget)
    own = round(repair.batch_size * repair.retain_share) if retain else 0
    held = held_forget_rows(repair, forget)
    for _ in range(repair.steps):
        yield (generator.sample(texts, min(repair.batch_size - own - held, len(texts)))
               + generator.sample(retain, min(own, len(retain))), generator.sample(forget, min(held, len(forget))))


class Distilled(NamedTuple):
    """A repair's new weights (by checkpoint name), and each step's KL and seconds."""
    weights: dict[str, torch.Tensor]
    kls: list[float]
    seconds: list[float]


def distil_above(model_in: Path, edited: Path, texts: Sequence[str], retain: Sequence[str], config: RMUConfig,
                 device: torch.device, dtype: torch.dtype, progress: bool = True, forget: Sequence[str] = ()
                 ) -> Distilled:
    """The MLPs of the layers above L of ``edited`` trained toward ``model_in``'s next-token distributions on
    ``texts`` and ``retain`` and toward ``edited``'s own on ``forget`` (mean KL a token). The frozen model is the
    edited one with ``model_in``'s weights swapped into every layer the edit or the repair trains; the edit's is the
    repaired one with its trained weights swapped back."""
    repair = config.repair
    tokenizer = load_checkpoint_tokenizer(edited)
    model = load_causal_lm(edited, dtype, device)
    model.requires_grad_(False)
    trainable = select_parameters(model, repaired_layers(config.layer, repair.layers, model.config.num_hidden_layers),
                                  MLP)
    touched = {**select_parameters(model, config.layers, config.params), **trainable}
    names = weight_map(model_in)
    wanted = {name: checkpoint_name(model_in, name, names) for name in touched}
    stored = checkpoint_tensors(model_in, set(wanted.values()))
    frozen = {name: stored[key].to(device, touched[name].dtype) for name, key in wanted.items()}
    held = held_forget_rows(repair, forget)  # the forget documents' reference: the edit's weights as loaded
    edit = {name: param.detach().clone() for name, param in trainable.items()} if held else {}
    for param in trainable.values():  # float32 master weights, as the edit's
        param.data = param.data.float()
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=repair.lr, weight_decay=0.0)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    model.train()
    kls: list[float] = []
    seconds: list[float] = []  # each step's, timed on the host: the KL's .item() waits for the device
    batches = repair_batches(texts, retain, repair, config.seed, forget)
    rows = repair.micro_batch or repair.batch_size
    for step in tqdm(batches, total=repair.steps, desc="repair") if progress and tqdm is not None else batches:
        started = time.monotonic()
        groups = [([x[: repair.max_length] for x in encode(tokenizer, group)], weights)
                  for group, weights in zip(step, (frozen, edit), strict=True) if group]
        predicted = sum(max(len(x) - 1, 0) for encoded, _ in groups for x in encoded)  # a mean over every pass
        optimizer.zero_grad(set_to_none=True)
        kl_sum = 0.0
        for encoded, weights in groups:
            for start in range(0, len(encoded), rows):
                ids, attention = pad(encoded[start: start + rows], pad_id(tokenizer), "right")
                batch = {"input_ids": ids.to(device), "attention_mask": attention.to(device)}
                mask = batch["attention_mask"][:, 1:].float()
                with torch.no_grad(), autocast, swapped_in(touched, weights):
                    reference = model(**batch).logits[:, :-1].float().log_softmax(-1)
                with autocast:
                    log_probs = model(**batch).logits[:, :-1].float().log_softmax(-1)
                kl = ((reference.exp() * (reference - log_probs)).sum(-1) * mask).sum() / predicted
                kl.backward()
                kl_sum += kl.item()
        optimizer.step()
        kls.append(kl_sum)
        seconds.append(time.monotonic() - started)
    return Distilled({checkpoint_name(edited, name): param.detach().to(dtype) for name, param in trainable.items()},
                     kls, seconds)


def run_rmu_repaired(model_dir: Path, forget_rows: list[Row], retain_rows: list[Row], out: Path, config: RMUConfig,
                     device: torch.device, dtype: torch.dtype, budget: Budget, log: str | Path | None = None,
                     progress: bool = True) -> UnlearnResult:
    """The RMU loop, then with ``--repair-rounds`` the repair and the loop again from the repaired model, the last
    repair written to ``out`` with the last edit's records, the steps of every edit (``unlearn_log.jsonl`` and
    ``--log``, each step with its ``round``) and each round's in ``unlearn.json``'s ``repairs``, its ``timings``
    (each part summed over the rounds) and ``peak_gib`` the whole run's. The first edit is
    written to ``out`` as a plain run writes it, so that a valid checkpoint is there early (``--time-budget``); an
    edit stopped by the budget ends the rounds, the last output standing."""
    if config.repair.rounds == 0:
        return run_rmu(model_dir, forget_rows, retain_rows, out, config, device, dtype, budget, log, progress)
    if active():
        raise ValueError("--repair-rounds: runs in one process; launch it without torchrun or accelerate")
    retain, forget = [r.document for r in retain_rows], [r.document for r in forget_rows]
    source, rounds, written, losses = model_dir, [], None, []
    spent: dict[str, float] = {}  # the whole run's seconds by part, every edit's and repair's summed
    out.parent.mkdir(parents=True, exist_ok=True)  # the rounds' scratch lies beside it, on its file system
    with tempfile.TemporaryDirectory(prefix=".repedit-repair-", dir=out.parent) as scratch:
        for k in range(config.repair.rounds):
            edited = out if k == 0 else Path(scratch) / f"edit{k}"
            later_lr = config.repair.later_lr if k else None
            begun = budget.elapsed()  # an edit's timings count from the run's start: its load from here
            result = run_rmu(source, forget_rows, retain_rows, edited,
                             config if later_lr is None else replace(config, lr=later_lr), device, dtype, budget, log,
                             progress, config.repair.later_warmup if k else 0, k)
            if result.stopped == "time budget":  # the first edit, or the last repair, stays at out
                written = written or result
                break
            losses += result.losses
            started = time.monotonic()
            edits, kls, seconds = distil_above(model_dir, edited, result.anchor_texts or [], retain, config, device,
                                               dtype, progress, forget)
            parts = {"load": result.timings["load"] - begun, "prepare": result.timings["prepare"],
                     "train": result.timings["train"], "save": result.timings["save"],
                     "repair": time.monotonic() - started}  # the repair's load and steps; its save not in it
            spent = {name: spent.get(name, 0.0) + value for name, value in parts.items()}
            tasks = config.calibration.tasks if config.calibration else None  # set: a repair needs the stop rule
            written_check = min(result.calibration, key=lambda check: calibration_gap(check, tasks))
            rounds.append({"steps": len(result.losses), "stopped": result.stopped,
                           "train_seconds": parts["train"], "repair_seconds": parts["repair"],
                           "repair_step_seconds": statistics.median(seconds), "repair_kl_first": kls[0],
                           "repair_kl_last": kls[-1], "written_check": written_check})
            if torch.cuda.is_initialized():  # the run's peak so far: the edits' and the repairs' (run_method reset it)
                result.peak_gib = torch.cuda.max_memory_allocated() / 2**30
            records = {name: (edited / name).read_text() for name in RECORDS if (edited / name).is_file()}
            records["unlearn.json"] = json.dumps({**json.loads(records["unlearn.json"]), "config": asdict(config),
                                                  "steps": len(losses), "repairs": rounds, "peak_gib": result.peak_gib,
                                                  "timings": {**spent, "total": budget.elapsed()}}, indent=2)
            records["unlearn_log.jsonl"] = "".join(json.dumps(json_safe(step)) + "\n" for step in losses)
            source = out if k == config.repair.rounds - 1 else Path(scratch) / f"repaired{k}"
            save_edited(edited, source, edits, extra_files=records)
            written = result
    assert written is not None  # at least one round ran
    if rounds:  # every edit's steps, each with its round
        written.losses, written.timings = losses, {**spent, "total": budget.elapsed()}
    written.output_dir, written.repairs = out, rounds
    return written
