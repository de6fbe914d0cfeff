"""Documents as a loss-based membership attack scores them: batched whole, every token labelled, and each one's mean
token NLL from prefixes cached below the edited layers, as a whole or by token class (``repedit.particulars``).

Calibration scores the forget documents and the unseen texts with these at every check, from the prefixes it cached
once: only the edited layers and the ones above them run again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F

from repedit.data import Example, batches
from repedit.rmu import PrefixBatch, final_hidden, layer_output, row_nll

__all__ = ["class_nlls", "document_batches", "document_nlls"]


def document_batches(texts: list[str], tokenizer, max_length: int, batch_size: int,
                     particular: Callable[[Sequence[int]], list[bool]] | None = None) -> list[dict]:
    """Whole documents with every token labelled, as the membership attack scores them (no EOS, unlike
    ``data.document_examples``, which trains on them), and each token's class where ``particular`` says it."""
    examples = [Example(ids, list(ids), particular=particular(ids) if particular else None)
                for ids in (tokenizer(text)["input_ids"][:max_length] for text in texts)]
    return batches(examples, batch_size, tokenizer.pad_token_id)


@torch.no_grad()
def document_nlls(model, cached: list[PrefixBatch], first: int, layer: int) -> torch.Tensor:
    """Each document's mean token NLL, from cached prefixes (the LM head on real tokens only)."""
    values = []
    for batch in cached:
        every_row = torch.ones(batch.labels.shape[0], dtype=torch.bool, device=batch.labels.device)
        hidden = layer_output(model, batch, first, layer)
        values.append(row_nll(model, hidden, batch, layer, every_row).float().cpu())
    return torch.cat(values)


@torch.no_grad()
def class_nlls(model, cached: list[PrefixBatch], first: int, layer: int) -> torch.Tensor:
    """(N, 3): each document's mean token NLL (``document_nlls``'), then the mean over its particulars and over its
    template tokens (NaN for a class it has none of), from cached prefixes that mark particulars."""
    values = []
    for batch in cached:
        states = final_hidden(model, layer_output(model, batch, first, layer), batch, layer)[:, :-1]
        labels = batch.labels[:, 1:]
        labelled = labels != -100
        nll = torch.zeros(labels.shape, device=labels.device)
        nll[labelled] = F.cross_entropy(model.lm_head(states[labelled]).float(), labels[labelled], reduction="none")
        particular = cast(torch.Tensor, batch.particular)[:, 1:]
        masks = torch.stack([labelled, labelled & particular, labelled & ~particular])  # (3, B, T - 1)
        values.append(((nll * masks).sum(dim=2) / masks.sum(dim=2)).T.cpu())  # 0 / 0: NaN
    return torch.cat(values)
