"""Does the retain set's input subspace tell forget inputs apart? The premise of ``--preserve-energy``.

For each layer's MLP weights of a target, the share of the forget rows' input energy (sum |k|^2 over real
tokens) that falls outside the directions holding ``--energy`` of the retain rows' inputs, beside the retain
rows' own share there (1 - energy, about). A projection can only protect retain text while letting forget text
move if the first is well above the second.

    python bench/nullspace_cpu.py --target /tmp/ns/tiny --data /tmp/ns/synth --energy 0.9
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import load_rows, training_examples
from repedit.layers import decoder_layers
from repedit.nullspace import null_space_projector, retain_moments
from repedit.rmu import PrefixBatch, cache_prefix, paired_batches, select_parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="forget.jsonl and retain.jsonl")
    parser.add_argument("--energy", type=float, default=0.9)
    args = parser.parse_args()
    model = load_causal_lm(args.target, torch.float32, "cpu")
    model.requires_grad_(False)
    tokenizer = load_checkpoint_tokenizer(args.target)
    last = len(decoder_layers(model)) - 1
    trainable = select_parameters(model, tuple(range(last + 1)), ("mlp.up_proj", "mlp.down_proj"))
    forget = training_examples(load_rows(args.data, "forget"), tokenizer, 256, whole_documents=True)
    retain = training_examples(load_rows(args.data, "retain"), tokenizer, 256)
    batches = [cache_prefix(model, b, 0, n) for b, n in paired_batches(forget, retain, 8, 50, tokenizer.pad_token_id)]
    retained = retain_moments(model, trainable, batches, 0, last)
    # the forget rows' moments: the same batches with forget and retain rows swapped
    swapped = [PrefixBatch(torch.cat([b.hidden[b.forget_rows:], b.hidden[:b.forget_rows]]),
                           {**b.layer_kwargs, "attention_mask": _swap(b.layer_kwargs.get("attention_mask"), b)},
                           torch.cat([b.mask[b.forget_rows:], b.mask[:b.forget_rows]]), b.labels,
                           len(b.mask) - b.forget_rows) for b in batches]
    forgotten = retain_moments(model, trainable, swapped, 0, last)
    print(f"{'weight':40}{'forget outside':>16}{'retain outside':>16}{'free dims':>11}")
    for name in trainable:
        projector = null_space_projector(retained[name], args.energy)
        outside = {who: ((projector @ m[name]).trace() / m[name].trace()).item()
                   for who, m in (("forget", forgotten), ("retain", retained))}
        print(f"{name:40}{outside['forget']:16.3f}{outside['retain']:16.3f}{round(projector.trace().item()):11d}")


def _swap(mask: torch.Tensor | None, batch: PrefixBatch) -> torch.Tensor | None:
    """A batch-first attention mask with the forget and retain rows swapped as the hidden states are."""
    if mask is None or mask.shape[0] != len(batch.mask):
        return mask
    return torch.cat([mask[batch.forget_rows:], mask[:batch.forget_rows]])


if __name__ == "__main__":
    main()
