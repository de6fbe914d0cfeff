"""Figures of the probe results, as ``matplotlib.figure.Figure`` objects.

They are built without pyplot, so they depend on no backend and leave no global state: the CLI
saves them with ``fig.savefig`` and a notebook shows them with ``display(fig)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from probes.linear import ProbeResult
from probes.logit_lens import LensResult
from probes.norms import NormStats


def _axes(title: str, ylabel: str):
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axes = figure.add_subplot()
    axes.set(title=title, xlabel="layer", ylabel=ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def accuracy_figure(results: Sequence[ProbeResult]) -> Figure:
    """Cross-validated probe accuracy by layer, one line per probe (band: one std over folds)."""
    figure, axes = _axes("Linear probe accuracy by layer", "held-out accuracy")
    for result in results:
        layers = [probe.layer for probe in result.layers]
        low = [probe.accuracy - probe.accuracy_std for probe in result.layers]
        high = [probe.accuracy + probe.accuracy_std for probe in result.layers]
        axes.plot(layers, result.accuracies, marker="o", label=result.name)
        axes.fill_between(layers, low, high, alpha=0.15)
    axes.axhline(0.5, color="grey", linestyle=":", label="chance")
    axes.set_ylim(0.0, 1.05)
    axes.legend()
    return figure


def norms_figure(stats: Mapping[str, NormStats], target: int | None = None) -> Figure:
    """Mean per-token L2 norm by layer (band: one std), with RMU's target layer marked."""
    figure, axes = _axes("Activation norm by layer", "||h|| per token")
    for name, stat in stats.items():
        low = [m - s for m, s in zip(stat.mean, stat.std, strict=True)]
        high = [m + s for m, s in zip(stat.mean, stat.std, strict=True)]
        axes.plot(stat.layers, stat.mean, marker="o", label=name)
        axes.fill_between(stat.layers, low, high, alpha=0.15)
    if target is not None:
        axes.axvline(target, color="red", linestyle="--", label=f"suggested target layer {target}")
    axes.legend()
    return figure


def lens_figure(results: Mapping[str, LensResult]) -> Figure:
    """Logit lens: fraction of QA rows whose answer is the top prediction, by layer and group.

    One colour per split/task group; one line style per model (``results`` keys).
    """
    figure, axes = _axes("Logit lens: answer's first token is top-1", "fraction of QA rows")
    styles = ["-", "--", ":", "-."]
    colours: dict[str, str] = {}
    for number, (model_name, result) in enumerate(results.items()):
        for group, rows in result.groups().items():
            colour = colours.setdefault(group, f"C{len(colours)}")
            label = f"{model_name}: {group}" if len(results) > 1 else group
            axes.plot(result.layers, result.hit_rate(rows), color=colour,
                      linestyle=styles[number % len(styles)], marker=".", label=label)
    axes.set_ylim(-0.05, 1.05)
    axes.legend(fontsize="small")
    return figure


def cosine_figure(curves: Mapping[str, Sequence[float]], layers: Sequence[int], title: str) -> Figure:
    """Per-layer cosine curves: original vs edited states (``LayerShift.cosine``), or states against
    RMU's control vector before and after an edit."""
    figure, axes = _axes(title, "mean cosine")
    for name, values in curves.items():
        axes.plot(layers, values, marker="o", label=name)
    axes.legend()
    return figure
