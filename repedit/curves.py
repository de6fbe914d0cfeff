"""The loss and calibration curves of a run, as a PNG beside its ``unlearn_log.jsonl``."""

from __future__ import annotations

from pathlib import Path


def run_steps(losses: list[dict]) -> tuple[list[int], dict[int, int]]:
    """Each logged step's place in the run, and each round's steps before it: a repaired run's edits
    (``--repair-rounds``) each count their steps from 1, so each is placed after the edits before it."""
    offsets: dict[int, int] = {}
    for place, record in enumerate(losses):
        offsets.setdefault(record.get("round", 0), place)
    return [offsets[r.get("round", 0)] + r["step"] for r in losses], offsets


def curves_figure(result):
    """Each logged loss term by step (log scale; a dotted line where a repair ran) and, for a calibrated run, the
    forget documents' NLL against the unseen texts' level and each task's attack AUC (a repaired run's: its last
    edit's checks, where they ran)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    panels = 2 if result.calibration else 1
    figure = Figure(figsize=(6 * panels, 4))
    axes = figure.subplots(1, panels, squeeze=False)[0]
    steps, offsets = run_steps(result.losses)
    skip = {"step", "seconds", "epoch", "chunk", "forget_nll", "round"}
    for name in sorted({k for r in result.losses for k in r} - skip):
        values = [(s, r[name]) for s, r in zip(steps, result.losses, strict=True) if name in r and r[name] > 0]
        if values:
            axes[0].plot(*zip(*values, strict=True), label=name)
    for start in sorted(offsets.values())[1:]:
        axes[0].axvline(start + 0.5, color="grey", ls=":")
    axes[0].set(xlabel="step", ylabel="loss term", yscale="log", title=f"{result.method}: losses")
    axes[0].legend(fontsize="small")
    if result.calibration:
        checks, last = result.calibration, offsets.get(max(offsets, default=0), 0)
        at = [last + c["step"] for c in checks]
        axes[1].plot(at, [c["forget_nll"] for c in checks], label="forget documents' mean NLL")
        axes[1].plot(at, [c["target_nll"] for c in checks], "--", label="unseen texts' level")
        axes[1].set(xlabel="step", ylabel="NLL (nats)", title="calibration" + (", the last edit" if last else ""))
        auc = axes[1].twinx()
        for task in sorted({t for c in checks for t in c.get("task_auc", {})}):
            auc.plot(at, [c.get("task_auc", {}).get(task) for c in checks], ":", label=f"{task} attack AUC")
        auc.set_ylabel("attack AUC (0.5: chance)")
        axes[1].legend(fontsize="small", loc="upper left")
        auc.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    return figure


def plot_curves(result, path: str | Path) -> Path:
    """``curves_figure`` written to ``path`` as a PNG. Returns ``path``."""
    curves_figure(result).savefig(path, dpi=100)
    return Path(path)
