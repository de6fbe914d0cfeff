"""OLMo decoder layers by name, and "the output of layer i", defined once.

Since transformers 4.54 a decoder layer returns a tensor; before, a tuple whose first element is the
hidden state. ``hidden_of`` is the only place that tells the two apart: indexing ``output[0]`` on a
tensor would silently take batch element 0.

"The output of layer i" is the residual stream after decoder layer i: ``output_hidden_states[i + 1]``
of the model (index 0 is the embedding output), except for the last layer, whose entry transformers
reports after the final norm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, cast

import torch
from torch import nn

LAYER_PATH = "model.layers.{}"


def hidden_of(output) -> torch.Tensor:
    """The hidden state in a decoder layer's output, tuple (transformers < 4.54) or tensor."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output, hidden: torch.Tensor):
    """``output`` with its hidden state replaced, keeping its tuple-or-tensor form."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def base_model(model: nn.Module) -> nn.Module:
    """The decoder stack: ``model.model`` of a causal LM, or the model itself if it is the base."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "layers") else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return cast(nn.ModuleList, base_model(model).layers)


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def check_layer_indices(model: nn.Module, layers: Sequence[int], option: str = "--layers") -> None:
    """Raise a ValueError naming ``option`` if a layer index is outside the model."""
    count = num_layers(model)
    bad = [i for i in layers if not 0 <= i < count]
    if bad:
        raise ValueError(f"{option}: layer(s) {bad} out of range; the model has layers 0..{count - 1}")


@contextmanager
def capture_outputs(model: nn.Module, layers: Sequence[int], detach: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Record the output hidden state of each named layer during forward passes inside the block.

    >>> with capture_outputs(model, [5, 7]) as hidden:
    ...     model(input_ids)
    >>> hidden[7].shape   # (batch, seq, d_model)
    """
    captured: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for index in layers:
            def hook(_module, _args, output, index=index):
                hidden = hidden_of(output)
                captured[index] = hidden.detach() if detach else hidden

            handles.append(decoder_layers(model)[index].register_forward_hook(hook, prepend=True))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def edit_outputs(model: nn.Module, layers: Sequence[int],
                 edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace each named layer's output hidden state h (B, T, D) by ``edit(h)`` inside the block."""
    check_layer_indices(model, layers)

    def hook(_module, _args, output):
        return with_hidden(output, edit(hidden_of(output)))

    handles = []
    try:
        for index in layers:
            handles.append(decoder_layers(model)[index].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted activations are read."""


@contextmanager
def stop_after(model: nn.Module, layer: int) -> Iterator[None]:
    """End forward passes right after ``layer``: the layers above it are never computed.

    Pair it with ``capture_outputs`` (whose hooks run first) to read layer ``layer`` at the cost of
    only the layers up to it.
    """

    def hook(_module, _args, _output):
        raise _StopForward

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield
    except _StopForward:
        pass
    finally:
        handle.remove()


@contextmanager
def capture_layer_inputs(model: nn.Module, layer: int) -> Iterator[list[tuple[torch.Tensor, dict]]]:
    """Record what the model feeds decoder layer ``layer`` (hidden state and keyword arguments), then
    stop the forward pass there.

    The keyword arguments (attention mask, rotary position embeddings, position ids) are whatever this
    transformers version passes, so the layers above can later be run on their own with exactly the
    model's inputs. Each forward pass inside the block appends one (hidden, kwargs) pair.
    """
    records: list[tuple[torch.Tensor, dict]] = []

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        records.append((hidden.detach(), {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _StopForward

    handle = decoder_layers(model)[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield records
    finally:
        handle.remove()


def run_prefix(model: nn.Module, layer: int, **inputs) -> tuple[torch.Tensor, dict]:
    """Run the model up to (not including) decoder layer ``layer``; return that layer's input."""
    with capture_layer_inputs(model, layer) as records, suppress(_StopForward):
        model(**inputs, use_cache=False)
    return records[0]


def layer_inputs_for(model: nn.Module, attention_mask: torch.Tensor) -> dict:
    """What the model feeds a decoder layer besides the hidden state (causal mask, positions) for a batch with
    this attention mask, which is all they depend on: built by the model itself, as this transformers version
    builds them, so that a subset of a cached batch's rows can run the layers on its own. Zero embeddings of the
    model's dtype (its last layer's, never released) stand in for the tokens: the embedding may be released
    (``release_prefix``)."""
    dtype = next(decoder_layers(model)[-1].parameters()).dtype
    hidden_size: int = cast(Any, model.config).hidden_size
    embeds = torch.zeros(*attention_mask.shape, hidden_size, dtype=dtype, device=attention_mask.device)
    with torch.no_grad():
        return run_prefix(model, 0, inputs_embeds=embeds, attention_mask=attention_mask)[1]


def run_layers(model: nn.Module, start: int, stop: int, hidden: torch.Tensor, layer_kwargs: dict) -> torch.Tensor:
    """Run decoder layers ``start``..``stop`` (inclusive) on ``hidden``; return the output of ``stop``."""
    layers = decoder_layers(model)
    for index in range(start, stop + 1):
        hidden = hidden_of(layers[index](hidden, **layer_kwargs))
    return hidden


def release_prefix(model: nn.Module, first_layer: int) -> None:
    """Free the embeddings and decoder layers ``0..first_layer-1`` (moved to the ``meta`` device).

    Once every batch is cached as it enters ``first_layer`` they are never run again; at 7B this is
    the difference between a plain RMU edit fitting a small GPU or not. The model can then only run
    layers ``first_layer..`` on cached inputs (``run_layers``).
    """
    base = base_model(model)
    for module in (base.embed_tokens, *decoder_layers(model)[:first_layer]):
        cast(nn.Module, module).to("meta")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
