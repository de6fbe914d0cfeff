"""A sweep's results: how they rank, one line each as they arrive, and the files left in its folder
(``results.json``, ``results.csv``, ``pareto.png``, ``best_config.json``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from repedit.grid import INPUT
from repedit.methods import config_from_dict


def rank(result: dict) -> tuple[float, float]:
    """What results are ranked by: the official score when evaluated, else the proxy; ties (often at
    0, the harmonic mean's floor) go to the higher mean of the proxy's task terms."""
    first = result["score"] if result.get("score") is not None else result["proxy"]["final"]
    return first, result["proxy"]["mean"]


def result_line(result: dict) -> str:
    if result["status"] != "ok":
        return f"{result['name']} ({result['label']}): {result['status']}: {result['error']}"
    proxy = result["proxy"]
    score = f", score {result['score']:.4f}" if result.get("score") is not None else ""
    return (f"{result['name']} ({result['label']}): proxy {proxy['final']:.4f} "
            f"(forget {proxy['forget']:.3f}, retain {proxy['retain']:.3f}){score}, {result['seconds']:.1f} s")


def _row(result: dict) -> dict:
    """A flat row of the results table."""
    proxy = result.get("proxy") or {}
    row = {key: result.get(key) for key in ("name", "label", "status", "score")}
    for key, value in proxy.items():  # per-task values (task_mia_auc) get a column each
        if key != "terms":
            row.update({f"proxy_{key} {k}": v for k, v in value.items()} if isinstance(value, dict)
                       else {f"proxy_{key}": value})
    row.update(proxy.get("terms", {}))
    timing = ("steps", "stopped", "seconds", "train_seconds", "score_seconds", "device", "card", "error",
              "first_error")
    row.update({key: result.get(key) for key in timing})
    row["config"] = json.dumps(result["config"]) if result["config"] is not None else ""
    return row


def write_results(out: Path, results: Sequence[dict], best: dict | None) -> None:
    """``results.json`` (everything), ``results.csv`` (flat), ``pareto.png`` and ``best_config.json``."""
    summary = {"best": best and best["name"], "results": list(results)}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_rows(out, results)
    plot_pareto(results, best, out / "pareto.png")
    if best is not None:
        config = asdict(config_from_dict(dict(best["config"])))
        (out / "best_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_rows(out: Path, results: Sequence[dict]) -> None:
    """``results.csv``: one flat row a run (``quality.py tune --previous`` reads it back), written aside, then
    renamed, so a reader never finds half a file."""
    rows = [_row(r) for r in results]
    part = out / ".results.csv"
    with open(part, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    part.replace(out / "results.csv")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximized)."""
    return [i for i, (x, y) in enumerate(points)
            if not any(a >= x and b >= y and (a, b) != (x, y) for a, b in points)]


def plot_pareto(results: Sequence[dict], best: dict | None, path: Path) -> None:
    """Forgetting (mean forget term) against keeping (mean retain term); the front joined, the best
    starred, the input model crossed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in results if r["status"] == "ok"]
    points = [(r["proxy"]["forget"], r["proxy"]["retain"]) for r in scored]
    figure, axes = plt.subplots(figsize=(6, 5))
    axes.scatter([x for x, _ in points], [y for _, y in points], color="tab:blue", label="runs")
    front = sorted(points[i] for i in pareto_front(points))
    axes.plot([x for x, _ in front], [y for _, y in front], color="tab:orange", label="Pareto front")
    for result, (x, y) in zip(scored, points, strict=True):
        axes.annotate(result["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if result["name"] == INPUT:
            axes.scatter([x], [y], marker="x", color="black", s=60, label="input model")
        if best is not None and result["name"] == best["name"]:
            axes.scatter([x], [y], marker="*", color="tab:red", s=200, label="best")
    axes.set_xlabel("forget: mean of the forget terms, 1 - regurgitation (higher: more forgotten)")
    axes.set_ylabel("retain: mean of the retain terms (higher: more kept)")
    axes.set_title("sweep: proxy terms per configuration")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
