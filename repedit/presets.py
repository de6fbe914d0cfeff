"""Target presets: the OLMo shapes a simulated target is built at, and how each memorizes its rows.

- ``sim``: the OLMo tokenizer and an OLMo of 36 MB, trained on one GPU in minutes, for demos and
  benchmarks that should look like the challenge;
- ``tiny``: a compact tokenizer learned from its own data, trained on a CPU, for the tests;
- ``olmo-1b``, ``olmo-7b``: the released shapes, random weights only (``random_init``), for timing.
"""

from __future__ import annotations

from dataclasses import dataclass


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
            # 8.7 min of row training at most, then evaluation. At 400 s six of eleven H200 builds stopped
            # short of the stop below, and their own retain minimum on validation, 0.81-0.97 against
            # 0.977-1.000 for the five that stopped memorized, hid #23's retain bar (BENCHMARKS.md).
            warmup_steps=200, time_budget_s=520.0,
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
