"""The retain NLL's layers above L run ahead of a step's passes, rows of like length together (``--retain-nll-tokens``).

At 7B the retain NLL is 70% of the standins preset's step in passes of 8 rows (BENCHMARKS.md, "Seventy-second call"),
for two reasons: a pass of the layers above L cost ~120 ms with half its rows as with all, and a pass pads its rows to
its longest (the train split's retain rows: 73 tokens on average, 333 at most; passes of 8 run 3.0x their real
tokens). The term reaches the edited weights only through h_L, so a step can run those layers before its passes, on
its retain rows sorted by length in passes of at most ``retain_nll_tokens`` tokens (rows x the longest), take the
NLL's gradient g at h_L there, and add g . h_L in each pass: the edited weights get the term's gradient (to rounding:
h_L is computed twice, on differently shaped batches) in fewer, fuller and less padded passes (a budget of 2,048:
3.8 passes a step, 1.4x the real tokens), while the step's own passes keep --micro-batch's memory. At 7B on one H100
the preset's step took 0.82-0.90 s with it against 1.23 s, and 26.0 GiB against 31.6 (BENCHMARKS.md, "Seventy-fourth
call").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from repedit.layers import layer_inputs_for, run_layers
from repedit.rmu import PrefixBatch, retain_nll_rows, row_nll
from repedit.rmu_config import RMUConfig


@dataclass
class RetainAhead:
    """One pass's retain NLL, computed ahead: its rows' summed NLL and the sum's gradient at their h_L."""

    nll_sum: torch.Tensor  # ()
    grad: torch.Tensor  # (B_retain, T, D): 0 on the rows the term does not read and past each row's length

    def term(self, hidden: torch.Tensor) -> torch.Tensor:
        """``nll_sum``'s value, with the gradient the NLL gives the pass's retain rows' h_L (``hidden``)."""
        linear = (self.grad.float() * hidden.float()).sum()
        return self.nll_sum + linear - linear.detach()


def retain_nll_ahead(model: nn.Module, config: RMUConfig, batches: Sequence[PrefixBatch],
                     turn: int) -> list[RetainAhead]:
    """Each of a step's pass ``batches``' retain NLL ahead of the passes, with the edited weights as they are: h_L of
    the rows the term reads (``retain_nll_rows``) without gradient, then the layers above L on those rows longest
    first, each group as many rows as ``config.loss.retain_nll_tokens`` holds at its first (longest) row's length
    (one at least)."""
    first, layer, loss = min(config.layers), config.layer, config.loss
    states, masks, labels, places = [], [], [], []  # one per row read; places: (pass, row among its retain rows)
    with torch.no_grad():
        for j, batch in enumerate(batches):
            n = batch.forget_rows
            rows = retain_nll_rows(batch, loss.retain_nll_stride, turn)[n:].nonzero()[:, 0]
            if len(rows) == 0:
                continue
            mask = batch.mask[n:][rows]
            mask = mask[:, : int(mask.sum(dim=1).max())]
            hidden = run_layers(model, first, layer, batch.hidden[n:][rows, : mask.shape[1]],
                                layer_inputs_for(model, mask))
            for i, row in enumerate(rows.tolist()):
                length = int(mask[i].sum())
                states.append(hidden[i, :length])
                masks.append(mask[i, :length])
                labels.append(batch.labels[n:][row, :length])
                places.append((j, row))
    sums = [torch.zeros((), device=batches[0].mask.device) for _ in batches]
    grads = [torch.zeros_like(batch.hidden[batch.forget_rows :]) for batch in batches]
    order, pad = sorted(range(len(states)), key=lambda i: -len(states[i])), nn.utils.rnn.pad_sequence
    while order:
        count = max(1, loss.retain_nll_tokens // len(states[order[0]]))  # the first row is the group's longest
        group, order = order[:count], order[count:]
        hidden = pad([states[i] for i in group], batch_first=True).requires_grad_()
        mask = pad([masks[i] for i in group], batch_first=True)
        group_labels = pad([labels[i] for i in group], batch_first=True, padding_value=-100)
        every = torch.ones(len(group), dtype=torch.bool, device=mask.device)
        nll = row_nll(model, hidden, PrefixBatch(hidden, layer_inputs_for(model, mask), mask, group_labels), layer,
                      every, loss.chunk)
        (grad,) = torch.autograd.grad(nll.sum(), hidden)
        for k, i in enumerate(group):
            j, row = places[i]
            sums[j] = sums[j] + nll[k].detach()
            grads[j][row, : len(states[i])] = grad[k, : len(states[i])]
    return [RetainAhead(total, grad) for total, grad in zip(sums, grads, strict=True)]
