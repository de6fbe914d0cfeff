"""How selective the MLP units an --edit-units edit would pick are: per edited layer, the share of the forget
documents' activation mass (|act(gate(x)) * up(x)| over their tokens) that the most forget-active units carry (scored
forget against retain, as repedit.units scores them), beside the share of the retain and of unseen documents' mass
they carry. Units that held what is the forget documents' own would carry far more of the forget mass than of the
unseen; equal shares say the memorized documents run through the same units as unseen text of their kind.

  PYTHONPATH=$PWD python bench/unit_selectivity.py --target /tmp/wb/sim --data /tmp/wb/sets/train \
      --unseen /tmp/wb/sim/withheld/train/nonmember.jsonl --layers 5,6,7
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import collate, load_rows, training_examples


def activations(model, tokenizer, texts_or_examples, layers: tuple[int, ...],
                batch: int = 32) -> dict[int, torch.Tensor]:
    """Each layer's MLP unit activations on every real token, (tokens, units)."""
    out: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    for start in range(0, len(texts_or_examples), batch):
        part = texts_or_examples[start : start + batch]
        if isinstance(part[0], str):
            encoded = tokenizer(part, return_tensors="pt", padding=True, truncation=True, max_length=512)
        else:
            encoded = collate(part, tokenizer.pad_token_id)
        mask = encoded["attention_mask"].bool()
        hooks = [model.model.layers[i].mlp.down_proj.register_forward_pre_hook(
            lambda _m, inputs, i=i, mask=mask: out[i].append(inputs[0][mask].double())) for i in layers]
        with torch.no_grad():
            model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
        for hook in hooks:
            hook.remove()
    return {i: torch.cat(values) for i, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder with forget.jsonl and retain.jsonl")
    parser.add_argument("--unseen", type=Path, required=True, help=".jsonl of unseen documents (text or document)")
    parser.add_argument("--layers", required=True, help="e.g. 5,6,7")
    args = parser.parse_args()
    layers = tuple(int(x) for x in args.layers.split(","))
    model = load_causal_lm(args.target, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(args.target)
    sets = {split: activations(model, tokenizer, training_examples(
        [r for r in load_rows(args.data, split) if r.kind == "sc"], tokenizer, 512, whole_documents=True), layers)
        for split in ("forget", "retain")}
    unseen = [json.loads(line) for line in args.unseen.read_text().splitlines() if line.strip()]
    sets["unseen"] = activations(model, tokenizer, [u.get("text") or u["document"] for u in unseen], layers)
    for i in layers:
        forget, retain, texts = (sets[name][i].abs() for name in ("forget", "retain", "unseen"))
        rms = torch.cat([sets["forget"][i], sets["retain"][i]]).square().mean(0).sqrt()
        score = (forget.mean(0) - retain.mean(0)) / rms
        for share in (0.1, 0.3):
            top = score.topk(round(share * score.numel())).indices
            print(f"layer {i}, the top {share:.0%} of units: score {score[top].mean():.3f}; share of the layer's |a| "
                  f"mass on forget {forget[:, top].sum() / forget.sum():.3f}, retain "
                  f"{retain[:, top].sum() / retain.sum():.3f}, unseen {texts[:, top].sum() / texts.sum():.3f}")


if __name__ == "__main__":
    main()
