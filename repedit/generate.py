"""Greedy generation and document NLL, batched for speed, and one at a time as the organizers ran them.

The official evaluation generated one prompt at a time; ``greedy_generate`` batches prompts of
similar length (left padding, KV cache, each row stopping at its own EOS) and must return the same
strings, and ``document_nll`` batches documents (right padding, per-row masking) for the MIA.
``generate_one`` and ``document_nll_one`` are the one-at-a-time versions they are tested against.
Under ``accelerate launch`` the items are spread over the processes and gathered back on every one.

>>> texts = greedy_generate(model, tokenizer, [row.input for row in rows])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from repedit.data import Example, collate

T = TypeVar("T")

# transformers 4.x applied this after decoding with clean_up_tokenization_spaces=True; version 5
# ignores the flag for BPE tokenizers, so it is applied here, identically on every version.
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def clean_up_tokenization(text: str) -> str:
    """The classic ``clean_up_tokenization_spaces`` of transformers 4.x (" ." -> "." and so on)."""
    for old, new in _CLEANUP:
        text = text.replace(old, new)
    return text


def decode(tokenizer, ids: Sequence[int]) -> str:
    """Decode as the official did: ``skip_special_tokens=True, clean_up_tokenization_spaces=True`` on 4.x."""
    text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return clean_up_tokenization(text)


@contextmanager
def accelerate_processes() -> Iterator:
    """This process's place among ``accelerate launch`` processes (a ``PartialState``) for the block.

    Processes without a GPU join through gloo only when accelerate is told they are CPU processes; else
    each would run every item alone. A group joined here is left together and destroyed on leaving: a
    rank that exits with gloo's threads still running can abort ("terminate called without an active
    exception") after its peer has gone.
    """
    from accelerate import PartialState

    started = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    state = PartialState(cpu=cpu)
    try:
        yield state
        state.wait_for_everyone()
    finally:
        if started and torch.distributed.is_available() and torch.distributed.is_initialized():
            state.destroy_process_group()
            PartialState._reset_state()  # the next PartialState sees no group


def map_across_processes(items: Sequence[T], work: Callable[[list[T]], list]) -> list:
    """``work`` on this process's share of ``items``; every process gets all results in input order.

    Items are dealt round robin so that each process gets a similar mix of lengths. A single process
    (no ``accelerate launch``) just runs ``work`` on everything.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    mine = list(range(state.process_index, len(items), state.num_processes))
    results = work([items[i] for i in mine])
    if state.num_processes == 1:
        return results
    pairs = gather_object(list(zip(mine, results, strict=True)))  # every process's pairs, concatenated
    return [result for _, result in sorted(pairs, key=lambda pair: pair[0])]


def run_by_length(encoded: Sequence[list[int]], batch_size: int, run_batch: Callable[[list[list[int]]], list],
                  desc: str) -> list:
    """``run_batch`` on batches of token sequences of similar length; results in input order.

    Sorting by length keeps padding small; the longest batch goes first so that running out of
    memory shows at once. The sequences are spread over ``accelerate`` processes.
    """
    from accelerate import PartialState

    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")

    def work(part: list[list[int]]) -> list:
        order = sorted(range(len(part)), key=lambda i: -len(part[i]))
        results: list = [None] * len(part)
        with tqdm(total=len(part), desc=desc, disable=not PartialState().is_main_process, leave=False) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                for i, result in zip(batch, run_batch([part[i] for i in batch]), strict=True):
                    results[i] = result
                bar.update(len(batch))
        return results

    return map_across_processes(encoded, work)


def eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; generation needs one to stop")
    return tokenizer.eos_token_id


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)


def pad(sequences: Sequence[Sequence[int]], pad_token_id: int, side: str) -> tuple[torch.Tensor, ...]:
    """``(input_ids, attention_mask)``, each ``(batch, longest)``, padded on the ``left`` or ``right``."""
    batch = collate([Example(list(s), list(s)) for s in sequences], pad_token_id, padding_side=side)
    return batch["input_ids"], batch["attention_mask"]


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids with the tokenizer's defaults (OLMo adds no BOS), as the official pipeline tokenized."""
    return [tokenizer(text)["input_ids"] for text in texts]


@torch.inference_mode()
def generate_one(model, tokenizer, prompt: str, max_new_tokens: int = 256) -> str:
    """One prompt at a time, as the organizers ran it: the raw prompt with the tokenizer's defaults,
    greedy, pad = EOS, continuation only."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=eos_id(tokenizer))
    return decode(tokenizer, out[0, ids.shape[1] :].tolist())


@torch.inference_mode()
def generate_batch(model, tokenizer, encoded: list[list[int]], max_new_tokens: int) -> list[str]:
    ids, mask = (t.to(model.device) for t in pad(encoded, pad_id(tokenizer), "left"))
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=eos_id(tokenizer))
    # Rows that stopped early are filled with EOS, which decoding skips as a special token.
    return [decode(tokenizer, row.tolist()) for row in out[:, ids.shape[1] :]]


def greedy_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 256,
                    batch_size: int = 32, desc: str = "generate") -> list[str]:
    """Greedy continuations of ``prompts`` in input order, batched by length; equals ``generate_one``."""
    return run_by_length(encode(tokenizer, prompts), batch_size,
                         lambda batch: generate_batch(model, tokenizer, batch, max_new_tokens), desc)


@torch.inference_mode()
def document_nll_one(model, tokenizer, text: str) -> float:
    """One document at a time, as the organizers ran it: ``model(ids, labels=ids).loss`` of the whole
    document, with no truncation."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"].to(model.device)
    return model(ids, labels=ids).loss.item()


# Float32 logits one NLL pass may hold: 1 GiB. Measured on the GPU: 256 documents of ~300 tokens
# over OLMo's 50k vocabulary asked for 15 GiB at once and ran out of memory beside other jobs.
LOGIT_ELEMENTS = 2**28


@torch.inference_mode()
def nll_batch(model, encoded: list[list[int]], pad_token_id: int) -> list[float]:
    """Mean token NLL of each sequence; rows run in chunks whose logits fit in ``LOGIT_ELEMENTS``."""
    rows = max(1, LOGIT_ELEMENTS // (max(map(len, encoded)) * model.config.vocab_size))
    if len(encoded) > rows:
        return [nll for start in range(0, len(encoded), rows)
                for nll in nll_batch(model, encoded[start : start + rows], pad_token_id)]
    ids, mask = (t.to(model.device) for t in pad(encoded, pad_token_id, "right"))
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (batch, width - 1, vocab)
    targets = ids[:, 1:]  # (batch, width - 1)
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    keep = mask[:, 1:].to(losses.dtype)
    return ((losses * keep).sum(1) / keep.sum(1)).tolist()


def document_nll(model, tokenizer, texts: Sequence[str], batch_size: int = 8, desc: str = "nll") -> list[float]:
    """Mean token NLL of each whole document, in input order, batched; equals ``document_nll_one``."""
    return run_by_length(encode(tokenizer, texts), batch_size,
                         lambda batch: nll_batch(model, batch, pad_id(tokenizer)), desc)
