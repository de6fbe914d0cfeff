"""Memorizing rows: the training loop that turns a fresh OLMo into a target that regurgitates its
forget and retain sets (length-bucketed AdamW, warm-up and cosine decay, early stop once every answer
token is reproduced), with general text replayed to keep the model fluent."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from repedit.data import IGNORE_INDEX, Example, Row, collate, document_examples, encode_example
from repedit.layers import base_model
from repedit.presets import Recipe


@dataclass(frozen=True)
class TrainSequence:
    """A training sequence and where its answer starts: the tokens greedy generation must reproduce."""

    example: Example
    answer_start: int


@dataclass(frozen=True)
class PhaseLog:
    epochs: int
    steps: int
    seconds: float
    loss: float  # mean token loss of the last epoch
    answer_accuracy: float | None  # teacher-forced accuracy on answer tokens in the last epoch
    stopped: str  # "memorized", "epochs" or "time"


def row_sequences(rows: Sequence[Row], tokenizer, max_length: int) -> list[TrainSequence]:
    """A sentence completion is trained as its whole document, every token a label, so that members
    have a low NLL; a question only on its answer. Both are tokenized as generation sees them: the
    prompt alone, then `` output`` and EOS (``encode_example``), and EOS teaches the model to stop."""
    sequences = []
    for row in rows:
        example = encode_example(tokenizer, row.input, row.output, max_length)
        start = example.labels.count(IGNORE_INDEX)  # the prompt's length
        if row.kind == "sc":
            example = Example(example.input_ids, list(example.input_ids))
        sequences.append(TrainSequence(example, start))
    return sequences


def length_batches(lengths: Sequence[int], batch_rows: int, batch_tokens: int,
                   generator: random.Random) -> list[list[int]]:
    """Indices in batches of rows of similar length, in random order.

    Shuffling before the (stable) sort varies the batches between epochs; each batch holds at most
    ``batch_rows`` rows and ``batch_tokens`` tokens once padded to its longest row.
    """
    order = list(range(len(lengths)))
    generator.shuffle(order)
    order.sort(key=lambda i: lengths[i])
    groups: list[list[int]] = [[]]
    for i in order:
        group = groups[-1]
        if group and (len(group) == batch_rows or (len(group) + 1) * lengths[i] > batch_tokens):
            groups.append(group := [])
        group.append(i)
    generator.shuffle(groups)
    return groups


def _to_batch(sequences: Sequence[TrainSequence], pad_token_id: int, device: torch.device) -> dict:
    batch = collate([s.example for s in sequences], pad_token_id)
    answer = torch.zeros_like(batch["labels"], dtype=torch.bool)
    for i, s in enumerate(sequences):
        answer[i, s.answer_start : len(s.example.input_ids)] = True
    batch["answer"] = answer
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}


def lm_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token loss over labelled tokens, and (loss sum, labels, correct answers, answers).

    Logits are computed only where there is a label: the 50k-way head dominates a small model's
    cost, and padding and masked prompts would waste most of it. Right padding needs no attention
    mask, since causal attention never lets a real token see the padding to its right.
    """
    hidden = base_model(model)(input_ids=batch["input_ids"], use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]  # (batch, width - 1): position t predicts token t + 1
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (labelled, vocab)
    target = targets[keep]
    losses = F.cross_entropy(logits, target, reduction="none")
    answer = batch["answer"][:, 1:][keep]
    correct = (logits.argmax(-1) == target) & answer
    stats = torch.stack([losses.sum().detach(), keep.sum(), correct.sum(), answer.sum()]).float()
    return losses.mean(), stats


def epoch_sequences(sequences: Sequence[TrainSequence], replay: Sequence[TrainSequence], count: int,
                    epoch: int) -> list[TrainSequence]:
    """The sequences, then ``count`` of ``replay`` continuing the cycle where the last epoch stopped,
    so that every replayed passage comes round equally often."""
    start = epoch * count
    return [*sequences, *(replay[(start + j) % len(replay)] for j in range(count if replay else 0))]


def train(model, sequences: Sequence[TrainSequence], recipe: Recipe, epochs: int, pad_token_id: int,
          seed: int, desc: str, stop_accuracy: float | None = None, time_budget_s: float | None = None,
          progress: bool = True, replay: Sequence[TrainSequence] = ()) -> PhaseLog:
    """AdamW over length-bucketed batches with warm-up and cosine decay, bf16 autocast on CUDA.

    The schedule's clock is whichever runs out first, steps or ``time_budget_s``, so a time-limited
    run still ends with a decayed learning rate. Stops early at ``stop_accuracy``. Each epoch also
    trains ``recipe.general_mix`` passages of ``replay`` (in a seeded order) per sequence; they have
    no answer tokens, so the accuracy is the sequences' alone, while the loss is over both.
    """
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    generator = random.Random(seed)
    replay = list(replay)
    generator.shuffle(replay)
    count = round(recipe.general_mix * len(sequences))
    first = epoch_sequences(sequences, replay, count, 0)
    per_epoch = len(length_batches([len(s.example.input_ids) for s in first], recipe.batch_rows,
                                   recipe.batch_tokens, random.Random(0)))
    total_steps = epochs * per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95),
                                  weight_decay=recipe.weight_decay, fused=cuda)
    model.train()
    start, step, stopped = time.perf_counter(), 0, "epochs"
    loss = accuracy = math.nan
    until = float("inf") if stop_accuracy is not None else epochs  # memorized: it stops; no estimate to a cap
    bar = tqdm(range(epochs), total=until, desc=f"{desc} epochs", disable=not progress, mininterval=2.0)
    for epoch in bar:  # noqa: B007 (the count of epochs run is reported)
        sums = torch.zeros(4, device=device)
        epoch_set = epoch_sequences(sequences, replay, count, epoch)
        lengths = [len(s.example.input_ids) for s in epoch_set]
        for indices in length_batches(lengths, recipe.batch_rows, recipe.batch_tokens, generator):
            elapsed = time.perf_counter() - start
            done = max(step / total_steps, elapsed / time_budget_s if time_budget_s else 0.0)
            if done >= 1:
                stopped = "time"
                break
            warm = min(1.0, (step + 1) / recipe.warmup_steps)
            decay = recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done))
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * warm * decay
            batch = _to_batch([epoch_set[i] for i in indices], pad_token_id, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                batch_loss, stats = lm_loss(model, batch)
            batch_loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sums += stats
            step += 1
        loss_sum, labels, correct, answers = sums.tolist()  # one synchronization per epoch
        loss = loss_sum / max(labels, 1)
        accuracy = correct / answers if answers else math.nan
        lr = optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{loss:.4f}", answer_acc=f"{accuracy:.4f}", lr=f"{lr:.2e}")
        if stopped == "time":
            break
        if stop_accuracy is not None and accuracy >= stop_accuracy:
            stopped = "memorized"
            break
    bar.close()
    model.eval()
    return PhaseLog(epochs=epoch + 1, steps=step, seconds=time.perf_counter() - start, loss=loss,
                    answer_accuracy=None if math.isnan(accuracy) else accuracy, stopped=stopped)


def memorize(model, tokenizer, recipe: Recipe, rows: Sequence[Row], general: list[str], seed: int,
              progress: bool) -> dict:
    """The general warm-up (when there is general text), then the rows with general replay (when the
    recipe mixes it in); the card's training entries."""
    logs = {}
    used = recipe.general_epochs or recipe.general_mix
    passages = [TrainSequence(e, len(e.input_ids))
                for e in document_examples(general if used else [], tokenizer, recipe.max_length)]
    if passages and recipe.general_epochs:
        logs["general"] = train(model, passages, recipe, recipe.general_epochs, tokenizer.pad_token_id, seed,
                                "general warm-up", progress=progress)
    logs["rows"] = train(model, row_sequences(rows, tokenizer, recipe.max_length), recipe, recipe.epochs,
                         tokenizer.pad_token_id, seed, "memorize rows", stop_accuracy=recipe.stop_accuracy,
                         time_budget_s=recipe.time_budget_s, progress=progress,
                         replay=passages if recipe.general_mix else ())
    return {
        "recipe": dataclasses.asdict(recipe),
        "training": {name: dataclasses.asdict(log) for name, log in logs.items()},
        "final_loss": logs["rows"].loss,
    }
