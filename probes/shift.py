"""What an edit did to the states, layer by layer: paired comparison and alignment with a vector.

``layer_shift`` compares the same texts through the original and the edited model (cosine of each
state with its counterpart, and the size of the change); ``cosine_to`` measures how far states have
turned towards a vector such as RMU's control vector u.

>>> shift = layer_shift(collect(original, tok, docs), collect(edited, tok, docs))
>>> shift.cosine   # per layer: 1.0 where the edit changed nothing
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from probes.collect import Activations
from probes.record import Record


@dataclass
class LayerShift(Record):
    layers: list[int]
    cosine: list[float]  # mean cosine between a state and the same text's state in the other model
    shift: list[float]  # mean ||after - before||
    relative: list[float]  # shift / mean ||before||


def layer_shift(before: Activations, after: Activations) -> LayerShift:
    """Per layer, how much ``after`` moved from ``before``; both must hold the same texts and pooling."""
    if before.layers != after.layers or before.states.shape != after.states.shape:
        raise ValueError("layer shift: the sets differ in layers or shape; collect the same texts alike")
    cosine = F.cosine_similarity(before.states, after.states, dim=-1).mean(1)  # (L,)
    shift = (after.states - before.states).norm(dim=-1).mean(1)
    relative = shift / before.states.norm(dim=-1).mean(1).clamp(min=1e-12)
    return LayerShift(list(before.layers), cosine.tolist(), shift.tolist(), relative.tolist())


def cosine_to(acts: Activations, vector: torch.Tensor) -> list[float]:
    """Per layer, the mean cosine between each state and ``vector`` (D,)."""
    return F.cosine_similarity(acts.states, vector.float()[None, None, :], dim=-1).mean(1).tolist()
