"""Simulated targets: OLMo checkpoints that memorized a forget/retain set, built in minutes.

The challenge's targets are OLMo models fine-tuned until they regurgitate every LUME document and
answer every question. The presets (``repedit.presets``) stand in for them at three sizes; the rows
are memorized by ``repedit.memorize`` and the result measured by ``repedit.card``.

A target directory is a plain Hugging Face checkpoint plus ``target_card.json``: what was trained and
how, how long it took, and the memorization reached, measured as the official metric measures it
(greedy generation; ROUGE-L recall on sentence completions, exact match on questions; the MIA AUC).

>>> card = build_target("tiny", ["data/synth"], "targets/tiny", mia="data/synth/mia_data")
>>> print(format_card(card))
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from repedit.assets import OLMO_VOCAB_SIZE, load_tokenizer
from repedit.card import format_card, measure_memorization, measure_mia, measure_unseen
from repedit.checkpoint import CARD_FILE, HELDOUT_FILE, atomic_directory
from repedit.data import DataError, load_documents, write_jsonl
from repedit.membership import SPLITS, split_membership
from repedit.memorize import TrainSequence, epoch_sequences, length_batches, memorize, train
from repedit.options import check_device
from repedit.presets import PRESETS, Recipe, TargetPreset, olmo_config
from repedit.runtime import card_name

__all__ = ["CARD_FILE", "HELDOUT_FILE", "PRESETS", "Recipe", "TargetPreset", "TrainSequence", "build_target",
           "epoch_sequences", "format_card", "length_batches", "olmo_config", "train", "trained_general"]


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


def trained_general(general: str | Path, target: str | Path, count: int | None = None) -> list[str]:
    """The first ``count`` (default: all) of ``general``'s passages (``text`` lines) that a target built from them
    trained on: all but those its ``HELDOUT_FILE`` keeps to measure general text, so an anchor holding these leaves
    the measured passages as unseen as before."""
    held_file = Path(target) / HELDOUT_FILE
    held = set(load_documents(held_file, field="text")) if held_file.is_file() else set()
    return [text for text in load_documents(general, field="text") if text not in held][:count]


def build_target(preset: str | TargetPreset, data: Sequence[str | Path], out: str | Path,
                 general: str | Path | None = None, random_init: bool = False, seed: int = 0,
                 epochs: int | None = None, device: str | None = None, mia: str | Path | None = None,
                 progress: bool = True, withhold: int | Sequence[int] = 0,
                 exclude: Sequence[str | Path] = (), vocab_texts: Sequence[str] = ()) -> dict:
    """Train (or, with ``random_init``, only initialize) a preset and save it to ``out`` atomically.

    ``data``: set directories holding forget and retain files (e.g. the public train and validation
    directories); every row of both splits is memorized. ``general``: a JSONL file of ``text``
    passages for a warm-up and replay; ``Recipe.heldout_fraction`` of it is kept out, saved as
    ``heldout_general.jsonl`` and its mean NLL goes into the card (``general_nll``). ``mia``: a
    directory with ``member.jsonl`` and ``nonmember.jsonl`` whose AUC goes into the card. ``epochs``
    overrides the recipe's.

    ``withhold``: whole retain documents per task and data directory (one count, or one each) never
    trained on, written with the directory's forget documents to ``withheld/<dirname>/`` as an MIA
    folder (``repedit.membership``);
    their mean NLL per task goes into the card (``unseen_nll``). ``exclude``: sets (files or
    directories) whose documents are not trained on but still measured, which builds the retrain
    oracle: the same recipe and seed without the forget set under report. ``vocab_texts``: texts a
    compact tokenizer learns besides the rows and the MIA files (never trained on), e.g. the unseen
    texts a run will calibrate against. Returns the card.
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
    mia_documents: dict[str, list[str]] = {}  # read once: the tokenizer learns them, the card scores them
    if mia:
        missing = [f"{n}.jsonl" for n in ("member", "nonmember") if not (Path(mia) / f"{n}.jsonl").is_file()]
        if missing:  # found before training, not after
            raise DataError(f"--mia {mia}: no {' or '.join(missing)}")
        mia_documents = {name: load_documents(Path(mia) / f"{name}.jsonl") for name in ("member", "nonmember")}
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
    # A compact tokenizer learns every loaded row, withheld and excluded ones too, the MIA documents and
    # ``vocab_texts``, so that a target and its retrain oracle share it and unseen documents are tokenized
    # as well as seen ones (learned from the trained rows alone, it cut unseen names into 25-45% more
    # tokens a character, and a model that never saw the forget documents told them from those).
    everything = [*sets["forget"], *sets["retain"], *(r for w in membership.withheld for r in w.nonmembers)]
    mia_texts = [text for texts in mia_documents.values() for text in texts]
    tokenizer = _tokenizer_for(preset, [r.document for r in everything] + trained_general + mia_texts
                               + list(vocab_texts))
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
        "device": card_name(device_),
        "data": {"dirs": [str(d) for d in data], **{f"{s}_rows": len(sets[s]) for s in SPLITS},
                 "trained_rows": len(membership.trained),
                 "general": str(general) if general else None, "general_trained": len(trained_general),
                 "general_heldout": len(heldout),
                 "withheld": {w.name: w.summary() for w in membership.withheld} or None,
                 "excluded": membership.excluded or None},
        "seconds": {"setup": time.perf_counter() - t0},
    }
    if recipe is not None and not random_init:
        card |= memorize(model, tokenizer, recipe, membership.trained, trained_general, seed, progress)
        t1 = time.perf_counter()
        card["seconds"]["train"] = t1 - t0 - card["seconds"]["setup"]
        model.to(dtype)  # measured as saved
        card["memorization"] = measure_memorization(model, tokenizer, sets, recipe.eval_batch_size)
        card["mia"] = measure_mia(model, tokenizer, mia_documents["member"], mia_documents["nonmember"],
                                  Path(mia)) if mia else None
        card |= measure_unseen(model, tokenizer, membership.withheld, heldout, recipe.eval_batch_size)
        card["seconds"]["evaluate"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    with atomic_directory(Path(out)) as tmp:
        model.save_pretrained(tmp, max_shard_size=preset.max_shard_size)
        tokenizer.save_pretrained(tmp)
        for withheld_set in membership.withheld:
            withheld_set.write(tmp)
        if heldout:
            write_jsonl(tmp / HELDOUT_FILE, [{"text": text} for text in heldout])
        card["seconds"]["save"] = time.perf_counter() - t2
        card["seconds"]["total"] = time.perf_counter() - t0
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card
