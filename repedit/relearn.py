"""Fine-tuning attacks: relearn a few forget documents, or tune on harmless text, and see what returns.

Knowledge that was only hidden comes back for documents the attacker never showed the model:
relearning a few forget facts restored 88% of the others (arXiv 2410.08827), and fine-tuning on a
few unrelated examples undid most of RMU (arXiv 2409.18025). The attack is plain: all parameters,
AdamW, a fixed number of steps over a seeded stream of batches, no schedule, nothing clever, so that
what it recovers says something about the model and not about the attack.

>>> known, probed = split_documents(forget_rows, fraction=0.1, seed=0)
>>> finetune(model, training_examples(known, tokenizer, whole_documents=True), FinetuneConfig())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from repedit.data import Example, Row, collate


@dataclass(frozen=True)
class FinetuneConfig:
    """The attacker's budget; the defaults are those that undid the sim's unlearning (issue #19)."""

    steps: int = 30
    lr: float = 1e-4
    batch_size: int = 8
    seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be at least 1")
        if self.lr <= 0:
            raise ValueError("--lr: must be positive")


def split_documents(rows: Sequence[Row], fraction: float, seed: int,
                    known: int | None = None) -> tuple[list[Row], list[Row]]:
    """(known, probed): the rows of a seeded ``fraction`` of the documents (or of ``known`` of them), and those of
    the rest.

    A document's sentence completion and its questions stay together, so no probed answer is ever
    trained on. At least one document is known and one probed. ``known`` fixes the attacker's count across
    forget sets of different sizes: a tenth of the sim's train split is 34 documents, of validation's 8, and
    relearning on more gives back more (BENCHMARKS.md, seventieth call).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"--relearn-fraction: {fraction} must be between 0 and 1")
    ids = sorted({row.document_id for row in rows})
    if len(ids) < 2:
        raise ValueError(f"--forget: {len(ids)} document(s); relearning needs at least 2 (one known, one probed)")
    if known is not None and not 1 <= known < len(ids):
        raise ValueError(f"--relearn-known: {known}, and the forget set holds {len(ids)} documents: the attacker "
                         f"knows 1 to {len(ids) - 1}, the rest are probed")
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    count = known if known is not None else min(len(ids) - 1, max(1, round(fraction * len(ids))))
    chosen = {ids[i] for i in order[:count]}
    return [r for r in rows if r.document_id in chosen], [r for r in rows if r.document_id not in chosen]


def finetune(model: nn.Module, examples: Sequence[Example], config: FinetuneConfig, pad_token_id: int,
             desc: str = "finetune") -> list[float]:
    """Train every parameter of ``model`` in place on ``examples``; returns the loss of each step.

    Batches are drawn from seeded passes over the examples, each pass in a fresh order, so a step
    count larger than one pass is fine. The model is left in eval mode.
    """
    config.validate()
    if not examples:
        raise ValueError(f"{desc}: no training examples")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    queue: list[int] = []
    losses = []
    model.train()
    try:
        for _ in tqdm(range(config.steps), desc=desc, leave=False):
            while len(queue) < config.batch_size:
                queue += torch.randperm(len(examples), generator=generator).tolist()
            picked, queue = queue[: config.batch_size], queue[config.batch_size :]
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in picked], pad_token_id).items()}
            loss = model(**batch, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        model.eval()
    return losses
