"""Documents as a loss-based membership attack scores them: batched whole, every token labelled, and each one's mean
token NLL from prefixes cached below the edited layers.

Calibration scores the forget documents and the unseen texts with these at every check, from the prefixes it cached
once: only the edited layers and the ones above them run again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from repedit.data import Example, batches
from repedit.rmu import PrefixBatch, cache_prefix, layer_output, row_nll

__all__ = ["ScoredDocuments", "cache_documents", "document_batches", "document_nlls"]


def scored_examples(texts: list[str], tokenizer, max_length: int) -> list[Example]:
    """Whole documents with every token labelled, as the membership attack scores them (no EOS, unlike
    ``data.document_examples``, which trains on them)."""
    return [Example(ids, list(ids)) for ids in (tokenizer(text)["input_ids"][:max_length] for text in texts)]


def document_batches(texts: list[str], tokenizer, max_length: int, batch_size: int) -> list[dict]:
    """``scored_examples`` batched in the order given: an anchor's batches, which a run cycles through."""
    return batches(scored_examples(texts, tokenizer, max_length), batch_size, tokenizer.pad_token_id)


@dataclass
class ScoredDocuments:
    """Documents cached as they enter the first edited layer, batched shortest first, so that a batch holds texts
    of about one length and a check runs the layers above on little padding (a third fewer tokens on the
    challenge's forget documents); ``order``: each cached row's index in the texts given."""

    batches: list[PrefixBatch]
    order: list[int]

    def in_given_order(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row values in batch order (``document_nlls`` of ``batches``), put back in the texts' order."""
        given = torch.empty_like(values)
        given[self.order] = values
        return given


def cache_documents(model, texts: list[str], tokenizer, max_length: int, batch_size: int,
                    first: int) -> ScoredDocuments:
    """``texts`` as ``ScoredDocuments`` entering decoder layer ``first``."""
    examples = scored_examples(texts, tokenizer, max_length)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    cached = [cache_prefix(model, b, first) for b in batches([examples[i] for i in order], batch_size,
                                                              tokenizer.pad_token_id)]
    return ScoredDocuments(cached, order)


@torch.no_grad()
def document_nlls(model, cached: list[PrefixBatch], first: int, layer: int) -> torch.Tensor:
    """Each document's mean token NLL, from cached prefixes (the LM head on real tokens only)."""
    values = []
    for batch in cached:
        every_row = torch.ones(batch.labels.shape[0], dtype=torch.bool, device=batch.labels.device)
        hidden = layer_output(model, batch, first, layer)
        values.append(row_nll(model, hidden, batch, layer, every_row).float().cpu())
    return torch.cat(values)
