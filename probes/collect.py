"""Hidden states of many texts at every (or chosen) layer, read through forward hooks or nnsight.

Texts are tokenized as generation and the membership attack see them (the tokenizer's defaults),
right-padded into batches, and each batch runs once; the forward stops after the highest wanted
layer. "The output of layer i" is what ``repedit.layers`` defines (``hidden_of``): by default the
states are read by ``repedit.layers.capture_outputs`` (plain torch hooks, no extra dependency);
``via="nnsight"`` reads the same states through an nnsight trace (``pip install -e .[probes]``).
Pooling respects the attention mask.

>>> acts = collect(model, tokenizer, documents(rows), pooling="mean")
>>> acts.at(5).shape   # (texts, d_model)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from repedit.generate import pad
from repedit.layers import base_model, capture_outputs, check_layer_indices, hidden_of, num_layers, stop_after

Pooling = Literal["mean", "last", "token"]
POOLINGS: tuple[Pooling, ...] = ("mean", "last", "token")
Via = Literal["hooks", "nnsight"]
VIAS: tuple[Via, ...] = ("hooks", "nnsight")


@dataclass(frozen=True)
class Activations:
    """States of a set of texts: ``states[k]`` belongs to layer ``layers[k]``.

    With ``mean`` or ``last`` pooling there is one row per text; with ``token`` one row per real
    (non-pad) token, and ``source`` says which text each row came from.
    """

    layers: tuple[int, ...]
    states: torch.Tensor  # (n_layers, rows, d_model), float32 on CPU
    source: torch.Tensor  # (rows,) index of the text a row came from
    pooling: Pooling

    def at(self, layer: int) -> torch.Tensor:
        """(rows, d_model) states of ``layer``."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not collected; collected: {list(self.layers)}")
        return self.states[self.layers.index(layer)]


def resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> tuple[int, ...]:
    """``layers`` checked against the model; None means every decoder layer."""
    chosen = tuple(range(num_layers(model))) if layers is None else tuple(layers)
    check_layer_indices(model, chosen)
    return chosen


def _trace(wrapped, stack, layers: tuple[int, ...], input_ids: torch.Tensor,
           attention_mask: torch.Tensor) -> list:
    """One nnsight trace of ``wrapped`` reading ``stack[i].output``; the layers above the highest
    wanted one are never run. nnsight wants modules in execution order, hence the sorting.
    """
    saved = []
    with wrapped.trace(input_ids=input_ids, attention_mask=attention_mask, use_cache=False) as tracer:
        for index in sorted(layers):
            saved.append(stack[index].output.save())
        tracer.stop()
    by_layer = dict(zip(sorted(layers), saved, strict=True))
    return [by_layer[index] for index in layers]


def _hooked(model: nn.Module, layers: tuple[int, ...], input_ids: torch.Tensor,
            attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """One forward pass with ``capture_outputs`` hooks, stopped after the highest wanted layer."""
    with capture_outputs(model, layers) as hidden, stop_after(model, max(layers)):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return [hidden[index] for index in layers]


def _nnsight_reader(model: nn.Module):
    """A function like ``_hooked`` that traces through nnsight, imported only here (it patches torch
    objects on import)."""
    try:
        from nnsight import NNsight
    except ImportError:
        raise ImportError("collect(via='nnsight') needs nnsight: pip install -e .[probes]") from None
    wrapped = NNsight(model)
    stack = wrapped.layers if base_model(model) is model else wrapped.model.layers  # the decoder layers
    return lambda _model, layers, ids, mask: _trace(wrapped, stack, layers, ids, mask)


@torch.no_grad()
def layer_batches(model: nn.Module, sequences: Sequence[Sequence[int]], pad_id: int,
                  layers: Sequence[int] | None = None, batch_size: int = 8, via: Via = "hooks",
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch of token sequences: ``(hidden, mask)``, hidden (n_layers, B, T, D) float32 on CPU,
    mask (B, T) with 1 on real tokens. Consumers that only reduce (norms) never hold every state.
    """
    if via not in VIAS:
        raise ValueError(f"via: {via!r} is not one of {VIAS}")
    chosen = resolve_layers(model, layers)
    read = _nnsight_reader(model) if via == "nnsight" else _hooked
    device = next(model.parameters()).device
    for start in range(0, len(sequences), batch_size):
        ids, mask = pad(sequences[start : start + batch_size], pad_id, "right")
        outputs = read(model, chosen, ids.to(device), mask.to(device))
        hidden = torch.stack([hidden_of(output).float().cpu() for output in outputs])  # (L, B, T, D)
        yield hidden, mask


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> tuple[torch.Tensor, torch.Tensor]:
    """``(states, row_of_batch)`` from hidden (L, B, T, D) and a right-padded mask (B, T).

    ``mean``: mean over real tokens; ``last``: the last real token; ``token``: every real token.
    """
    if pooling == "mean":
        weights = mask.to(hidden.dtype)[None, :, :, None]  # (1, B, T, 1)
        return (hidden * weights).sum(2) / weights.sum(2).clamp(min=1), torch.arange(mask.shape[0])
    if pooling == "last":
        last = mask.sum(1) - 1  # right padding: the last real token of each row
        return hidden[:, torch.arange(mask.shape[0]), last], torch.arange(mask.shape[0])
    if pooling == "token":
        real = mask.bool()
        return hidden[:, real], real.nonzero()[:, 0]
    raise ValueError(f"pooling: {pooling!r} is not one of {POOLINGS}")


def collect_ids(model: nn.Module, sequences: Sequence[Sequence[int]], pad_id: int,
                layers: Sequence[int] | None = None, pooling: Pooling = "mean",
                batch_size: int = 8, via: Via = "hooks") -> Activations:
    """Pooled states of already tokenized sequences (for inputs that must match another pipeline's)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling: {pooling!r} is not one of {POOLINGS}")
    if not sequences:
        raise ValueError("collect: no texts given")
    chosen = resolve_layers(model, layers)
    parts, sources, offset = [], [], 0
    for hidden, mask in layer_batches(model, sequences, pad_id, chosen, batch_size, via):
        states, rows = pool(hidden, mask, pooling)
        parts.append(states)
        sources.append(rows + offset)
        offset += mask.shape[0]
    return Activations(chosen, torch.cat(parts, dim=1), torch.cat(sources), pooling)


def encode(tokenizer, texts: Sequence[str], max_length: int = 512) -> list[list[int]]:
    """Token ids as generation and the membership attack see a text: the tokenizer's defaults."""
    return [tokenizer(text)["input_ids"][:max_length] for text in texts]


def collect(model: nn.Module, tokenizer, texts: Sequence[str], layers: Sequence[int] | None = None,
            pooling: Pooling = "mean", batch_size: int = 8, max_length: int = 512,
            via: Via = "hooks") -> Activations:
    """Pooled states of ``texts`` at ``layers`` (default: every decoder layer), read through ``via``."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return collect_ids(model, encode(tokenizer, texts, max_length), pad_id, layers, pooling, batch_size, via)
