"""The MMLU prompt, character for character; shot dropping; sampling; batched equals one at a time."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import SHARED_DATA, needs_shared

from repedit.mmlu import build_prompt, format_subject, load_mmlu, mmlu_accuracy, predict, stratified_sample


class WordTokenizer:
    """One token per whitespace-separated word: makes prompt lengths easy to control."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": text.split()}


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["subject", "question", "choices", "answer"])


def test_format_subject_prefixes_every_word_with_a_space():
    assert format_subject("high_school_physics") == " high school physics"


def test_one_shot_prompt_matches_the_reference_text():
    dev = _frame([("college_physics", "What is 1 + 1?", ["1", "2", "3", "4"], 1),
                  ("anatomy", "Which bone?", ["a", "b", "c", "d"], 0)])
    prompt = build_prompt(WordTokenizer(), "college_physics", dev, "What is 2 + 2?", ["3", "4", "5", "6"])
    assert prompt == (
        "The following are multiple choice questions (with answers) about  college physics.\n\n"
        "What is 1 + 1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    )


def test_shots_are_dropped_from_the_end_while_over_2048_tokens():
    long = " ".join(["word"] * 600)
    dev = _frame([("law", f"Shot {i} {long}", ["a", "b", "c", "d"], i % 4) for i in range(5)])
    prompt = build_prompt(WordTokenizer(), "law", dev, "Final question?", ["a", "b", "c", "d"])
    assert prompt.count("Answer:") == 4  # three shots of ~610 words fit in 2048, four do not
    assert "Shot 2" in prompt and "Shot 3" not in prompt
    huge = _frame([("law", " ".join(["w"] * 3000), ["a", "b", "c", "d"], 0)])
    assert build_prompt(WordTokenizer(), "law", huge, "Q?", ["a", "b", "c", "d"]).count("Answer:") == 1


def test_stratified_sample_keeps_each_subjects_share():
    test = _frame([(s, f"{s} {i}", ["a", "b", "c", "d"], 0) for s, n in (("a", 100), ("b", 50), ("c", 10))
                   for i in range(n)])
    sample = stratified_sample(test, 16, seed=0)
    assert sample["subject"].value_counts().to_dict() == {"a": 10, "b": 5, "c": 1}
    assert sample.equals(stratified_sample(test, 16, seed=0))
    assert not sample.equals(stratified_sample(test, 16, seed=1))
    assert stratified_sample(test, 1000).equals(test)
    with pytest.raises(ValueError, match="--mmlu-limit"):
        stratified_sample(test, 0)


def test_batched_predictions_equal_a_plain_loop(tiny_model_dir):
    """The reference is written here: each prompt alone through the whole model, the answer the letter
    (`` A``..`` D``) whose next-token logit is highest."""
    import torch

    from repedit.assets import load_tokenizer
    from repedit.checkpoint import load_causal_lm

    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    dev = _frame([("astronomy", "Which planet is red?", ["Mars", "Venus", "Earth", "Jupiter"], 0)])
    questions = ["Which star is closest?", "How many moons does Mars have, counting both small ones?", "Why?"]
    choices = ["one", "two", "three", "four"]
    test = _frame([("astronomy", q, choices, i % 4) for i, q in enumerate(questions)])
    prompts = [build_prompt(tokenizer, "astronomy", dev, q, choices) for q in questions]
    letters = [tokenizer(" " + letter, add_special_tokens=False)["input_ids"][-1] for letter in "ABCD"]
    chosen = []
    for prompt in prompts:
        with torch.no_grad():
            logits = model(torch.tensor([tokenizer(prompt)["input_ids"]])).logits[0, -1]
        chosen.append(int(logits[letters].argmax()))
    assert predict(model, tokenizer, prompts, batch_size=3) == chosen
    assert predict(model, tokenizer, prompts, batch_size=2) == chosen
    expected = sum(c == a for c, a in zip(chosen, test["answer"], strict=True)) / len(questions)
    assert mmlu_accuracy(model, tokenizer, dev, test, batch_size=2) == expected


def test_load_mmlu_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dev.parquet"):
        load_mmlu(tmp_path)


@needs_shared
def test_real_prompts_stay_within_2048_olmo_tokens():
    from repedit.assets import load_tokenizer

    tokenizer = load_tokenizer(SHARED_DATA / "olmo-tokenizer" / "tokenizer.json")
    dev, test = load_mmlu(SHARED_DATA / "mmlu")
    assert len(test) == 14042 and test["subject"].nunique() == 57
    row = test[test["subject"] == "high_school_european_history"].iloc[0]
    prompt = build_prompt(tokenizer, row.subject, dev, row.question, list(row.choices))
    assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= 2048
    assert prompt.count("Answer:") < 6  # this subject's long passages force dropping shots
