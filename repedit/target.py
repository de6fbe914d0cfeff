"""Simulated targets: OLMo checkpoints that memorized a forget/retain set, built in minutes.

The challenge's targets are OLMo models fine-tuned until they regurgitate every LUME document and
answer every question. The presets stand in for them at three sizes:

- ``sim``: the OLMo tokenizer and an OLMo of 36 MB, trained on one GPU in minutes, for demos and
  benchmarks that should look like the challenge;
- ``tiny``: a compact tokenizer learned from its own data, trained on a CPU, for the tests;
- ``olmo-1b``, ``olmo-7b``: the released shapes, random weights only (``random_init``), for timing.

A target directory is a plain Hugging Face checkpoint plus ``target_card.json``: what was trained and
how, how long it took, and the memorization reached, measured as the official metric measures it
(greedy generation; ROUGE-L recall on sentence completions, exact match on questions; the MIA AUC).

>>> card = build_target("tiny", ["data/synth"], "targets/tiny", mia="data/synth/mia_data")
>>> print(format_card(card))
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from repedit.assets import OLMO_VOCAB_SIZE, load_tokenizer
from repedit.checkpoint import atomic_directory
from repedit.data import (
    IGNORE_INDEX,
    TASKS,
    DataError,
    Example,
    Row,
    collate,
    document_examples,
    encode_example,
    load_documents,
)
from repedit.layers import base_model
from repedit.membership import SPLITS, WithheldSet, split_membership
from repedit.options import check_device

CARD_FILE = "target_card.json"
HELDOUT_FILE = "heldout_general.jsonl"


@dataclass(frozen=True)
class Recipe:
    """How a preset memorizes its rows; all of it goes into the card."""

    epochs: int  # most passes over the rows; training stops earlier once stop_accuracy is reached
    lr: float  # peak AdamW learning rate
    batch_rows: int  # rows per batch at most: more, smaller steps memorize faster per pass
    batch_tokens: int  # padded tokens per batch at most; batches hold rows of similar length
    general_epochs: int = 0  # passes over the general text (``general=``) before the rows
    # General passages replayed per row in each epoch of the row phase, cycling through the trained
    # general text: without replay, memorizing rows alone drove held-out general NLL above uniform.
    general_mix: float = 0.0
    warmup_steps: int = 100  # linear warm-up of each phase; a cold start at full lr diverges
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    weight_decay: float = 0.0  # decay pulls weights away from the memorized solution
    grad_clip: float = 1.0
    max_length: int = 512  # the longest LUME document is 335 OLMo tokens
    # Teacher-forced accuracy on the tokens generation must reproduce (answers, continuations, EOS).
    # At 1.0 greedy decoding reproduces every one exactly; 0.998 still let one early error derail a
    # continuation of the tiny preset.
    stop_accuracy: float = 1.0
    time_budget_s: float | None = None  # the row phase's schedule ends at this many seconds at the latest
    heldout_fraction: float = 0.1  # of the general passages, never trained on, saved for calibration
    eval_batch_size: int = 32  # prompts per greedy-generation batch for the card


@dataclass(frozen=True)
class TargetPreset:
    """An OLMo shape, its tokenizer and, for trainable presets, the recipe."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    tie_word_embeddings: bool
    clip_qkv: float | None
    dtype: str  # the saved weights' dtype
    max_shard_size: str
    compact_vocab: int | None = None  # a BPE vocabulary learned from the data; None: the OLMo tokenizer
    recipe: Recipe | None = None  # None: only random weights can be built
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0


PRESETS = {
    # The released OLMo-1B-0724 and OLMo-7B-0724 configurations, for timing work on the real shapes.
    "olmo-1b": TargetPreset(
        name="olmo-1b", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=16, tie_word_embeddings=False, clip_qkv=8.0, dtype="bfloat16",
        max_shard_size="2GB",
    ),
    "olmo-7b": TargetPreset(
        name="olmo-7b", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, tie_word_embeddings=False, clip_qkv=None, dtype="bfloat16",
        max_shard_size="2GB",  # an edit rewrites only the shards it touches and links the rest
    ),
    "sim": TargetPreset(
        name="sim",
        # The embedding (50304 x hidden, tied) is one tensor, hence one file: hidden 160 keeps it at
        # 16.1 MB, under a 16 MiB per-file transfer limit. Wide MLPs (9.6 x hidden) hold the memorized
        # facts; 12 layers leave early, middle and late layers to choose from. 18.1M parameters,
        # 36 MB in bf16. Measured on one H100 (bench/results/sim-card-h100.json): 52 epochs over the
        # rows, 310 s in all; regurgitation >= 0.986 and QA exact match 1.0 on every task and
        # split, MIA AUC 1.0.
        hidden_size=160, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=5,
        tie_word_embeddings=True, clip_qkv=None, dtype="bfloat16", max_shard_size="15MB",
        recipe=Recipe(
            epochs=300,  # an upper bound: memorizing all 2,780 rows stops it well before
            lr=2e-3,  # 1.5e-3 was known stable at hidden 256 and 4e-3 diverged; narrower takes more
            batch_rows=32, batch_tokens=8192,  # 88 steps an epoch, 4.2 s an epoch on an H100
            general_epochs=4,  # some English first, so memorizing starts from lower entropy
            # A third of each epoch's sequences general text, to keep it while memorizing; the longer
            # epochs get a longer row phase.
            general_mix=0.5,
            warmup_steps=200, time_budget_s=400.0,  # 6.7 min of row training at most, then evaluation
            # ~27 wrong of 55k answer tokens. At 0.998 (~110 wrong) one H200 build stopped after 53
            # epochs regurgitating Task1/Task3 at only 0.80/0.79: a long story derails at its first
            # wrong token, and the retain set's regurgitation caps every method's task aggregate.
            stop_accuracy=0.9995,
            eval_batch_size=256,
        ),
    ),
    "tiny": TargetPreset(
        name="tiny",
        # >= 6 layers so that RMU can edit layers 2-4 below a later target layer. Training is compute
        # bound on a CPU: hidden 64 and a 2048-token vocabulary (about one token a word, a third fewer
        # tokens than 1024) memorize 12 public documents in about 75 epochs, 2 minutes on a busy CPU.
        hidden_size=64, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4,
        tie_word_embeddings=False, clip_qkv=None, dtype="float32", max_shard_size="1MB",  # several shards
        compact_vocab=2048, max_position_embeddings=1024,
        recipe=Recipe(epochs=200, lr=3e-3, batch_rows=8, batch_tokens=2048, warmup_steps=30),  # 5e-3: slower
    ),
}


def olmo_config(preset: TargetPreset, vocab_size: int, pad_token_id: int, eos_token_id: int):
    """The transformers ``OlmoConfig`` of a preset (OLMo has no BOS token)."""
    from transformers import OlmoConfig

    return OlmoConfig(
        vocab_size=vocab_size, hidden_size=preset.hidden_size, intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_hidden_layers, num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_attention_heads, clip_qkv=preset.clip_qkv,
        max_position_embeddings=preset.max_position_embeddings,
        rope_theta=preset.rope_theta,  # type: ignore[call-arg]  # transformers 5 moves it to rope_parameters
        tie_word_embeddings=preset.tie_word_embeddings, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
        bos_token_id=None, attention_bias=False, hidden_act="silu",
    )


# --- training ---


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


# --- measuring memorization ---


def measure_memorization(model, tokenizer, sets: dict[str, list[Row]], batch_size: int) -> dict:
    """Per split and task: mean ROUGE-L recall of greedy continuations of the sc rows
    (``regurgitation``) and mean exact match of the answers (``qa_exact_match``)."""
    from repedit.generate import greedy_generate
    from repedit.metric import exact_match, rouge_l_recall

    scores: dict[str, dict[str, dict]] = {}
    for split, rows in sets.items():
        generated = greedy_generate(model, tokenizer, [row.input for row in rows], batch_size=batch_size)
        for task in TASKS:
            pairs = [(row, text) for row, text in zip(rows, generated, strict=True) if row.task == task]
            sc = [rouge_l_recall(row.output, text) for row, text in pairs if row.kind == "sc"]
            qa = [exact_match(row.output, text) for row, text in pairs if row.kind == "qa"]
            if pairs:
                scores.setdefault(split, {})[task] = {
                    "regurgitation": statistics.fmean(sc) if sc else None, "sc_rows": len(sc),
                    "qa_exact_match": statistics.fmean(qa) if qa else None, "qa_rows": len(qa),
                }
    return scores


def measure_mia(model, tokenizer, mia_dir: Path) -> dict:
    """AUC of telling ``member.jsonl`` from ``nonmember.jsonl`` documents by their NLL (1.0: all members
    more likely than every nonmember)."""
    from repedit.generate import document_nll
    from repedit.metric import mia_auc

    members = load_documents(mia_dir / "member.jsonl")
    nonmembers = load_documents(mia_dir / "nonmember.jsonl")
    member_nll = document_nll(model, tokenizer, members)
    nonmember_nll = document_nll(model, tokenizer, nonmembers)
    return {"auc": mia_auc(member_nll, nonmember_nll), "members": len(members), "nonmembers": len(nonmembers),
            "member_nll": statistics.fmean(member_nll), "nonmember_nll": statistics.fmean(nonmember_nll),
            "dir": str(mia_dir)}


def measure_unseen(model, tokenizer, withheld: Sequence[WithheldSet], heldout: Sequence[str],
                   batch_size: int) -> dict:
    """What the target does with text it never saw: the mean NLL of the held-out general passages
    (``general_nll``) and of the withheld documents per data directory and task (``unseen_nll``)."""
    from repedit.collateral import mean_nll

    unseen = {w.name: {task: mean_nll(model, tokenizer, [r.document for r in w.nonmembers if r.task == task],
                                      f"withheld/{w.name} ({task})", batch_size)
                       for task in TASKS if any(r.task == task for r in w.nonmembers)}
              for w in withheld}
    general = mean_nll(model, tokenizer, heldout, HELDOUT_FILE, batch_size) if heldout else None
    return {"general_nll": general, "unseen_nll": unseen or None}


# --- building ---


@contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _tokenizer_for(preset: TargetPreset, texts: Sequence[str]):
    if preset.compact_vocab is None:
        return load_tokenizer()
    from repedit.vocab import train_compact_tokenizer

    return train_compact_tokenizer(texts, vocab_size=preset.compact_vocab)


def _general_split(general: Path | None, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(trained, held out) general passages; the held-out ones are never seen by the target."""
    if general is None:
        return [], []
    texts = load_documents(general, field="text")
    random.Random(seed).shuffle(texts)
    held = round(len(texts) * fraction)
    return texts[held:], texts[:held]


def _memorize(model, tokenizer, recipe: Recipe, rows: Sequence[Row], general: list[str], seed: int,
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


def build_target(preset: str | TargetPreset, data: Sequence[str | Path], out: str | Path,
                 general: str | Path | None = None, random_init: bool = False, seed: int = 0,
                 epochs: int | None = None, device: str | None = None, mia: str | Path | None = None,
                 progress: bool = True, withhold: int = 0, exclude: Sequence[str | Path] = ()) -> dict:
    """Train (or, with ``random_init``, only initialize) a preset and save it to ``out`` atomically.

    ``data``: set directories holding forget and retain files (e.g. the public train and validation
    directories); every row of both splits is memorized. ``general``: a JSONL file of ``text``
    passages for a warm-up and replay; ``Recipe.heldout_fraction`` of it is kept out, saved as
    ``heldout_general.jsonl`` and its mean NLL goes into the card (``general_nll``). ``mia``: a
    directory with ``member.jsonl`` and ``nonmember.jsonl`` whose AUC goes into the card. ``epochs``
    overrides the recipe's.

    ``withhold``: whole retain documents per task and data directory never trained on, written with
    the directory's forget documents to ``withheld/<dirname>/`` as an MIA folder (``repedit.membership``);
    their mean NLL per task goes into the card (``unseen_nll``). ``exclude``: sets (files or
    directories) whose documents are not trained on but still measured, which builds the retrain
    oracle: the same recipe and seed without the forget set under report. Returns the card.
    """
    from transformers import GenerationConfig, OlmoForCausalLM

    t0 = time.perf_counter()
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"--preset: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    if preset.recipe is None and not random_init:
        raise ValueError(f"--preset {preset.name}: only random weights can be built; add --random-init")
    if not random_init and not data:
        raise ValueError("--data: give at least one directory with forget and retain sets to memorize")
    if preset.compact_vocab and not data:
        raise ValueError(f"--data: preset {preset.name} learns its tokenizer from the data; give a directory")
    missing = [n for n in ("member.jsonl", "nonmember.jsonl") if mia and not (Path(mia) / n).is_file()]
    if missing:  # found before training, not after
        raise DataError(f"--mia {mia}: no {' or '.join(missing)}")
    recipe = preset.recipe
    if recipe is not None and epochs is not None:
        if epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {epochs}")
        recipe = dataclasses.replace(recipe, epochs=epochs)
    check_device(device)
    device_ = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, preset.dtype)

    membership = split_membership(data, withhold, seed, exclude)  # its errors come before training
    sets = membership.measured
    trained_general, heldout = _general_split(Path(general) if general else None,
                                              recipe.heldout_fraction if recipe else 0.0, seed)
    # A compact tokenizer learns every loaded row, withheld and excluded ones too, so that a target and
    # its retrain oracle share it and unseen documents are tokenized as well as seen ones.
    everything = [*sets["forget"], *sets["retain"], *(r for w in membership.withheld for r in w.nonmembers)]
    tokenizer = _tokenizer_for(preset, [r.document for r in everything] + trained_general)
    vocab = len(tokenizer) if preset.compact_vocab else OLMO_VOCAB_SIZE
    config = olmo_config(preset, vocab, tokenizer.pad_token_id, tokenizer.eos_token_id)
    torch.manual_seed(seed)
    # Random init goes straight to the device in the saved dtype (a 7B never exists in fp32); training
    # keeps fp32 master weights.
    with torch.device(device_), _default_dtype(dtype if random_init else torch.float32):
        model = OlmoForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    card: dict = {
        "preset": preset.name,
        "config": {f.name: getattr(preset, f.name) for f in dataclasses.fields(preset) if f.name != "recipe"}
        | {"vocab_size": vocab, "tokenizer": "compact" if preset.compact_vocab else "olmo"},
        "parameters": sum(p.numel() for p in model.parameters()),
        "megabytes": sum(p.numel() for p in model.parameters()) * dtype.itemsize / 1e6,
        "trained": not random_init,
        "seed": seed,
        "device": torch.cuda.get_device_name(device_) if device_.type == "cuda" else "cpu",
        "data": {"dirs": [str(d) for d in data], **{f"{s}_rows": len(sets[s]) for s in SPLITS},
                 "trained_rows": len(membership.trained),
                 "general": str(general) if general else None, "general_trained": len(trained_general),
                 "general_heldout": len(heldout),
                 "withheld": {w.name: w.summary() for w in membership.withheld} or None,
                 "excluded": membership.excluded or None},
        "seconds": {"setup": time.perf_counter() - t0},
    }
    if recipe is not None and not random_init:
        card |= _memorize(model, tokenizer, recipe, membership.trained, trained_general, seed, progress)
        t1 = time.perf_counter()
        card["seconds"]["train"] = t1 - t0 - card["seconds"]["setup"]
        model.to(dtype)  # measured as saved
        card["memorization"] = measure_memorization(model, tokenizer, sets, recipe.eval_batch_size)
        card["mia"] = measure_mia(model, tokenizer, Path(mia)) if mia else None
        card |= measure_unseen(model, tokenizer, membership.withheld, heldout, recipe.eval_batch_size)
        card["seconds"]["evaluate"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    with atomic_directory(Path(out)) as tmp:
        model.save_pretrained(tmp, max_shard_size=preset.max_shard_size)
        tokenizer.save_pretrained(tmp)
        for withheld_set in membership.withheld:
            withheld_set.write(tmp)
        if heldout:
            with open(tmp / HELDOUT_FILE, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in heldout)
        card["seconds"]["save"] = time.perf_counter() - t2
        card["seconds"]["total"] = time.perf_counter() - t0
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_card(card: dict) -> str:
    """The card as a short report: shape, training, and a split x task table of memorization."""
    config = card["config"]
    lines = [
        f"target {card['preset']}: {card['parameters'] / 1e6:.1f}M parameters ({card['megabytes']:.1f} MB "
        f"{config['dtype']}), {config['num_hidden_layers']} layers x {config['hidden_size']}, "
        f"{config['tokenizer']} tokenizer ({config['vocab_size']}), on {card['device']}",
    ]
    if not card["trained"]:
        return "\n".join(lines + [f"random weights, written in {card['seconds']['total']:.1f} s"])
    for name, log in card["training"].items():
        accuracy = "" if log["answer_accuracy"] is None else f", answer accuracy {log['answer_accuracy']:.4f}"
        lines.append(f"{name}: {log['epochs']} epochs, {log['steps']} steps, {log['seconds']:.1f} s, "
                     f"loss {log['loss']:.4f}{accuracy} (stopped: {log['stopped']})")
    lines.append(f"{'split':<8}{'task':<7}{'regurgitation':>14}{'qa exact match':>16}{'rows (sc/qa)':>14}")
    for split, tasks in card["memorization"].items():
        for task, s in tasks.items():
            lines.append(f"{split:<8}{task:<7}{_value(s['regurgitation']):>14}{_value(s['qa_exact_match']):>16}"
                         f"{s['sc_rows']:>8}/{s['qa_rows']}")
    data = card["data"]
    if data.get("withheld"):
        lines.append("withheld, never trained on: " + "; ".join(
            f"{name} " + ", ".join(f"{task} {n}" for task, n in w["documents"].items()) + f" ({w['members']} members)"
            for name, w in data["withheld"].items()))
    if data.get("excluded"):
        lines.append("excluded from training (retrain oracle): " + "; ".join(
            f"{e['path']} ({e['documents']} documents, {e['rows']} rows)" for e in data["excluded"]))
    if card.get("unseen_nll"):
        lines.append("unseen NLL: " + "; ".join(
            f"{name} " + ", ".join(f"{task} {v:.3f}" for task, v in tasks.items())
            for name, tasks in card["unseen_nll"].items()))
    if card.get("general_nll") is not None:
        uniform = math.log(card["config"]["vocab_size"])
        lines.append(f"held-out general NLL {card['general_nll']:.3f} (uniform guessing: {uniform:.3f})")
    if card["mia"]:
        m = card["mia"]
        lines.append(f"MIA AUC {m['auc']:.4f} ({m['members']} members, NLL {m['member_nll']:.3f}; "
                     f"{m['nonmembers']} nonmembers, NLL {m['nonmember_nll']:.3f})")
    seconds = card["seconds"]
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return "\n".join(lines)
