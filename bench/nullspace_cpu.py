"""Do forget inputs leave the retain set's input subspace? The premise of a null-space projection of the edit.

For each layer's MLP up and down projections of a target, the share of the forget rows' input energy (sum of
|k|^2 over real tokens) that falls outside the directions holding ``--energy`` of the retain rows' inputs,
beside the retain rows' own share there (about 1 - energy). Updates kept in those outside directions (AlphaEdit's
projection; ``--preserve-energy``, tried on the tiny target and removed: BENCHMARKS.md) can move forget text
while leaving retain text only where the first share is well above the second; on the tiny target it is 11-16%
against 10% at every layer.

    python bench/nullspace_cpu.py --target /tmp/w2/sim --data /tmp/w2/sets/train --energy 0.9
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import load_rows, training_examples
from repedit.layers import decoder_layers, run_layers
from repedit.rmu import cache_prefix, select_parameters
from repedit.step_cache import paired_batches


@torch.no_grad()
def input_moments(model: torch.nn.Module, names: list[str], batches: list, last: int) -> dict[str, dict]:
    """Per weight, sum(k k^T) over the inputs k it receives on the forget rows' and on the retain rows' tokens."""
    moments: dict[str, dict] = {name: {} for name in names}
    current: list = []

    def hook(name: str):
        def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            batch = current[0]
            for who, rows in (("forget", slice(None, batch.forget_rows)), ("retain", slice(batch.forget_rows, None))):
                keys = inputs[0][rows][batch.mask[rows].bool()].double()
                moments[name][who] = moments[name].get(who, 0) + keys.T @ keys
        return record

    handles = [model.get_submodule(name.removesuffix(".weight")).register_forward_pre_hook(hook(name))
               for name in names]
    for batch in batches:
        current[:] = [batch]
        run_layers(model, 0, last, batch.hidden, batch.layer_kwargs)
    for handle in handles:
        handle.remove()
    return moments


def protected(retain: torch.Tensor, energy: float) -> torch.Tensor:
    """The fewest top eigenvectors of ``retain`` (columns) holding ``energy`` of its trace."""
    values, vectors = torch.linalg.eigh(retain)
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    return vectors[:, :min(int((values.cumsum(0) / values.sum() < energy).sum()) + 1, len(values))]


def outside_share(kept: torch.Tensor, moment: torch.Tensor) -> float:
    """The share of ``moment``'s trace outside the directions ``kept``."""
    return 1 - (kept.T @ moment @ kept).trace().item() / moment.trace().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the forget and retain sets it memorized")
    parser.add_argument("--energy", type=float, default=0.9, help="share of the retain inputs' energy protected")
    args = parser.parse_args()
    model = load_causal_lm(args.target, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(args.target)
    last = len(decoder_layers(model)) - 1
    names = list(select_parameters(model, tuple(range(last + 1)), ("mlp.up_proj", "mlp.down_proj")))
    forget = training_examples(load_rows(args.data, "forget"), tokenizer, 256, whole_documents=True)
    retain = training_examples(load_rows(args.data, "retain"), tokenizer, 256)
    with torch.no_grad():
        batches = [cache_prefix(model, b, 0, n) for b, n in paired_batches(forget, retain, 8, 50,
                                                                            tokenizer.pad_token_id)]
    moments = input_moments(model, names, batches, last)
    print(f"{'weight':40}{'forget outside':>16}{'retain outside':>16}{'free dims':>11}")
    for name in names:
        kept = protected(moments[name]["retain"], args.energy)  # one eigendecomposition a weight
        forget_share, retain_share = (outside_share(kept, moments[name][who]) for who in ("forget", "retain"))
        print(f"{name:40}{forget_share:16.3f}{retain_share:16.3f}{len(kept) - kept.shape[1]:11d}")


if __name__ == "__main__":
    main()
