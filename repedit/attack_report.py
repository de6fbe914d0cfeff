"""The attack reports as people read them: a table per method, one method x attack table, one figure.

A report is the dict ``Attack.run`` returns; several are keyed by method name (the CLI writes one,
keyed ``unlearned``; ``bench/attack.py`` one per quality-table method). The figure is built without
pyplot (no backend, no global state), as ``probes.plots`` builds its figures.

>>> write_report({"rmu": report}, Path("runs/attack"))   # attack.json, attack.txt, attack.png
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

MEASURES = ("regurgitation", "qa", "nll")  # what each attack is measured by

LABELS = {"regurgitation": "regurgitation", "qa": "QA", "nll": "NLL", "answer_top1": "lens top-1"}


def _cell(value: float | None, width: int = 9) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.3f}"


def format_table(report: Mapping) -> str:
    """One method: each attack's measures on the probed documents and the fraction recovered."""
    documents = report["documents"]
    header = "".join(f"{LABELS[m]:>9}{'recov.':>9}" for m in MEASURES)
    lines = [f"probed forget documents: {len(documents['probed'])} (known to the relearning attacker: "
             f"{len(documents['known'])}); recovered = (attacked - unlearned) / (original - unlearned)",
             f"{'model / attack':<20}{header}"]
    for name in ("original", "unlearned"):
        lines.append(f"{name:<20}" + "".join(f"{_cell(report[name][m])}{'':>9}" for m in MEASURES))
    for name, result in report["attacks"].items():
        if name == "lens":
            continue
        lines.append(f"{name:<20}" + "".join(f"{_cell(result['measures'][m])}{_cell(result['recovered'][m])}"
                                              for m in MEASURES))
        control = result.get("oracle")
        if control:
            lines.append(f"{'  oracle control':<20}" + "".join(
                f"{_cell(control['after'][m])}{_cell(control['recovered'][m])}" for m in MEASURES))
        if result.get("unseen_nll"):
            unseen = result["unseen_nll"]
            lines.append(f"  unseen documents' NLL: {unseen['before']:.3f} -> {unseen['after']:.3f}")
    lens = report["attacks"].get("lens")
    if lens:
        lines.append(f"logit lens, answer's first token top-1: original {lens['original']['answer_top1']:.3f}, "
                     f"unlearned {lens['unlearned']['answer_top1']:.3f}, unlearned at layer {lens['best_layer']} "
                     f"{lens['measures']['answer_top1']:.3f}; recovered{_cell(lens['recovered']['answer_top1'])}")
    headroom = ", ".join(f"{LABELS[m]} {report['headroom'][m]:+.3f}" for m in MEASURES)
    lines.append(f"headroom (original - unlearned): {headroom}; n/a: too little headroom for a fraction")
    return "\n".join(lines)


def recovered_rows(reports: Mapping[str, Mapping]) -> dict[str, dict[str, dict[str, float | None]]]:
    """method -> attack -> measure -> recovered fraction; relearning's oracle control as an attack."""
    rows: dict[str, dict[str, dict[str, float | None]]] = {}
    for method, report in reports.items():
        rows[method] = {}
        for name, result in report["attacks"].items():
            rows[method][name] = dict(result["recovered"])
            if result.get("oracle"):
                rows[method][f"{name}-oracle"] = dict(result["oracle"]["recovered"])
    return rows


def format_summary(reports: Mapping[str, Mapping]) -> str:
    """Method x attack: the recovered fractions regurgitation/QA/NLL (the lens: its top-1 only)."""
    rows = recovered_rows(reports)
    attacks = list(dict.fromkeys(name for attacks in rows.values() for name in attacks))
    cells = {method: ["/".join("n/a" if v is None else f"{v:.3f}" for v in recovered[a].values())
                      if a in recovered else "-" for a in attacks] for method, recovered in rows.items()}
    width = max(len(c) for c in [*attacks, *(c for row in cells.values() for c in row)]) + 2  # "-0.098" too
    lines = ["recovered fraction per attack: regurgitation/QA/NLL (lens: answer top-1); n/a: no headroom",
             f"{'method':<16}" + "".join(f"{a:>{width}}" for a in attacks)]
    for method, row in cells.items():
        lines.append(f"{method:<16}" + "".join(f"{c:>{width}}" for c in row))
    return "\n".join(lines)


def recovered_figure(reports: Mapping[str, Mapping]) -> Figure:
    """Bars of the recovered fraction, one panel per measure, attacks along x, one bar per method."""
    rows = recovered_rows(reports)
    measures = [*MEASURES, "answer_top1"]
    figure = Figure(figsize=(12.0, 4.0), layout="constrained")
    panels = figure.subplots(1, len(measures), sharey=True, width_ratios=[3] * len(MEASURES) + [1])  # lens: 1 bar
    for axes, measure in zip(panels, measures, strict=True):
        attacks = list(dict.fromkeys(a for r in rows.values() for a, v in r.items() if measure in v))
        width = 0.8 / max(1, len(rows))
        for k, (method, recovered) in enumerate(rows.items()):
            values = [recovered.get(a, {}).get(measure) for a in attacks]
            heights = [float("nan") if v is None else v for v in values]  # no bar where there is no headroom
            axes.bar([i + k * width for i in range(len(attacks))], heights, width, label=method)
        axes.set_xticks([i + 0.4 - width / 2 for i in range(len(attacks))], attacks, rotation=45, ha="right")
        axes.axhline(0.1, color="grey", linestyle=":")  # the recommended method's goal
        axes.set(title=LABELS[measure], ylabel="recovered fraction")
        axes.grid(alpha=0.3, axis="y")
    panels[0].legend()
    return figure


def write_report(reports: Mapping[str, Mapping], out: Path) -> Path:
    """``attack.json`` (every figure), ``attack.txt`` (the tables, also printed) and ``attack.png``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "attack.json").write_text(json.dumps(reports, indent=2) + "\n")
    text = "\n\n".join([*(f"{method}\n{format_table(r)}" for method, r in reports.items()), format_summary(reports)])
    (out / "attack.txt").write_text(text + "\n")
    print(text)
    recovered_figure(reports).savefig(out / "attack.png", dpi=120)
    return out
