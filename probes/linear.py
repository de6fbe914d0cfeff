"""Per-layer linear probes: at which layer a logistic regression tells two sets of states apart.

Used for forget vs retain documents, members vs nonmembers, and the original vs the edited model
on the same texts. Accuracy is cross-validated with folds grouped by text, so the tokens of one
document never sit on both sides of a split; the direction is the weight vector of a probe fitted
on everything, mapped back to the residual basis so that it can be used for steering.

>>> result = probe_layers(collect(model, tok, forget_docs), collect(model, tok, retain_docs),
...                       "forget vs retain", "forget", "retain")
>>> result.best().layer, result.direction(result.best().layer)   # (d_model,) unit vector
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from probes.collect import Activations
from probes.record import Record


@dataclass
class LayerProbe:
    layer: int
    accuracy: float  # mean held-out accuracy over the folds
    accuracy_std: float
    direction: list[float]  # unit vector in the residual basis, pointing towards the positive set
    gap: float  # distance between the two sets' mean states along ``direction``: a natural steering scale


@dataclass
class ProbeResult(Record):
    name: str
    positive: str  # label 1
    negative: str  # label 0
    folds: int
    layers: list[LayerProbe]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProbeResult:
        return cls(**{**values, "layers": [LayerProbe(**layer) for layer in values["layers"]]})

    @property
    def accuracies(self) -> list[float]:
        return [probe.accuracy for probe in self.layers]

    def at(self, layer: int) -> LayerProbe:
        for probe in self.layers:
            if probe.layer == layer:
                return probe
        probed = [probe.layer for probe in self.layers]
        raise ValueError(f"{self.name}: layer {layer} was not probed; probed: {probed}")

    def best(self) -> LayerProbe:
        """The most accurate layer; the earliest among ties."""
        return max(self.layers, key=lambda probe: (probe.accuracy, -probe.layer))

    def earliest(self, tolerance: float = 0.02) -> LayerProbe:
        """The first layer within ``tolerance`` of the best accuracy: where the sets become separable."""
        bar = self.best().accuracy - tolerance
        return next(probe for probe in self.layers if probe.accuracy >= bar)

    def direction(self, layer: int) -> torch.Tensor:
        return torch.tensor(self.at(layer).direction)


def _fit_layer(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int,
               strength: float) -> tuple[float, float, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fresh():
        return make_pipeline(StandardScaler(), LogisticRegression(C=strength, max_iter=2000))

    split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(fresh(), x, y, groups=groups, cv=split)
    probe = fresh().fit(x, y)
    scaler, regression = probe[0], probe[-1]
    weights = regression.coef_[0] / scaler.scale_  # standardized -> residual basis
    size = np.linalg.norm(weights)  # 0 when the two sets are identical
    return float(scores.mean()), float(scores.std()), weights / size if size > 0 else weights


def probe_layers(positive: Activations, negative: Activations, name: str = "",
                 positive_name: str = "positive", negative_name: str = "negative", folds: int = 5,
                 seed: int = 0, paired: bool = False, strength: float = 1.0) -> ProbeResult:
    """Fit one logistic regression per layer separating ``positive`` (label 1) from ``negative``.

    ``paired``: the two sets are the same texts (original vs edited model), so a text's two versions
    share a fold. ``strength`` is scikit-learn's ``C`` (inverse L2 regularization).
    """
    if positive.layers != negative.layers:
        raise ValueError(f"{name}: the sets hold different layers ({positive.layers} vs {negative.layers})")
    pos_groups = positive.source.numpy()
    neg_groups = negative.source.numpy() + (0 if paired else int(pos_groups.max()) + 1)
    texts = min(len(np.unique(pos_groups)), len(np.unique(neg_groups)))
    if texts < 2:
        raise ValueError(f"{name}: need at least 2 texts on each side to cross-validate, got {texts}")
    folds = min(folds, texts)
    groups = np.concatenate([pos_groups, neg_groups])
    y = np.concatenate([np.ones(len(pos_groups), dtype=int), np.zeros(len(neg_groups), dtype=int)])
    probes = []
    with threadpool_limits(1):  # hundreds of rows per fit: BLAS threads cost more than they save
        for layer in positive.layers:
            pos, neg = positive.at(layer).numpy(), negative.at(layer).numpy()
            accuracy, spread, direction = _fit_layer(np.concatenate([pos, neg]), y, groups, folds, seed,
                                                     strength)
            gap = float((pos.mean(0) - neg.mean(0)) @ direction)
            probes.append(LayerProbe(layer, accuracy, spread, direction.tolist(), gap))
    return ProbeResult(name, positive_name, negative_name, folds, probes)
