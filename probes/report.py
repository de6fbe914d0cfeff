"""``repedit probe``: run every probe on a checkpoint (and an edited one) and write JSON and PNGs.

Written to ``out``: ``summary.json`` (the numbers), one JSON per full result (probe directions
included, loadable with ``ProbeResult.load`` and friends) and the plots ``accuracy.png``,
``norms.png``, ``logit_lens.png`` and, with ``compare``, ``shift.png``.

>>> summary = probe_report("target/", "data/", "probes_out/", compare="edited/", mia="data/mia_data")
>>> summary["suggestion"]["options"]   # e.g. "--layers 2,3,4 --coeff 41.2"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from probes.collect import collect
from probes.linear import ProbeResult, probe_layers
from probes.logit_lens import LensResult, logit_lens
from probes.norms import NormStats, norm_stats, rmu_sequences
from probes.plots import accuracy_figure, cosine_figure, lens_figure, norms_figure
from probes.record import Record
from probes.shift import LayerShift, layer_shift
from probes.suggest import suggest_rmu
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import DataError, documents, load_documents, load_rows


def _slug(name: str) -> str:
    return "_".join(name.lower().replace("(", "").replace(")", "").split())


def _mia_documents(mia: Path) -> tuple[list[str], list[str]]:
    files = [mia / "member.jsonl", mia / "nonmember.jsonl"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"--mia: {mia}: missing {', '.join(missing)}")
    return load_documents(files[0]), load_documents(files[1])


def probe_report(model_dir: str | Path, data_dir: str | Path, out: str | Path,
                 compare: str | Path | None = None, mia: str | Path | None = None, beta: float = 5.0,
                 batch_size: int = 8, max_length: int = 512, device: str | None = None) -> dict[str, Any]:
    """Probe ``model_dir`` on the forget/retain set in ``data_dir``; with ``compare``, also the edit."""
    from repedit.runtime import pick_device

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device_, dtype = pick_device(device)
    tokenizer = load_checkpoint_tokenizer(Path(model_dir))
    forget_rows, retain_rows = load_rows(data_dir, "forget"), load_rows(data_dir, "retain")
    texts = {"forget": documents(forget_rows), "retain": documents(retain_rows)}

    def states(model, docs: list[str]):
        return collect(model, tokenizer, docs, pooling="mean", batch_size=batch_size, max_length=max_length)

    def norms_of(model) -> NormStats:
        return norm_stats(model, rmu_sequences(forget_rows, tokenizer, max_length), tokenizer.pad_token_id,
                          batch_size=batch_size)

    model = load_causal_lm(Path(model_dir), dtype, device_)
    original = {split: states(model, docs) for split, docs in texts.items()}
    probes: list[ProbeResult] = [
        probe_layers(original["forget"], original["retain"], "forget vs retain", "forget", "retain")]
    if mia is not None:
        members, nonmembers = _mia_documents(Path(mia))
        probes.append(probe_layers(states(model, members), states(model, nonmembers), "members vs nonmembers",
                                   "member", "nonmember"))
    norms = {"original": norms_of(model)}
    lenses: dict[str, LensResult] = {"original": logit_lens(model, tokenizer, forget_rows + retain_rows,
                                                            batch_size=batch_size)}
    suggestion = suggest_rmu(probes[0], norms["original"], beta, lenses["original"])
    shifts: dict[str, LayerShift] = {}
    if compare is not None:
        del model
        edited_model = load_causal_lm(Path(compare), dtype, device_)
        edited = {split: states(edited_model, docs) for split, docs in texts.items()}
        for split in texts:
            probes.append(probe_layers(edited[split], original[split], f"edited vs original ({split})",
                                       "edited", "original", paired=True))
            shifts[split] = layer_shift(original[split], edited[split])
        norms["edited"] = norms_of(edited_model)
        lenses["edited"] = logit_lens(edited_model, tokenizer, forget_rows + retain_rows,
                                      batch_size=batch_size)

    files: dict[str, Record] = {f"probe_{_slug(p.name)}.json": p for p in probes}
    files.update({f"norms_{k}.json": v for k, v in norms.items()})
    files.update({f"logit_lens_{k}.json": v for k, v in lenses.items()})
    files.update({f"shift_{k}.json": v for k, v in shifts.items()})
    files["suggestion.json"] = suggestion
    for name, record in files.items():
        record.save(out / name)
    figures = {"accuracy.png": accuracy_figure(probes),
               "norms.png": norms_figure(norms, suggestion.target_layer),
               "logit_lens.png": lens_figure(lenses)}
    if shifts:
        layers = next(iter(shifts.values())).layers
        figures["shift.png"] = cosine_figure({k: v.cosine for k, v in shifts.items()}, layers,
                                             "Original vs edited: cosine of paired states")
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=120)

    summary = {
        "model": str(model_dir), "data": str(data_dir), "compare": str(compare) if compare else None,
        "mia": str(mia) if mia else None,
        "probes": {p.name: {"accuracy": p.accuracies, "best_layer": p.best().layer,
                            "best_accuracy": p.best().accuracy} for p in probes},
        "norms": {k: {"mean": v.mean, "std": v.std} for k, v in norms.items()},
        "suggestion": {**suggestion.to_dict(), "options": suggestion.cli_options()},
        "logit_lens": {k: v.summary() for k, v in lenses.items()},
        "shift": {k: v.to_dict() for k, v in shifts.items()},
        "files": sorted([*files, *figures]),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
