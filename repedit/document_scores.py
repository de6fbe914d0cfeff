"""Documents as a loss-based membership attack scores them: batched whole, every token labelled, and each one's mean
token NLL from prefixes cached below the edited layers.

Calibration scores the forget documents and the unseen texts with these at every check, from the prefixes it cached
once: only the edited layers and the ones above them run again.
"""

from __future__ import annotations

import torch

from repedit.data import Example, batches
from repedit.rmu import PrefixBatch, layer_output, row_nll

__all__ = ["document_batches", "document_nlls"]


def document_batches(texts: list[str], tokenizer, max_length: int, batch_size: int) -> list[dict]:
    """Whole documents with every token labelled, as the membership attack scores them (no EOS, unlike
    ``data.document_examples``, which trains on them)."""
    examples = [Example(ids, list(ids)) for ids in (tokenizer(text)["input_ids"][:max_length] for text in texts)]
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
