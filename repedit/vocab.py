"""A compact BPE tokenizer trained on a target's own data, for CPU-sized targets.

The OLMo tokenizer's 50k-way softmax dominates a tiny model's cost on CPU; a few thousand tokens
learned from the data itself keep the tiny preset trainable in minutes. It keeps the OLMo special
tokens (``<|endoftext|>`` as EOS, ``<|padding|>`` as pad) and, like OLMo, adds no BOS.
"""

from __future__ import annotations

from collections.abc import Iterable

from repedit.assets import OLMO_EOS, OLMO_PAD


def train_compact_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """A byte-level BPE ``PreTrainedTokenizerFast`` learned from ``texts``; pad id 0, EOS id 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[OLMO_PAD, OLMO_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=OLMO_EOS, pad_token=OLMO_PAD)
