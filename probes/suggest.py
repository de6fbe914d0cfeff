"""Suggested RMU layers and coefficient, read off the probes (a heuristic, stated in ``reason``).

RMU misdirects the output of a target layer L on forget text and trains layers L-2..L. L should be
a layer where forget text is already linearly identifiable (the forget-vs-retain probe is within
``tolerance`` of its best accuracy), and, when the logit lens shows where forget answers become the
top prediction (layer e), no later than needed: L = e - 1 is the last residual before the answer is
readable. The later of the two wins, clamped so that L-2..L exist. The coefficient is adaptive RMU's:
``beta * mean ||h_L||`` on the forget rows (``NormStats.coeff``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from probes.linear import ProbeResult
from probes.logit_lens import LensResult
from probes.norms import NormStats
from probes.record import Record


@dataclass
class RMUSuggestion(Record):
    layers: list[int]  # edited layers, the last one the target
    target_layer: int
    beta: float
    coeff: float
    reason: str

    def cli_options(self) -> str:
        """The ``repedit unlearn`` options this suggests."""
        return f"--layers {','.join(map(str, self.layers))} --coeff {self.coeff:.4g}"


def forget_emergence(lens: LensResult) -> float | None:
    """Median layer at which forget answers become, and stay, the top prediction; None if none do."""
    layers = [row.emerges(lens.layers) for row in lens.rows if row.split == "forget"]
    emerged = [layer for layer in layers if layer is not None]
    return statistics.median(emerged) if emerged else None


def suggest_rmu(probe: ProbeResult, norms: NormStats, beta: float = 5.0, lens: LensResult | None = None,
                width: int = 3, tolerance: float = 0.02) -> RMUSuggestion:
    separable = probe.earliest(tolerance)
    target = separable.layer
    reason = f"{probe.name} probe reaches {separable.accuracy:.2f} at layer {separable.layer}"
    emergence = forget_emergence(lens) if lens is not None else None
    if emergence is not None:
        reason += f"; forget answers emerge at layer {emergence:g}"
        target = max(target, int(emergence) - 1)
    top = max(norms.layers)
    target = min(max(target, width - 1), top)
    layers = list(range(target - width + 1, target + 1))
    return RMUSuggestion(layers, target, beta, norms.coeff(beta, target), reason)
