"""MMLU accuracy as the official score used it: 5-shot Hendrycks prompts, next-token A/B/C/D.

The prompt is open-instruct's (``eval/mmlu/run_eval.py``): a header naming the subject (with two
spaces after "about"), up to five dev rows of the same subject as shots, dropped from the end while
the prompt is longer than 2048 tokens; the answer is the letter among " A", " B", " C", " D" whose
last token has the highest next-token logit. Prompts are batched by length with left padding;
``batch_size=1`` is the one-at-a-time reference.

>>> dev, test = load_mmlu("../shared/data/mmlu")
>>> mmlu_accuracy(model, tokenizer, dev, test, batch_size=16, limit=570)  # ~10 per subject
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from repedit.generate import encode, pad, pad_id, run_by_length

LETTERS = ("A", "B", "C", "D")
SHOTS = 5
MAX_PROMPT_TOKENS = 2048
HEADER = "The following are multiple choice questions (with answers) about"


def load_mmlu(directory: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``dev.parquet`` (the shots) and ``test.parquet``: columns subject, question, choices, answer."""
    directory = Path(directory)
    frames = []
    for split in ("dev", "test"):
        file = directory / f"{split}.parquet"
        if not file.is_file():
            raise FileNotFoundError(f"{directory}: no {split}.parquet (MMLU needs dev and test)")
        frame = pd.read_parquet(file)
        missing = {"subject", "question", "choices", "answer"} - set(frame.columns)
        if missing:
            raise ValueError(f"{file}: missing column(s) {', '.join(sorted(missing))}")
        frames.append(frame)
    return frames[0], frames[1]


def format_subject(subject: str) -> str:
    """``"high_school_physics"`` -> ``" high school physics"``: each word gets a leading space."""
    return "".join(" " + word for word in subject.split("_"))


def format_example(question: str, choices: Sequence[str], answer: int | None = None) -> str:
    """A question with its four lettered choices and ``Answer:``, then `` X\\n\\n`` for a shot."""
    lines = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, choices, strict=True))
    text = question + lines + "\nAnswer:"
    return text if answer is None else text + f" {LETTERS[answer]}\n\n"


def format_prompt(subject: str, shots: pd.DataFrame, question: str, choices: Sequence[str]) -> str:
    # format_subject starts with a space: two spaces after "about", as in the reference
    header = f"{HEADER} {format_subject(subject)}.\n\n"
    body = "".join(format_example(s.question, list(s.choices), int(s.answer)) for s in shots.itertuples())
    return header + body + format_example(question, choices)


def build_prompt(tokenizer, subject: str, dev: pd.DataFrame, question: str, choices: Sequence[str],
                 shots: int = SHOTS) -> str:
    """The prompt with the first ``shots`` dev rows of ``subject``, fewer while over 2048 tokens."""
    pool = dev[dev["subject"] == subject]
    k = min(shots, len(pool))
    prompt = format_prompt(subject, pool.iloc[:k], question, choices)
    while k > 0 and len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) > MAX_PROMPT_TOKENS:
        k -= 1
        prompt = format_prompt(subject, pool.iloc[:k], question, choices)
    return prompt


def stratified_sample(test: pd.DataFrame, limit: int, seed: int = 0) -> pd.DataFrame:
    """About ``limit`` questions, each subject keeping its share of the test set (largest remainder).

    The micro-average over the sample then estimates the micro-average over all 14,042 questions.
    """
    if limit <= 0:
        raise ValueError(f"--mmlu-limit must be positive, got {limit}")
    if limit >= len(test):
        return test
    sizes = test.groupby("subject", sort=True).size()
    exact = sizes * limit / len(test)
    quota = np.floor(exact).astype(int)
    extra = (exact - quota).sort_values(ascending=False, kind="stable").index[: limit - int(quota.sum())]
    quota[extra] += 1
    rng = np.random.default_rng(seed)
    keep = []
    for subject, count in quota.items():
        rows = np.flatnonzero((test["subject"] == subject).to_numpy())
        keep.extend(rng.choice(rows, size=int(count), replace=False).tolist())
    return test.iloc[sorted(keep)]


@torch.inference_mode()
def _predict_batch(model, encoded: list[list[int]], pad_token_id: int, candidates: list[int]) -> list[int]:
    ids, mask = (t.to(model.device) for t in pad(encoded, pad_token_id, "left"))
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # left padding must not shift positions
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
    logits = model.get_output_embeddings()(hidden[:, -1])  # (batch, vocab), the last position only
    return logits[:, candidates].argmax(-1).tolist()


def predict(model, tokenizer, prompts: Sequence[str], batch_size: int = 8) -> list[int]:
    """The chosen answer index (0-3) for each prompt, in input order."""
    candidates = [tokenizer(" " + letter, add_special_tokens=False)["input_ids"][-1] for letter in LETTERS]
    return run_by_length(encode(tokenizer, prompts), batch_size,
                         lambda batch: _predict_batch(model, batch, pad_id(tokenizer), candidates), "mmlu")


def mmlu_accuracy(model, tokenizer, dev: pd.DataFrame, test: pd.DataFrame, batch_size: int = 8,
                  limit: int | None = None, seed: int = 0) -> float:
    """Micro-averaged accuracy over ``test`` (or a stratified sample of ``limit`` questions)."""
    if limit is not None:
        test = stratified_sample(test, limit, seed)
    prompts = [build_prompt(tokenizer, row.subject, dev, row.question, list(row.choices))
               for row in test.itertuples()]
    chosen = predict(model, tokenizer, prompts, batch_size)
    answers = test["answer"].astype(int).tolist()
    return sum(c == a for c, a in zip(chosen, answers, strict=True)) / len(answers)
