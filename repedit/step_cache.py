"""Each training batch made (``paired_batches``) and cached once, before the first step: its passes as they enter the
first edited layer, the frozen goals its retain rows are held to, and the norm adaptive RMU sets c against, from one
run of the layers (``probes/norms.py`` reads the same norm over any layers)."""

from __future__ import annotations

import torch
from torch import nn

from repedit.data import Example, collate
from repedit.distributed import deal
from repedit.rmu import PrefixBatch, Total, cache_prefix, layer_output, one_process

StepPasses = list[tuple[PrefixBatch, torch.Tensor]]  # a step's passes, each with its retain rows' frozen h_L


def paired_batches(forget: list[Example], retain: list[Example], batch_size: int, count: int,
                   pad_token_id: int, documents: list[int] | None = None,
                   tasks: list[int] | None = None) -> list[tuple[dict[str, torch.Tensor], int]]:
    """Batch j = forget batch j then retain batch j, each set cycling; at most ``count`` batches.

    Both sets keep their answer labels: the retain rows' feed the retain NLL term, the forget rows'
    say which tokens ``forget_tokens`` "answer", "document" and "particulars" misdirect. ``documents`` and
    ``tasks`` (one index per forget example) become each batch's ``documents`` and ``tasks``, and each retain row's
    index in ``retain`` its ``retain_index``. Returns (batch, forget rows).
    """
    n_forget, n_retain = -(-len(forget) // batch_size), -(-len(retain) // batch_size)
    paired = []
    for j in range(min(count, max(n_forget, n_retain))):
        f = (j % n_forget) * batch_size
        r = (j % n_retain) * batch_size
        forget_part = list(forget[f : f + batch_size])
        retain_part = list(retain[r : r + batch_size])
        batch = collate(forget_part + retain_part, pad_token_id)
        batch["retain_index"] = torch.arange(r, r + len(retain_part))
        for name, values in (("documents", documents), ("tasks", tasks)):
            if values is not None:
                batch[name] = torch.tensor(values[f : f + batch_size])
        paired.append((batch, len(forget_part)))
    return paired


def norm_sums(hidden: torch.Tensor, batch: PrefixBatch) -> torch.Tensor:
    """(sum of the L2 norms of ``hidden``, tokens) over the real tokens of ``batch``'s forget rows (all its rows
    where it marks none), in float64 on the CPU, to be summed over batches and processes."""
    rows = slice(0, batch.forget_rows or None)
    mask = batch.mask[rows]
    norms = hidden[rows].float().norm(dim=-1)  # (B, T)
    return torch.stack([(norms * mask).sum(), mask.sum()]).double().cpu()


def mean_norm(sums: torch.Tensor, total: Total = one_process) -> float:
    """The mean norm that ``norm_sums`` summed; ``total`` sums them over processes first."""
    summed, tokens = total(sums).tolist()
    return summed / max(tokens, 1)


@torch.no_grad()
def cached_passes(model: nn.Module, batch: dict[str, torch.Tensor], forget_rows: int, passes: int, first_layer: int,
                  layer: int, every_row: bool = False) -> tuple[StepPasses, torch.Tensor]:
    """A forget+retain batch in ``passes`` passes, each cached as it enters ``first_layer`` with its retain rows'
    frozen h_layer (``every_row``: every row's, the forget rows first, which ``--destination-keep`` projects), and
    ``norm_sums`` of its forget rows' h_layer. The goals are the retain rows' own copy: a view would keep the forget
    rows' activations alive as long as the cache."""
    cached, sums = [], torch.zeros(2, dtype=torch.float64)
    for part, rows in deal(batch, forget_rows, passes):
        if not len(part["input_ids"]):
            continue
        prefix = cache_prefix(model, part, first_layer, rows)
        hidden = layer_output(model, prefix, first_layer, layer)
        sums += norm_sums(hidden, prefix)
        cached.append((prefix, hidden.clone() if every_row else hidden[rows:].clone()))
    return cached, sums
