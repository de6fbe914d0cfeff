"""Batched generation and NLL equal the one-at-a-time references on a tiny random OLMo."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from repedit import generate
from repedit.generate import (
    clean_up_tokenization,
    decode,
    document_nll,
    document_nll_one,
    generate_one,
    greedy_generate,
)

PROMPTS = [
    "Once upon a time",
    "The",
    "In a small town by the sea, a young painter named",
    "Where does she live?",
    "What is the phone number of the person whose social security number is listed in the record above?",
    "A",
    "Tell me",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from repedit.assets import load_tokenizer
    from repedit.checkpoint import load_causal_lm

    return load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)


def _continuations(model, tokenizer, max_new_tokens: int) -> list[list[int]]:
    """Token ids each prompt generates, EOS included."""
    out = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        generated = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.eos_token_id)
        out.append(generated[0, ids.shape[1] :].tolist())
    return out


@pytest.fixture(scope="module")
def stopping_model(model_and_tokenizer):
    """The tiny model with EOS planted so that some rows stop early and others run to the limit.

    EOS gets a slightly scaled copy of the output row of a token that some continuations produce
    and others do not: wherever that token was the argmax, EOS now is.
    """
    model, tokenizer = model_and_tokenizer
    counts = Counter(t for ids in _continuations(model, tokenizer, 24) for t in set(ids[1:]))
    token = max((t for t, n in counts.items() if n < len(PROMPTS)), key=lambda t: counts[t])
    head = model.get_output_embeddings().weight
    original = head.data.clone()
    with torch.no_grad():
        head[tokenizer.eos_token_id] = 1.01 * head[token]
    yield model, tokenizer
    head.data.copy_(original)


def test_classic_cleanup_of_transformers_4():
    assert clean_up_tokenization("Hello , world . I do n't know ' s it 's we 're ok !") == (
        "Hello, world. I don't know's it's we're ok!"
    )


def test_decode_cleans_up_on_every_transformers_version(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    ids = tokenizer("Yes , she said .")["input_ids"]
    assert decode(tokenizer, ids + [tokenizer.eos_token_id]) == "Yes, she said."


def test_batched_generation_equals_one_at_a_time(stopping_model):
    model, tokenizer = stopping_model
    lengths = [len(ids) for ids in _continuations(model, tokenizer, 24)]
    assert min(lengths) < 24 and max(lengths) == 24, "the planted EOS should stop some rows early"
    one_by_one = [generate_one(model, tokenizer, p, max_new_tokens=24) for p in PROMPTS]
    for batch_size in (3, 32):
        batched = greedy_generate(model, tokenizer, PROMPTS, max_new_tokens=24, batch_size=batch_size)
        assert batched == one_by_one


def test_batched_nll_equals_one_at_a_time(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    one_by_one = [document_nll_one(model, tokenizer, p) for p in PROMPTS if len(tokenizer(p)["input_ids"]) > 1]
    texts = [p for p in PROMPTS if len(tokenizer(p)["input_ids"]) > 1]
    batched = document_nll(model, tokenizer, texts, batch_size=3)
    assert batched == pytest.approx(one_by_one, abs=1e-5)


def test_nll_splits_a_batch_whose_logits_exceed_the_memory_cap(model_and_tokenizer, monkeypatch):
    """A batch too large for the logit cap runs in row chunks, one forward pass each, same values."""
    model, tokenizer = model_and_tokenizer
    texts = [p for p in PROMPTS if len(tokenizer(p)["input_ids"]) > 1]
    whole = document_nll(model, tokenizer, texts, batch_size=len(texts))
    longest = max(len(tokenizer(t)["input_ids"]) for t in texts)
    monkeypatch.setattr(generate, "LOGIT_ELEMENTS", 2 * longest * model.config.vocab_size)  # 2 rows a pass
    passes = []
    handle = model.register_forward_hook(lambda _m, args, kwargs, _out: passes.append(kwargs["input_ids"].shape[0]),
                                         with_kwargs=True)
    try:
        chunked = document_nll(model, tokenizer, texts, batch_size=len(texts))
    finally:
        handle.remove()
    assert passes == [2] * (len(texts) // 2) + [1] * (len(texts) % 2)
    assert chunked == pytest.approx(whole, abs=1e-5)
