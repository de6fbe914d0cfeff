"""Unlearning quality on a held-out simulated target: settings chosen on train, figures on validation.

One script, its stages each a command that fits one GPU call (the work directory carries over):

- ``build``: the ``sim`` target memorizes the public train + validation sets (general text replayed,
  ``WITHHOLD`` retain documents per task and split withheld as unseen text of each kind), and its
  **retrain oracle** is the same recipe without the validation forget set (perfect unlearning of it),
  trained side by side. The oracle is evaluated on validation here (its forget-document NLLs are kept
  for the KS column: it is not carried further), and the data the later stages read is written: retain
  sets without the withheld documents, the unseen texts for calibration, the validation MIA files.
- ``train-oracle``: the oracle of the *train* forget set (the target's recipe without it) and its NLL of each of
  those documents and of each text the proxy reads as unseen, so the tune's proxy reads the oracle KS too, against
  each model's own unseen level (``bar_shortfall``, ``train_ks``); optional, about the build's time again on one
  GPU, or none beside it (``build --train-oracle``).
- ``tune``: every method's settings are searched on the *train* split with the proxy score, the same
  number of configurations each (``GRIDS``); calibration and the proxy read the *train* withheld
  documents (each of its own kind) and the first half of the public nonmembers, nothing else unseen
  (the proxy all 40 withheld a task where no candidate anchors them: ``proxy_reference``). The grid's
  incumbent stays unless a candidate beats its mean proxy final by more than one standard error, or ties it
  and falls clearly less short of #23's bars on train (``choose``, ``bar_shortfall``).
- ``report``: each method's chosen configuration, and one ablation per term of the RMU recipes, is run
  on the *validation* forget set without retuning and scored: the official terms (the MIA with the
  validation Task3 forget documents as members and the *second* half of the public nonmembers, which
  no stage read before: "official-style"), and the yardstick's columns from ``repedit.collateral`` on
  the *validation* withheld documents: ``unseen NLL``, ``general NLL``, ``all-kind AUC``, ``oracle KS``.
- ``remake``: the report's runs named, made again from their rows (deterministic runs repeat exactly) for the
  stages after the report on a machine that does not have their weights; a run that does not repeat is refused.
- ``train-weights``: the named candidates' runs on train with their weights (``c20`` seed 0, ``c20.s1`` seed 1;
  the tune's, or made again), for ``bench/attack.py``'s relearning on train: what the proxy does not read.
- ``table``: print the table of a report again.

``rmu-withheld`` anchors recombined train retain documents (no unseen document: what a challenge
submission could do) or train's withheld documents beyond the first ``REFERENCE`` a task, which
calibration and the proxy never read (a build with ``--withhold 40 12``: 40 a task from train, 12
from validation); ``rmu-public`` is the same with only what a challenge submission has: the public
nonmembers (Wikipedia biographies) to calibrate against, Task3 alone held to chance, recombined anchors
(BENCHMARKS.md, twelfth call: it forgets stories and PII biographies far past unseen ones).
``report --seeds 3`` runs each chosen configuration and each ablation on three data orders (one
configuration's final spread 0.47-0.70 over nine runs at lr 3e-3, three calls). Anchoring generated
documents instead (``rmu-anchored``, BENCHMARKS.md's second call) protected the challenge's kinds less than
anchoring the calibration texts did, and was removed;
``report --ablations`` names the methods whose ablation rows run, and rows an earlier report wrote to
the work directory stay in the table.

    python bench/quality.py build --work W --mmlu-limit 2000   # 9.5 min on one H200 (--withhold 40 12: rmu-withheld)
    python bench/quality.py tune --work W --workers 8          # 6 min (10 workers run out of memory)
    python bench/quality.py report --work W --workers 10 --mmlu-limit 2000 --out quality.json   # 6.5 min
    python bench/quality.py table --out quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from repedit.assets import data_root, shared_path
from repedit.calibration import unseen_texts
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.cli import report_to_stdout
from repedit.collateral import forget_nll, nll_of, oracle_ks, read_withheld
from repedit.config_fields import nest
from repedit.data import load_documents, load_rows, write_jsonl
from repedit.evaluate import evaluate
from repedit.grid import STEP_LOG
from repedit.membership import MEMBER_FILE
from repedit.methods import config_from_dict, preset
from repedit.proxy import ProxyConfig, reads_own_levels
from repedit.runtime import card_name, pick_device
from repedit.standins import RECOMBINED  # "recombined-anchors" a task, as --calibrate-standins makes them
from repedit.sweep import INPUT, Candidate, expand_grid, rank, sweep
from repedit.synth import recombine_by_task
from repedit.target import trained_general

WITHHOLD = 12  # retain documents per task and split never trained on: unseen text of each kind
REFERENCE = 12  # of train's withheld documents per task, those calibration and the proxy read; the rest
# (a build with ``--withhold 40 12``) are anchors nothing scores: "withheld-anchors"
# trained general passages "general-anchors" holds: on the tiny target of real documents 256 beside the invented
# documents took general text's rise a nat down by about a quarter on two seeds of three (BENCHMARKS.md, CPU section
# "General text in the anchor"); the sim's +2.4-2.7% needs a sixth to a quarter off to reach #23's +2%
GENERAL_ANCHORS = 256
TUNE, REPORT = "train", "validation"
TARGET_ROW = "target (not unlearned)"  # the report's row of the target itself
ORACLE_ROW = "oracle (retrain)"  # the report's row of the retrain oracle
EVAL_BATCH = 256  # prompts per generation batch: a 36 MB model is launch-bound, not memory-bound
GRIDS = Path(__file__).parent / "grids"
PUBLISHED = preset("published")
# Four configurations a method: the sweep budget every method gets. Each run has the same time budget.
RUN_SECONDS = 120.0
GRIDS_BY_METHOD = {
    "rmu-unseen": GRIDS / "rmu-unseen.json",  # the representation edit of #23 (unseen destination, anchor)
    "rmu-withheld": GRIDS / "rmu-withheld.json",  # the same anchoring unseen documents of the challenge's own
    "rmu-public": GRIDS / "rmu-public.json",  # rmu-withheld with only the challenge's own unseen texts
    "rmu-standins": GRIDS / "rmu-standins.json",  # rmu-public with stand-ins of every kind made in the run, and a
    # share of the public nonmembers anchored
    "rmu-ascent": GRIDS / "rmu-ascent.json",  # the ascent preset: the README's recipe before #23 (bounded ascent)
    "graddiff": GRIDS / "graddiff.json",
    "npo": GRIDS / "npo.json",
    "sugd": GRIDS / "sugd.json",
}


def paths(work: Path) -> dict[str, Path]:
    return {"target": work / "sim", "oracle": work / "oracle", "sets": work / "sets",
            "reference": work / "reference.jsonl", "public": work / "reference-public.jsonl",
            "public-tasks": work / "reference-public-tasks.jsonl",  # the same, each with its task (Task3)
            "standins": work / "reference-standins.jsonl",  # bench/standins_cpu.py --write
            "particulars": work / "reference-particulars.jsonl",  # the same with --write-template
            "standin-anchors": work / "anchors-standins.jsonl",  # the same run's --write-anchors
            "particulars-scaled": work / "reference-particulars-scaled.jsonl",  # the same with --scales
            "standin-anchors-scaled": work / "anchors-standins-scaled.jsonl",
            "oracle_nll": work / "oracle_nll.json", "withheld-anchors": work / "anchors-withheld.jsonl",
            "train-oracle": work / "oracle-train",  # ``train-oracle``: the recipe without the train forget set
            "oracle_nll_train": work / "oracle_nll_train.json",  # its NLL of each train forget document and
            # each text the proxy may read as unseen, by text
            "rows": work / "rows", "tuned": work / "tuned.json"}


def shared(name: str) -> Path:
    """``name`` under the data root, or an error that says which variable to set."""
    root = shared_path(name)
    if root is None:
        raise SystemExit(f"no {name} data under {data_root() or 'any data root'}: set REPEDIT_DATA to the folder "
                         "holding semeval25/, general/, mmlu/")
    return root


def semeval() -> Path:
    return shared("semeval25")


# --- build ---


def build(work: Path, seed: int, preset: str, withhold: list[int], mmlu_limit: int | None,
          epochs: int | None, with_train_oracle: bool = False) -> None:
    """Target and oracle trained side by side (one per GPU where there are two), with ``with_train_oracle`` the train
    forget set's oracle beside them (``train_oracle``'s, in the build's own time: the three took 530 s on an H100, the
    two 459 s and the train oracle alone 439 s more), then the data files and the oracle's row (the target's is scored
    by ``report``: the oracle is not carried further)."""
    p, data = paths(work), semeval()
    common = build_flags(seed, preset, withhold, epochs)
    excluded = ["--exclude", str(data / REPORT / "forget.jsonl")]
    train_models(work, {"target": [*common, "--out", str(p["target"])],
                        "oracle": [*common, *excluded, "--out", str(p["oracle"])],
                        **({"train-oracle": train_oracle_flags(common, work)} if with_train_oracle else {})})
    write_sets(work)
    if with_train_oracle:
        score_train_oracle(work)
    oracle = save_row(work, ORACLE_ROW, score(work, p["oracle"], "oracle", mmlu_limit), None)
    p["oracle_nll"].write_text(json.dumps(oracle["collateral"]["forget_nll"]))


def build_flags(seed: int, preset: str, withhold: list[int], epochs: int | None) -> list[str]:
    """``repedit target build``'s flags for the sim's target and its oracles: both splits, general text replayed."""
    data = semeval()
    return ["--preset", preset, "--data", str(data / TUNE), str(data / REPORT), "--withhold", *map(str, withhold),
            "--general", str(shared("general") / "passages.jsonl"), "--mia", str(data / "mia_data"),
            "--seed", str(seed), *(["--epochs", str(epochs)] if epochs else [])]


def train_models(work: Path, jobs: dict[str, list[str]]) -> None:
    """``repedit target build`` once per job, side by side (one per GPU where there are several), each logged."""
    gpus = max(torch.cuda.device_count(), 1)
    running = {}
    for number, (name, flags) in enumerate(jobs.items()):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(number % gpus)} if torch.cuda.is_available() else None
        log = open(work / f"build-{name}.log", "w")  # noqa: SIM115 - closed below
        running[name] = (subprocess.Popen([sys.executable, "-m", "repedit.cli", "target", "build", *flags],
                                          stdout=log, stderr=subprocess.STDOUT, env=env), log)
    for name, (process, log) in running.items():
        code = process.wait()
        log.close()
        print((work / f"build-{name}.log").read_text()[-3000:], flush=True)
        if code != 0:
            raise SystemExit(f"building the {name} failed (exit {code})")


def train_oracle(work: Path) -> None:
    """The retrain oracle of the *train* forget set: the target's recipe (its card's preset, seed, epochs and
    withheld documents) without those documents, and its NLL of each one, by text, for the tune's proxy
    (``oracle_ks``). The build's oracle leaves out validation's forget set, so the tune could not read the KS bar: the
    eighty-first session's c29, made for that bar (validation seed 0: pooled KS 0.23 -> 0.19), tied c20 on train."""
    card = json.loads((paths(work)["target"] / "target_card.json").read_text())
    withheld = card["data"]["withheld"]
    counts = [max(withheld[split]["documents"].values()) for split in (TUNE, REPORT)]
    flags = build_flags(card["seed"], card["preset"], counts, card["recipe"]["epochs"])
    train_models(work, {"train-oracle": train_oracle_flags(flags, work)})
    score_train_oracle(work)


def train_oracle_flags(flags: list[str], work: Path) -> list[str]:
    """``repedit target build``'s flags for the train oracle: the target's ``flags`` without the train forget set."""
    return [*flags, "--exclude", str(semeval() / TUNE / "forget.jsonl"), "--out", str(paths(work)["train-oracle"])]


def score_train_oracle(work: Path) -> None:
    """The train oracle's NLL of each train forget document and of each text the proxy may read as unseen, by text;
    refused for an oracle that withheld other documents than the target (another recipe's, not its oracle)."""
    p = paths(work)
    withheld = json.loads((p["target"] / "target_card.json").read_text())["data"]["withheld"]
    made = json.loads((p["train-oracle"] / "target_card.json").read_text())["data"]["withheld"]
    if any(made[split]["ids"] != withheld[split]["ids"] for split in withheld):
        raise SystemExit(f"train-oracle: {p['train-oracle']} withheld other documents than the target "
                         f"{p['target']}: not its oracle")
    device, dtype = pick_device()
    model = load_causal_lm(p["train-oracle"], dtype, device)
    tokenizer = load_checkpoint_tokenizer(p["train-oracle"])
    folder = p["target"] / "withheld" / TUNE
    nll = forget_nll(model, tokenizer, folder, EVAL_BATCH)
    texts = read_withheld(folder, MEMBER_FILE)  # in the order forget_nll scored them
    scored = {text: value for task in nll for text, value in zip(texts[task], nll[task], strict=True)}
    # every text the proxy may read as unseen (``proxy_reference``), for the KS against each model's own level
    unseen = list(dict.fromkeys(r["text"] for file in (p["reference"], p["withheld-anchors"]) if file.is_file()
                                for r in _records(file)))
    scored.update(zip(unseen, nll_of(model, tokenizer, unseen, "the proxy's reference texts", EVAL_BATCH),
                      strict=True))
    p["oracle_nll_train"].write_text(json.dumps(scored))
    print(f"train-oracle: {sum(map(len, nll.values()))} train forget documents and {len(unseen)} reference texts "
          "scored, mean NLL per task " + ", ".join(f"{task} {statistics.fmean(v):.2f}" for task, v in nll.items()),
          flush=True)


def write_sets(work: Path) -> None:
    """Per split: the forget set, the retain set without its withheld documents (what the target kept),
    and for validation the official-style MIA files; the calibration reference from train."""
    p, data = paths(work), semeval()
    for split in (TUNE, REPORT):
        out = p["sets"] / split
        out.mkdir(parents=True, exist_ok=True)
        unseen = {r["id"] for r in _records(p["target"] / "withheld" / split / "nonmember.jsonl")}
        for name in ("forget", "retain"):
            rows = [r for r in load_rows(data / split, name) if r.document_id not in unseen]
            write_jsonl(out / f"{name}.jsonl", [{"id": r.id, "input": r.input, "output": r.output, "task": r.task}
                                           for r in rows])
    public = load_documents(data / "mia_data" / "nonmember.jsonl")
    half = len(public) // 2
    members = [r.document for r in load_rows(data / REPORT, "forget") if r.kind == "sc" and r.task == "Task3"]
    (p["sets"] / REPORT / "mia").mkdir(exist_ok=True)
    write_jsonl(p["sets"] / REPORT / "mia" / "member.jsonl", [{"id": i, "document": d} for i, d in enumerate(members)])
    write_jsonl(p["sets"] / REPORT / "mia" / "nonmember.jsonl",
           [{"id": i, "document": d} for i, d in enumerate(public[half:])])
    # Calibration and the proxy: the train split's withheld documents, each with its kind, and the first
    # half of the public nonmembers (Wikipedia biographies: Task3's kind).
    train_unseen = _records(p["target"] / "withheld" / TUNE / "nonmember.jsonl")
    order: dict[str, list[str]] = {}  # per task, its withheld documents in the file's order
    for r in train_unseen:
        ids = order.setdefault(r["task"], [])
        if r["id"] not in ids:
            ids.append(r["id"])
    calibrated = {i for ids in order.values() for i in ids[:REFERENCE]}
    texts = [({"text": r["document"], "task": r["task"]}, r["id"] in calibrated) for r in train_unseen]
    write_jsonl(p["reference"],
                [t for t, read in texts if read] + [{"text": d, "task": "Task3"} for d in public[:half]])
    write_jsonl(p["withheld-anchors"], [t for t, read in texts if not read])
    write_jsonl(p["public"], [{"text": d} for d in public[:half]])  # the README recipe's reference before #23
    write_public_tasks(work)


def write_public_tasks(work: Path) -> None:
    """The public nonmembers calibration reads, each with its task, as ``--calibrate-standins`` needs them."""
    p = paths(work)
    write_jsonl(p["public-tasks"], [{"text": r["text"], "task": "Task3"} for r in _records(p["public"])])


def _records(file: Path) -> list[dict]:
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def evaluation_settings(work: Path, mmlu_limit: int | None) -> dict:
    """What every validation row is scored with (``repedit.evaluate``; a sweep's ``evaluate`` takes it too)."""
    p = paths(work)
    return {"data": str(p["sets"] / REPORT), "mia": str(p["sets"] / REPORT / "mia"), "mmlu": str(shared("mmlu")),
            "mmlu_limit": mmlu_limit, "withheld": str(p["target"] / "withheld" / REPORT),
            "general": str(p["target"] / "heldout_general.jsonl")}


def score(work: Path, model_dir: Path, name: str, mmlu_limit: int | None) -> dict:
    """One model's validation evaluation (official-style terms and collateral columns) in this process."""
    settings = evaluation_settings(work, mmlu_limit)
    scores = evaluate(model_dir, settings["data"], work / "evals" / _slug(name), mia_dir=settings["mia"],
                      mmlu_dir=settings["mmlu"], mmlu_limit=mmlu_limit, batch_size=EVAL_BATCH,
                      withheld=settings["withheld"], general=settings["general"])
    return {k: v for k, v in scores.items() if not k.endswith("-set")}


def save_row(work: Path, name: str, scores: dict, oracle_nll: dict | None, extra: dict | None = None) -> dict:
    """A table row: the scores, their collateral columns apart, with the KS distance from the oracle's
    forget-document NLLs (``oracle_ks``, per task and pooled) when given."""
    scores = dict(scores)
    collateral = scores.pop("collateral")
    if oracle_nll is not None:
        collateral["oracle_ks"] = oracle_ks(collateral["forget_nll"], oracle_nll)
    row = {"name": name, "scores": scores, "collateral": collateral, **(extra or {})}
    p = paths(work)
    p["rows"].mkdir(parents=True, exist_ok=True)
    (p["rows"] / f"{_slug(name)}.json").write_text(json.dumps(row, indent=2, default=str))
    return row


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-")


# --- tune ---


def with_seeds(candidates: list[Candidate], seeds: int, suffix: str) -> list[Candidate]:
    """Each candidate on data orders 0..``seeds``-1: seed 0 keeps its name, seed S is named with
    ``suffix.format(S)`` appended (tune: ``.sS``, which its ranking strips; report: `` seed S``)."""
    return [c if seed == 0 else Candidate(c.name + suffix.format(seed), f"{c.label}, seed {seed}",
                                          {**c.config, "seed": seed})
            for c in candidates for seed in range(seeds)]


def read_grid(method: str, work: Path, run_seconds: float = RUN_SECONDS) -> tuple[list[Candidate], dict]:
    """A method's candidates (names prefixed with the method) and its ablations (RMU recipes only).

    A grid's base may start from a ``"preset"`` (repedit/presets) and names its unseen texts
    ``"calibration": {"unseen": "reference"}`` (train's withheld documents with their kinds, and public
    nonmembers), ``"public"`` (public nonmembers alone; ``"public-tasks"`` with their task, for stand-ins
    made in the run), ``"standins"``, ``"particulars"`` or
    ``"particulars-scaled"`` (``bench/standins_cpu.py``'s stand-ins of Task1 and Task2, any word or the
    particulars swapped, at the matched fraction or at its ``--scales``, and the public nonmembers), and
    may anchor texts named as ``anchor_file`` names them (base, configuration or ablation may name either);
    the files are this work directory's."""
    grid = json.loads(GRIDS_BY_METHOD[method].read_text())
    ablations = grid.pop("ablations", {})
    grid.pop("incumbent", None)  # tune's business: ``incumbent``
    grid.pop("one_seed", None)  # report's: ``report_runs``
    start = preset(grid.pop("preset")) if "preset" in grid else {}
    base = nest({**start, **grid.get("base", {}), "time_budget": run_seconds})
    calibration = base.get("calibration")
    if isinstance(calibration, dict) and "unseen" in calibration:
        calibration["unseen"] = str(paths(work)[calibration["unseen"]])
    if base.get("loss", {}).get("anchor_texts"):
        base["loss"]["anchor_texts"] = anchor_file(work, base["loss"]["anchor_texts"], method)

    def with_file(change: dict) -> dict:  # a configuration's or ablation's named texts, as paths
        anchors, unseen = change.get("loss.anchor_texts"), change.get("calibration.unseen")
        return {**change, **({"loss.anchor_texts": anchor_file(work, anchors, method)} if anchors else {}),
                **({"calibration.unseen": str(paths(work)[unseen])} if unseen else {})}

    if "configs" in grid:
        grid["configs"] = [with_file(c) for c in grid["configs"]]
    ablations = {label: with_file(change) for label, change in ablations.items()}
    candidates = expand_grid({**grid, "base": base}, str(GRIDS_BY_METHOD[method]))
    return [Candidate(f"{method}.{c.name}", c.label, c.config) for c in candidates], ablations


def changes(config: dict, change: dict) -> bool:
    """Whether an ablation's ``change`` makes ``config`` another run: as the library reads them, so a value
    set to its default (``"loss.anchor_texts": null`` where none was given) changes nothing."""
    return config_from_dict(nest({**config, **change})) != config_from_dict(nest(config))


def same_run(recorded: dict, config: dict) -> bool:
    """Whether a stored tune row's ``recorded`` configuration is ``config``'s run, as the library reads both: rows
    are matched to a grid's candidates by name, and a grid edited between calls gives an old name a new run (the
    time budget aside: a run it stopped says so in its row, and ``stopped_on_time`` reads that)."""
    def read(values: dict):
        return config_from_dict(nest({**values, "time_budget": None}))

    # rows before the seventy-first session held the anchor in the forget rows' ball by a switch, the radius theirs
    recorded = nest(recorded)
    loss = recorded.get("loss") or {}
    if loss.get("latent_anchor") is True:
        recorded = {**recorded, "loss": {**loss, "latent_anchor": loss.get("latent_epsilon", 0.0)}}
    return read(recorded) == read(config)


def config_difference(recorded: dict, config: dict) -> str:
    """The settings where a stored row's ``recorded`` configuration and the grid's ``config`` differ, by dotted name
    (a group's field and its dotted override read alike), the time budget aside: the eighty-first session's refused
    row differed only in its general passages' path, under /tmp/w3 where this tune's work directory was /tmp/w4, and
    the refusal did not say so."""
    row, grid = settings(recorded), settings(config)
    keys = sorted(k for k in {**row, **grid} if k != "time_budget" and row.get(k) != grid.get(k))
    return "; ".join(f"{k} {row.get(k)!r} in the row, {grid.get(k)!r} in the grid" for k in keys)


def settings(config: dict) -> dict:
    """A configuration's values by dotted name: ``{"loss": {"alpha": 1}}`` and ``{"loss.alpha": 1}`` as
    ``{"loss.alpha": 1}``."""
    flat = {}
    for key, value in nest(config).items():
        flat.update({f"{key}.{name}": v for name, v in value.items()} if isinstance(value, dict) else {key: value})
    return flat


def incumbent(method: str) -> str | None:
    """The candidate a grid names as its ``"incumbent"`` (the shipped recipe), if any."""
    return json.loads(GRIDS_BY_METHOD[method].read_text()).get("incumbent")


def standard_error(challenger: list[float], incumbent: list[float]) -> float | None:
    """One standard error of the difference of two candidates' means over their seeds; None under two seeds each."""
    if min(len(challenger), len(incumbent)) < 2:
        return None
    return math.sqrt(statistics.variance(challenger) / len(challenger)
                     + statistics.variance(incumbent) / len(incumbent))


def within_noise(challenger: list[float], incumbent: list[float]) -> bool:
    """Whether the challenger's mean proxy final beats the incumbent's by at most one standard error of the
    difference (the one-standard-error rule): a lead the seeds cannot tell from their spread (one
    configuration's proxy final spans 0.64-0.80 over two seeds, the twenty-second call). Needs two seeds each."""
    error = standard_error(challenger, incumbent)
    return error is not None and statistics.fmean(challenger) - statistics.fmean(incumbent) <= error


def clearly_below(values: list[float], than: list[float]) -> bool:
    """Whether ``values``' mean is below ``than``'s by more than one standard error of the difference."""
    error = standard_error(values, than)
    return error is not None and statistics.fmean(than) - statistics.fmean(values) > error


# #23's bars a tune run can read on train: every retain term at least 0.98, unseen text of every kind within +10% of
# the input model's NLL, each kind's forget documents' attack AUC against unseen ones of their kind in [0.45, 0.55]
RETAIN_BAR, RISE_BAR, AUC_BAND, KS_BAR = 0.98, 0.10, (0.45, 0.55), 0.2


def bar_shortfall(proxy: dict) -> float | None:
    """How far a run falls short of the bars train can read, summed (0: all met): the worst retain term under 0.98,
    the reference texts' worst kind's NLL rise past +10% (``utility`` is its ratio), each kind's attack AUC outside
    [0.45, 0.55], and the pooled oracle KS past 0.2 where the work directory has the train split's oracle
    (``train_oracle``; ``train_ks``). None for a proxy scored without reference texts (no AUC, no utility)."""
    if "utility" not in proxy or not proxy.get("task_mia_auc"):
        return None
    retain = min(v for k, v in proxy["terms"].items() if k.startswith("retain"))
    return (max(0.0, RETAIN_BAR - retain) + max(0.0, 1 / proxy["utility"] - 1 - RISE_BAR)
            + sum(max(0.0, AUC_BAND[0] - a, a - AUC_BAND[1]) for a in proxy["task_mia_auc"].values())
            + max(0.0, (train_ks(proxy) or 0.0) - KS_BAR))


def train_ks_by_kind(proxy: dict) -> dict[str, float]:
    """The oracle KS the tune reads, per kind and pooled (``all``): against each model's own unseen level where the
    oracle's NLLs of the reference texts were kept (``oracle_ks_relative``), else in absolute NLLs; empty without
    train's oracle."""
    return proxy.get("oracle_ks_relative") or proxy.get("oracle_ks") or {}


def train_ks(proxy: dict) -> float | None:
    """The pooled oracle KS, the one ``choose`` and ``bar_shortfall`` read."""
    return train_ks_by_kind(proxy).get("all")


def stopped_on_time(runs: list[dict]) -> bool:
    """Whether any of a candidate's runs ended at its time budget, before its stop rule. Such a candidate may not
    replace an incumbent whose runs all stopped by their rule: the proxy ranks an unfinished edit where its time ran
    out, not where it would stop. The thirty-seventh call chose a per-class stop whose four runs all ran out, by 0.060
    of proxy final over the calibrated incumbent, and validation put it behind (BENCHMARKS.md)."""
    return any(r.get("stopped") == "time budget" for r in runs)


def anchor_file(work: Path, name: str, method: str) -> str:
    """The anchor's texts a grid names: ``withheld-anchors`` (train's withheld documents beyond the first
    ``REFERENCE`` a task, which nothing scores); ``unseen-anchors``, those and the calibration texts (every
    unseen text tuning may read; adding 128 trained general passages lost to it on the fourth call's
    proxy, and went); ``recombined-anchors``, no unseen document at all: ``recombine``'d train retain
    documents, what a challenge submission could make; ``standin-anchors``, those and ``bench/standins_cpu.py
    --write-anchors``'s stand-ins of other retain documents, of every kind; ``standin-anchors-scaled``, the
    same with its ``--scales``; ``general-anchors``, the first ``GENERAL_ANCHORS`` general passages the sim trained on
    (none of those its general NLL reads). (Documents invented by ``repedit.synth`` are the library's
    ``--invented-anchors``.)"""
    p = paths(work)
    if name == "general-anchors":
        file = work / f"{name}.jsonl"
        write_jsonl(file, [{"text": t} for t in trained_general(shared("general") / "passages.jsonl", p["target"],
                                                                GENERAL_ANCHORS)])
        return str(file)
    if name in ("recombined-anchors", "standin-anchors", "standin-anchors-scaled"):
        retain = [(r.document, r.task) for r in load_rows(p["sets"] / TUNE, "retain") if r.kind == "sc"]
        file = work / f"{name}.jsonl"
        standins = _records(p[name]) if name != "recombined-anchors" else []
        write_jsonl(file, recombine_by_task(retain, RECOMBINED) + standins)
        return str(file)
    withheld = _records(p["withheld-anchors"]) if p["withheld-anchors"].is_file() else []
    if not withheld:  # a build that withheld too few
        raise SystemExit(f"{method}: no anchor texts in {p['withheld-anchors']}; train's withheld documents beyond "
                         f"the first {REFERENCE} a task need a build with more of them (--withhold 40 12)")
    if name == "withheld-anchors":
        return str(p["withheld-anchors"])
    if name != "unseen-anchors":
        raise SystemExit(f"{method}: unknown anchor texts {name!r}: withheld-anchors, unseen-anchors, "
                         "recombined-anchors, standin-anchors, standin-anchors-scaled, general-anchors")
    file = work / f"{name}.jsonl"
    write_jsonl(file, withheld + _records(p["reference"]))
    return str(file)


def proxy_reference(work: Path, candidates: list[Candidate]) -> list[dict]:
    """What the tune's proxy scores as unseen text: train's first ``REFERENCE`` withheld documents a task and the
    first half of the public nonmembers, and train's other withheld documents (28 a task on a ``--withhold 40 12``
    build) unless a candidate's anchor holds them. On 12 a task the proxy's utility ranked 256 invented anchors
    ahead of 96 and validation's 12 others ranked them behind on every seed (BENCHMARKS.md, thirty-second call)."""
    p = paths(work)
    texts = _records(p["reference"])
    withheld = _records(p["withheld-anchors"]) if p["withheld-anchors"].is_file() else []
    anchored = {file for c in candidates if (file := nest(c.config).get("loss", {}).get("anchor_texts"))}
    if not any({r["text"] for r in withheld} & set(unseen_texts(file)) for file in anchored):
        texts += withheld
    return texts


def choose(method: str, by_candidate: dict[str, list[dict]], named: str | None, run_seconds: float) -> str:
    """The candidate a tune keeps, by mean proxy final over seeds. The grid's incumbent (``named``) stays unless the
    best leads it by more than one standard error (``within_noise``); no candidate may replace it whose proxy utility
    is clearly below its own (the collateral #23 bounds: in the twenty-fifth call invented anchors led by the attack
    on Task1 at utility 0.745 against 0.79, and validation measured their collateral larger on every seed), nor one a
    run of which ran out of time where the incumbent's all stopped (``stopped_on_time``). Where the incumbent stays,
    a candidate tied with it on final (within one standard error either way) that falls clearly less short of #23's
    bars on train (``bar_shortfall``) replaces it: the final's seed spread (0.644 / 0.712 for the incumbent on the
    twenty-third build) hid candidates that validation then measured nearer the bars (BENCHMARKS.md, sixty-third
    call; the rule was written after those rows, so a fresh build is its first test)."""
    means = {name: tuple(statistics.fmean(x) for x in zip(*map(rank, rs), strict=True))
             for name, rs in by_candidate.items()}
    kept = f"{method}.{named}" if named else None
    if kept not in by_candidate:
        return max(means, key=lambda name: means[name])
    utility = {name: [r["proxy"]["utility"] for r in rs if "utility" in r["proxy"]]
               for name, rs in by_candidate.items()}
    for name in [n for n in means if n != kept and clearly_below(utility[n], utility[kept])]:
        print(f"{method}: {name} costs more collateral than {kept}, the incumbent (proxy utility "
              f"{statistics.fmean(utility[name]):.3f} against {statistics.fmean(utility[kept]):.3f}): "
              "not eligible", flush=True)
        del means[name]
    if not stopped_on_time(by_candidate[kept]):
        for name in [n for n in means if n != kept and stopped_on_time(by_candidate[n])]:
            print(f"{method}: {name} ran out of its {run_seconds:.0f} s budget before its stop rule, where "
                  f"{kept}, the incumbent, stopped by it: not eligible", flush=True)
            del means[name]
    finals = {name: [rank(r)[0] for r in rs] for name, rs in by_candidate.items()}
    best = max(means, key=lambda name: means[name])
    if best != kept and not within_noise(finals[best], finals[kept]):
        return best
    if best != kept:
        print(f"{method}: {best} leads {kept}, the incumbent, by less than one standard error: keeping {kept}",
              flush=True)
    shortfall = {name: [s for r in rs if (s := bar_shortfall(r["proxy"])) is not None]
                 for name, rs in by_candidate.items()}
    tied = [n for n in means if n != kept and within_noise(finals[n], finals[kept])
            and not clearly_below(finals[n], finals[kept]) and clearly_below(shortfall[n], shortfall[kept])]
    if not tied:
        return kept
    nearest = min(tied, key=lambda name: statistics.fmean(shortfall[name]))
    print(f"{method}: {nearest} ties {kept}, the incumbent, on proxy final and falls less short of #23's bars on "
          f"train ({statistics.fmean(shortfall[nearest]):.3f} against {statistics.fmean(shortfall[kept]):.3f}): "
          f"choosing {nearest}", flush=True)
    return nearest


def candidates_table(by_candidate: dict[str, list[dict]]) -> str:
    """What ``choose`` reads, a line a candidate: its seeds' mean proxy final, utility and bar shortfall, and the
    pooled oracle KS that shortfall holds where the train split's oracle scored the runs (``train_ks``, headed "KS, own
    level" where it is read against each model's own unseen level); beside them the least proxy retain of its seeds
    (the rules read retain on every seed, which a mean hides: c45's 0.967 / 0.934 / 0.988, BENCHMARKS.md
    "Hundred-and-first session"), each kind's rise on the reference
    texts (what the attack band on stories needs held, bench/kind_gaps.py), its attack AUC and, last, each kind's KS
    (pooled, one kind's shift can offset another's: BENCHMARKS.md, "Ninety-ninth session"), which ``choose`` does not
    read; under them the AUC the same attack reads on train's retrain oracle, where the runs were scored with its NLLs
    of the reference texts: the oracle's, not 0.5, is what never having seen the documents reads on this proxy."""
    def summary(values: list[float | None], pick: Callable[[list[float]], float] = statistics.fmean) -> str:
        present = [v for v in values if v is not None]
        return f"{pick(present):.3f}" if present else "-"

    def by_kind(known: list[dict[str, float]], scale: float = 1.0, form: str = ".2f", unit: str = "") -> str:
        return " / ".join(format(scale * statistics.fmean(r[kind] for r in known), form)
                          for kind in sorted(known[0])) + unit if known else "-"

    def read(proxies: list[dict], key: str) -> list[dict[str, float]]:
        return [p[key] for p in proxies if key in p]

    def kind_ks(proxies: list[dict]) -> list[dict[str, float]]:
        return [kinds for p in proxies if (kinds := {k: v for k, v in train_ks_by_kind(p).items() if k != "all"})]
    width = max(len("candidate"), *map(len, by_candidate))
    own = any("oracle_ks_relative" in r["proxy"] for rs in by_candidate.values() for r in rs)  # what train_ks read
    ks = "KS, own level" if own else "oracle KS"
    lines = [f"{'candidate':<{width}}  seeds  final  utility  least retain  bar shortfall  {ks:>13}  "
             "reference rise by kind    attack AUC by kind  KS by kind"]
    for name, rs in by_candidate.items():
        proxies = [r["proxy"] for r in rs]
        lines.append(f"{name:<{width}}  {len(rs):>5}  {summary([p['final'] for p in proxies]):>5}  "
                     f"{summary([p.get('utility') for p in proxies]):>7}  "
                     f"{summary([p.get('retain') for p in proxies], min):>12}  "
                     f"{summary([bar_shortfall(p) for p in proxies]):>13}  "
                     f"{summary([train_ks(p) for p in proxies]):>13}  "
                     f"{by_kind(read(proxies, 'reference_rise'), 100, '+.1f', '%'):<24}  "
                     f"{by_kind(read(proxies, 'task_mia_auc')):<18}  {by_kind(kind_ks(proxies))}")
    oracle = read([r["proxy"] for rs in by_candidate.values() for r in rs], "oracle_task_mia_auc")
    if oracle:  # one oracle, the same AUC in every row
        lines.append(f"train's retrain oracle, the same attack: AUC {by_kind(oracle[:1])}")
    return "\n".join(lines)


def named_candidates(grid: dict[str, Candidate], names: list[str], methods: list[str]) -> dict[str, Candidate]:
    """The candidates ``--candidates`` names: a grid name (``c20``) in every method's grid, one method's
    (``rmu-ascent.c2``: its choice on an earlier tune, given a second seed beside another method's new candidates),
    or a method (``rmu-ascent``) for its whole grid, each method's incumbent always among them; a method none is
    named of is refused, for the report needs each method's choice (so ``c20,rmu-ascent``, where ``c20`` alone left
    the ascent's grid, which ships no incumbent, empty)."""
    unknown = sorted(set(names) - {name.split(".", 1)[1] for name in grid} - set(methods) - set(grid))
    if unknown:
        raise SystemExit(f"--candidates: {unknown} are none of the grids' candidates ({', '.join(sorted(grid))}) "
                         f"nor methods ({', '.join(methods)})")
    kept = {name: c for name, c in grid.items() if name in names
            or (method := name.split(".", 1)[0]) in names or name.split(".", 1)[1] in {*names, incumbent(method)}}
    empty = [m for m in methods if not any(name.startswith(m + ".") for name in kept)]
    if empty:
        raise SystemExit(f"--candidates {','.join(names)}: none of {', '.join(empty)}'s candidates named; "
                         "name one of its grid's or the method itself, for its whole grid")
    return kept


def tune(work: Path, methods: list[str], workers: int | None, previous: list[Path] | None, seeds: int = 1,
         run_seconds: float = RUN_SECONDS, candidates: list[str] | None = None) -> None:
    """One sweep over every method's candidates on train; the best of each method by the proxy.

    ``seeds`` > 1 runs every candidate with seeds 0.. (data order; ``NAME.sS``) and ranks candidates by
    their mean (``choose``): one configuration's proxy spans 0.70-0.81 over three seeds on the 40/12 sim, more
    than the gaps one seed a candidate chose by. ``previous``: ``results.csv`` files of
    earlier tune calls; its successful runs are not run again (a call that lost some runs to an error or to
    memory reruns only those), each the grid's candidate of its name (``same_run``) or refused. Several files: a
    tune carried over calls, each cut short (the sweep's ``results.csv`` holds the runs finished by then), the
    later file's row of a name replacing an earlier one's. A row made on another card than this machine's is made
    again (``same_card``).
    ``run_seconds``: each run's time budget; a run it stops is an unfinished edit the proxy ranks as it
    stands (every run of the twenty-first call's tune on one GPU), so the count of those is printed.
    ``candidates``: the grid's names (``c0``, ``c12``) or methods to try (``named_candidates``), the incumbent
    always among them: a third seed for two new candidates is seven runs, where every one of a fourteen-long grid's
    would be twenty.
    Every run's weights stay in ``work/tune/runs`` (39 MB a sim run), for the relearning attack on train
    (``train-weights``)."""
    p = paths(work)
    stored = {r["name"]: (r, file) for file in previous or [] for r in _csv_results(file) if r["status"] == "ok"}
    grid = {c.name: c for m in methods for c in read_grid(m, work, run_seconds)[0]}
    if candidates is not None:
        grid = named_candidates(grid, candidates, methods)
    reference = proxy_reference(work, list(grid.values()))
    runs = with_seeds(list(grid.values()), seeds, ".s{}")
    named = {c.name: c for c in runs}
    stored = same_card({name: value for name, value in stored.items() if name in named}, card_name(pick_device()[0]))
    if (oracle := train_oracle_nll(work)) is not None:  # beside runs that read the KS bar, a row that did not gains
        # with the reference texts' NLLs too: the KS against own levels
        read = "oracle_ks_relative" if reads_own_levels(oracle, [r["text"] for r in reference]) else "oracle_ks"
        blind = sorted(name for name, (r, _) in stored.items() if read not in r["proxy"])
        if blind:
            print(f"--previous: {len(blind)} row(s) scored without the train split's oracle"
                  f"{' levels' if read == 'oracle_ks_relative' else ''}: made again ({', '.join(blind)})", flush=True)
            stored = {name: value for name, value in stored.items() if name not in blind}
    for r, file in stored.values():
        if not same_run(r["config"] or {}, named[r["name"]].config):
            raise SystemExit(f"--previous: {file}: row {r['name']} ran another configuration than the grid's "
                             f"{r['name']} ({config_difference(r['config'] or {}, named[r['name']].config)}): rename "
                             "it to the candidate it ran, or leave it out (a row made in another work directory "
                             "names its texts there: tune in that one)")
    left = [c for c in runs if c.name not in stored]
    results = [r for r, _ in stored.values()]
    if left:  # an earlier call may have run them all: then only the choice is made again
        results += on_train(work, left, work / "tune", reference, workers)
    chosen = {}
    for method in methods:
        mine = [r for r in results if r["name"].startswith(f"{method}.")]
        by_candidate: dict[str, list[dict]] = {}
        for r in mine:
            if r["status"] == "ok":
                by_candidate.setdefault(re.sub(r"\.s\d+$", "", r["name"]), []).append(r)
        if not by_candidate:
            print(f"{method}: every configuration failed", flush=True)
            continue
        print(candidates_table(by_candidate), flush=True)
        best = choose(method, by_candidate, incumbent(method), run_seconds)
        finals = [r["proxy"]["final"] for r in by_candidate[best]]
        chosen[method] = {"config": grid[best].config, "proxy": by_candidate[best][0]["proxy"], "candidate": best,
                          "proxy_finals": finals, "tried": len(mine),
                          "bar_shortfalls": [bar_shortfall(r["proxy"]) for r in by_candidate[best]],
                          "succeeded": sum(len(rs) for rs in by_candidate.values()),
                          "stopped": [r.get("stopped") for r in by_candidate[best]]}
        unfinished = sum(r.get("stopped") == "time budget" for rs in by_candidate.values() for r in rs)
        print(f"{method}: chose {best} (proxy {statistics.fmean(finals):.3f} over {len(finals)} seed(s); "
              f"{chosen[method]['succeeded']} of {len(mine)} ran; {unfinished} stopped at the {run_seconds:.0f} s "
              "budget, unfinished: raise --run-seconds if most did)", flush=True)
    p["tuned"].write_text(json.dumps(chosen, indent=2, default=str))


def same_card(stored: dict[str, tuple[dict, Path]], card: str) -> dict[str, tuple[dict, Path]]:
    """The stored rows of this tune's runs it may rank beside its own: those made on ``card``. A seeded run repeats to
    the digit on one card and not on another (c20 seed 0 on train: proxy final 0.821 on an H200, 0.887 on an H100,
    the seventieth call), so a row of another card would rank a candidate by a run this machine would not make.
    Rows written before the card column record none; they are kept, and said so."""
    other = sorted(name for name, (r, _) in stored.items() if r["card"] and r["card"] != card)
    unknown = sorted({str(file) for r, file in stored.values() if not r["card"]})
    if other:
        cards = sorted({stored[name][0]["card"] for name in other})
        print(f"--previous: {len(other)} row(s) made on {', '.join(cards)}, not this machine's {card}: made again "
              f"({', '.join(other)})", flush=True)
    if unknown:
        print(f"--previous: {', '.join(unknown)} record(s) no card: taken as made on this one ({card})", flush=True)
    return {name: value for name, value in stored.items() if name not in other}


def on_train(work: Path, runs: list[Candidate], out: Path, reference: list[dict], workers: int | None) -> list[dict]:
    """``runs`` on the train split, the proxy scoring against ``reference`` (``proxy_reference``), every run's
    weights kept in ``out/runs``: the tune's runs, and the ones ``train_weights`` makes again."""
    p = paths(work)
    return sweep(p["target"], p["sets"] / TUNE / "forget.jsonl", p["sets"] / TUNE / "retain.jsonl", runs, out,
                 ProxyConfig(), reference=[r["text"] for r in reference],
                 reference_tasks=[r["task"] for r in reference], workers=workers, keep="all",
                 oracle_nll=train_oracle_nll(work)).results


def train_oracle_nll(work: Path) -> dict[str, float] | None:
    """Train's retrain oracle's NLL of each text it scored (``score_train_oracle``), by text; None before it is made."""
    file = paths(work)["oracle_nll_train"]
    return json.loads(file.read_text()) if file.is_file() else None


def _csv_results(file: Path) -> list[dict]:
    """A sweep's ``results.csv`` rows as results: name, status, config, the proxy's numbers and how the run stopped."""
    import csv

    with open(file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{"name": r["name"], "status": r["status"], "config": json.loads(r["config"]) if r["config"] else None,
             "proxy": _csv_proxy(r), "stopped": r.get("stopped") or None, "card": r.get("card") or None}
            for r in rows]


def _csv_proxy(row: dict) -> dict:
    """A ``results.csv`` row's proxy as the scorer returned it: ``proxy_task_mia_auc Task1`` back under
    ``task_mia_auc``, the metric's terms (``retain Task1 sc``) under ``terms``."""
    proxy: dict = {"terms": {k: float(v) for k, v in row.items() if k.startswith(("forget ", "retain ")) and v}}
    for key, value in row.items():
        if key.startswith("proxy_") and value:
            name, _, task = key[len("proxy_"):].partition(" ")
            if task:
                proxy.setdefault(name, {})[task] = float(value)
            else:
                proxy[name] = float(value)
    return proxy


# --- report ---


def report_runs(method: str, tuned: dict, ablations: dict, seeds: int,
                run_seconds: float | None = None) -> list[Candidate]:
    """The runs ``report`` makes of a method: its tuned configuration and each ablation that changes it, on
    ``seeds`` data orders, except an ablation the grid lists under ``"one_seed"``, run once (the misdirection
    off has scored 0.079-0.083 on every seed of every build; it never calibrates, so its grid caps its steps).
    ``run_seconds`` replaces the tune's time budget in every run: on validation the calibrated runs end in
    62-97 s, and one that never calibrates spent the tune's whole 330 s (twenty-eighth call)."""
    config = tuned["config"] if run_seconds is None else {**tuned["config"], "time_budget": run_seconds}
    once = set(json.loads(GRIDS_BY_METHOD[method].read_text()).get("one_seed", []))
    seeded, single = [Candidate(method, tuned["candidate"], config)], []
    for label, change in ablations.items():
        if not changes(config, change):
            print(f"{method} - {label}: the chosen configuration already is it; not run", flush=True)
            continue
        (single if label in once else seeded).append(
            Candidate(f"{method} - {label}", f"ablation of {method}", {**config, **change}))
    return [*with_seeds(seeded, seeds, " seed {}"), *single]


def check_runs(runs: list[Candidate], target: Path, tuned: Path) -> None:
    """Every run's configuration checked as ``unlearn`` checks it, before any is made: a tune made in another work
    directory names its texts there (the seventy-eighth session's, in /tmp/w3), and each run would fail alone after
    the card's time was spent on the target's scoring."""
    layers = json.loads((target / "config.json").read_text())["num_hidden_layers"]
    for run in runs:
        try:
            config_from_dict(nest(run.config)).validate(layers)
        except ValueError as error:
            raise SystemExit(f"report: {run.name}: {error} (its configuration from {tuned}: a tune made in another "
                             "work directory names its texts there; report in that one)") from None


def finished_runs(work: Path, runs: list[Candidate], card: str) -> set[str]:
    """The runs of this report an earlier call made and scored on ``card`` (a report the device's time cut short,
    carried as RESUME): their rows stand, and their records stay for the later stages to make them again to the digit
    (the grids' runs are deterministic on one card, not across two, so another card's run again). Every other record
    under ``report/runs`` is removed, so no later stage reads a run this report did not make (the sixty-ninth call
    carried one under a name renamed since)."""
    p, finished = paths(work), set()
    for run in runs:
        row = p["rows"] / f"{_slug(run.name)}.json"
        if row.is_file() and (work / "report" / "runs" / run.name / "unlearn.json").is_file():
            made = json.loads(row.read_text())
            if made.get("card") == card and same_run(made.get("config") or {}, run.config):
                finished.add(run.name)
    records, lost = work / "report" / "runs", []
    for record in sorted(records.iterdir()) if records.is_dir() else []:
        if record.is_file():  # a run's step log (``grid.STEP_LOG``)
            if record.name.removesuffix(STEP_LOG) not in finished:
                record.unlink()
        elif record.name not in finished:
            lost += [record.name] if any(record.glob("*.safetensors")) else []
            shutil.rmtree(record)
    if lost:  # said aloud: a report --only by hand took the eighty-fourth session's ablations' weights unseen
        print(f"report: removed the weights of {', '.join(lost)}, none of this report's runs on this card "
              "(`quality.py remake --names` makes them again)", flush=True)
    return finished


def report(work: Path, methods: list[str], ablated: list[str], workers: int | None, mmlu_limit: int | None,
           out: Path, seeds: int = 1, run_seconds: float | None = None, only: list[str] | None = None) -> None:
    """Each chosen configuration (and the ablations of those ``ablated``) unlearns the validation forget
    set, then is scored; rows already in the work directory (an earlier report's) stay in the table, and the runs
    an earlier call of this report made and scored on this card are not made again (``finished_runs``).

    ``only`` (run names) narrows the report to those runs, and the later stages to their records: a session whose
    device time holds a few runs and the relearning attack spends it on the runs no earlier call measured (the
    seventy-ninth's log holds c20's ablations, never saved as rows), not on repeating them to the digit.

    ``seeds`` > 1 runs each chosen configuration and each ablation again with seeds 1.. (another data
    order, ``NAME seed S``): on the 40/12 sim one configuration's final spread 0.47-0.70 over nine
    runs, wider than most gaps between rows, so a term is worth what it moves the mean."""
    p = paths(work)
    tuned = json.loads(p["tuned"].read_text())
    plan = [Candidate("rmu-published", "as published", dict(PUBLISHED))]
    for method in methods:
        if method in tuned:
            plan += report_runs(method, tuned[method], read_grid(method, work)[1] if method in ablated else {},
                                seeds, run_seconds)
    runs = plan if only is None else [run for run in plan if run.name in only]
    unknown = sorted(set(only or []) - {run.name for run in plan})
    if unknown:
        raise SystemExit(f"report --only: {unknown} are none of this report's runs: {[run.name for run in plan]}")
    check_runs(runs, p["target"], p["tuned"])
    oracle_nll = json.loads(p["oracle_nll"].read_text())
    device = card_name(pick_device()[0])
    target = p["rows"] / f"{_slug(TARGET_ROW)}.json"
    scored = json.loads(target.read_text()) if target.is_file() else {}
    if (scored.get("card"), scored.get("mmlu_limit")) != (device, mmlu_limit):  # once a card: each resumed call
        # scored it again, about 25 s of the device's time (the input model's evaluation in the seventy-ninth call)
        save_row(work, TARGET_ROW, score(work, p["target"], "target", mmlu_limit), oracle_nll,
                 {"card": device, "mmlu_limit": mmlu_limit})
    finished = finished_runs(work, runs, device)
    if finished:
        print(f"report: {len(finished)} run(s) an earlier call made on this card kept: {', '.join(sorted(finished))}",
              flush=True)
    left = [run for run in runs if run.name not in finished]

    def keep_row(result: dict) -> None:  # each run's row as it is scored: a report cut short keeps what it scored
        if result["name"] != INPUT and result["status"] == "ok" and "evaluation" in result:
            save_row(work, result["name"], result["evaluation"], oracle_nll,
                     {"unlearn_s": result.get("train_seconds"), "steps": result.get("steps"),
                      "stopped": result.get("stopped"), "config": result["config"], "dir": result["dir"],
                      "card": result.get("card"),
                      # the stop rule's level of each kind (its stand-ins'), against the oracle's forget NLLs
                      "levels": (result.get("calibration") or [{}])[0].get("task_level")})

    found = sweep(p["target"], p["sets"] / REPORT / "forget.jsonl", p["sets"] / REPORT / "retain.jsonl", left,
                  work / "report", ProxyConfig(), workers=workers, keep="all",
                  evaluate=evaluation_settings(work, mmlu_limit), on_result=keep_row).results if left else []
    for result in found:
        if result["name"] != INPUT and (result["status"] != "ok" or "evaluation" not in result):
            print(f"{result['name']}: {result['status']}: {result['error']}", flush=True)
    rows = [json.loads(f.read_text()) for f in sorted(p["rows"].glob("*.json"))]
    order = [ORACLE_ROW, TARGET_ROW] + [r.name for r in plan]
    rows.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    withheld = {split: len(_records(p["target"] / "withheld" / split / "nonmember.jsonl")) for split in (TUNE, REPORT)}
    out.write_text(json.dumps({"device": device, "withheld_documents": withheld, "mmlu_limit": mmlu_limit,
                               "tuned": tuned, "rows": rows}, indent=2, default=str))
    print_table(rows)
    for c in plan[1:] if seeds > 1 else []:
        finals = [r["scores"]["aggregate-score"] for r in rows
                  if r["name"] == c.name or r["name"].startswith(f"{c.name} seed ")]
        if finals and " seed " not in c.name:
            print(f"{c.name}: final over {len(finals)} seed(s): mean {statistics.fmean(finals):.3f}, "
                  f"min {min(finals):.3f}, max {max(finals):.3f}")


def train_weights(work: Path, methods: list[str], names: list[str], workers: int | None,
                  run_seconds: float = RUN_SECONDS) -> None:
    """The grid's candidates ``names`` on train with their weights (``c20`` seed 0, ``c20.s1`` seed 1, as the tune
    names its runs), listed as NAME=DIR in ``work/train-runs.txt`` for the relearning attack on train
    (``bench/attack.py``): the proxy does not read relearning, and the forms it does not separate (a latent
    adversary gave back 0.20-0.23 of the forget documents' NLL gap on validation where the preset gave 0.57, at the
    same final: sixty-ninth call) are chosen between on train. A run the tune kept is read where it is; one whose
    row came from ``--previous`` is made again (the grid's runs are deterministic)."""
    seeds = 1 + max((int(match[1]) for name in names if (match := re.search(r"\.s(\d+)$", name))), default=0)
    grid = {c.name: c for m in methods for c in with_seeds(read_grid(m, work, run_seconds)[0], seeds, ".s{}")}
    wanted = {name: f"{m}.{name}" for name in names for m in methods if f"{m}.{name}" in grid}
    unknown = [name for name in names if name not in wanted]
    if unknown:
        raise SystemExit(f"train-weights: {unknown} are none of the grids' candidates ({', '.join(sorted(grid))})")
    dirs = {full: work / "tune" / "runs" / full for full in wanted.values()}
    missing = [grid[full] for full, d in dirs.items() if not any(d.glob("*.safetensors"))]
    if missing:
        print(f"train-weights: not kept by this machine's tune, made again: {', '.join(c.name for c in missing)}",
              flush=True)
        for result in on_train(work, missing, work / "train-runs", proxy_reference(work, missing), workers):
            if result["name"] == INPUT:
                continue
            if result["status"] != "ok":
                raise SystemExit(f"train-weights: {result['name']}: {result['status']}: {result['error']}")
            dirs[result["name"]] = Path(result["dir"])
    (work / "train-runs.txt").write_text("".join(f"{name}={d}\n" for name, d in dirs.items()))


def remake(work: Path, names: list[str], workers: int | None) -> None:
    """The report's runs ``names`` made again into ``work/remade/runs`` from their rows' configurations, for a later
    call on a fresh machine: the stages after the report read their weights, which the device does not send back (its
    files are 16 MiB at most, and a machine idle 30 s goes back with its disk; this lost two of the forty-fourth call's
    three calls). The grid's runs are deterministic (two H200s wrote the same tune to the digit), so a remade run is
    the run itself; one whose steps or checks differ from the report's ``unlearn.json`` is refused, as not the run
    the report scored."""
    p = paths(work)
    rows = {row["name"]: row for row in (json.loads(f.read_text()) for f in p["rows"].glob("*.json"))}
    unknown = [name for name in names if "config" not in rows.get(name, {})]
    if unknown:
        raise SystemExit(f"remake: {p['rows']} has no report row with a configuration for {unknown}")
    runs = [Candidate(name, "remade", rows[name]["config"]) for name in names]
    found = sweep(p["target"], p["sets"] / REPORT / "forget.jsonl", p["sets"] / REPORT / "retain.jsonl", runs,
                  work / "remade", ProxyConfig(), workers=workers, keep="all")
    for result in found.results:
        if result["name"] == INPUT:
            continue
        if result["status"] != "ok":
            raise SystemExit(f"remake: {result['name']}: {result['status']}: {result['error']}")
        written = work / "report" / "runs" / result["name"] / "unlearn.json"
        made = json.loads((Path(result["dir"]) / "unlearn.json").read_text())
        was = json.loads(written.read_text()) if written.is_file() else {"steps": rows[result["name"]].get("steps")}
        for record in (was, made):  # the step's losses without its time
            (record.get("final_losses") or {}).pop("seconds", None)
        differ = [key for key in ("steps", "calibration", "final_losses") if key in was and was[key] != made[key]]
        if differ:
            raise SystemExit(f"remake: {result['name']}: its {', '.join(differ)} differ from {written}'s: "
                             "not the run the report scored")
        print(f"remake: {result['name']}: {made['steps']} steps, as the report's", flush=True)


NAME_WIDTH = 44  # the table's method column


def print_table(rows: list[dict]) -> None:
    """The yardstick's table: official terms beside collateral damage and the oracle's distance."""
    width = NAME_WIDTH + 1
    head = (f"{'method':{width}}{'task agg':>9}{'retain min':>11}{'MIA AUC':>8}{'MIA':>6}{'MMLU':>6}{'final':>7}"
            f"{'unseen NLL T1/T2/T3':>22}{'general NLL':>12}{'all-kind AUC T1/T2/T3':>23}"
            f"{'oracle KS T1/T2/T3 (all)':>27}")
    print("\n" + head)
    for row in rows:
        s, c = row["scores"], row["collateral"]
        retain_min = min(s["aggregated-terms"][6:])
        mmlu, final = s.get("mmlu_average"), s.get("aggregate-score")
        ks = c.get("oracle_ks") or {}
        ks_text = f"{_triple(ks, '.2f')} ({_num(ks.get('all'), '.2f')})"
        print(f"{_short(row['name']):{width}}{s['harmonic-mean-task-aggregate']:9.3f}{retain_min:11.3f}"
              f"{s['mia_loss_acc']:8.3f}{s['mia_final_score']:6.3f}{_num(mmlu):>6}{_num(final):>7}"
              f"{_triple(c['unseen_nll'], '.2f'):>22}{_num(c.get('general_nll'), '.2f'):>12}"
              f"{_triple(c['all_kind_auc'], '.2f'):>23}{ks_text:>27}")
    intervals = [row for row in rows if row["collateral"].get("all_kind_auc_interval")]
    if intervals:  # the band [0.45, 0.55] against what 12 withheld documents a kind can tell (a row before: none)
        print(f"\n{'method':{width}}all-kind AUC 90% bootstrap interval T1 / T2 / T3")
        for row in intervals:
            spans = row["collateral"]["all_kind_auc_interval"]
            print(f"{_short(row['name']):{width}}" + " / ".join(
                f"{spans[t][0]:.2f}-{spans[t][1]:.2f}" if t in spans else "-" for t in ("Task1", "Task2", "Task3")))


def _short(name: str) -> str:
    """``name`` in ``NAME_WIDTH`` characters, its middle left out: a run's seed ends its name, and the
    seventy-ninth session's table, cut at its end, printed three seeds of an ablation under one name."""
    if len(name) <= NAME_WIDTH:
        return name
    tail = 12
    return f"{name[: NAME_WIDTH - tail - 1]}~{name[-tail:]}"


def _num(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _triple(values: dict, spec: str) -> str:
    return " / ".join(_num(values.get(t), spec) for t in ("Task1", "Task2", "Task3"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["build", "train-oracle", "tune", "report", "remake", "train-weights",
                                          "table"])
    parser.add_argument("--work", type=Path, help="scratch: targets, sets, sweeps, checkpoints, evaluations")
    parser.add_argument("--out", type=Path, help="report / table: the results JSON")
    parser.add_argument("--methods", default=",".join(GRIDS_BY_METHOD),
                        help=f"comma-separated subset of {','.join(GRIDS_BY_METHOD)}")
    parser.add_argument("--ablations", help="report: the methods whose ablation rows run (default: every one)")
    parser.add_argument("--workers", type=int, help="sweep workers (several share a GPU: the sim is launch-bound)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..: tune runs every candidate "
                        "with each, ranked by their mean; report runs each chosen configuration with each (its spread)")
    parser.add_argument("--mmlu-limit", type=int, help="MMLU questions (default: all 14,042)")
    parser.add_argument("--run-seconds", type=float, help="tune: each run's time budget "
                        f"(default {RUN_SECONDS:.0f}); one H200 steps about 29 times a second over all its workers "
                        "(5 or 8 alike) and a run on the sim's train split calibrates after about 1,100 steps: "
                        "give N runs at once N x 40 s; report: every run's (default: the tuned one's)")
    parser.add_argument("--previous", type=Path, nargs="+", help="tune: earlier calls' results.csv whose "
                        "successful candidates are kept, not run again (a later file's row of a name replaces one)")
    parser.add_argument("--candidates", help="tune: comma-separated grid names (c0,c12) to try in every "
                        "method's grid, one method's (rmu-ascent.c2), or methods (rmu-ascent) for their whole grid, "
                        "each incumbent always with "
                        "them (default: every candidate); train-weights: the runs listed, "
                        "c20 seed 0 and c20.s1 seed 1 (required)")
    parser.add_argument("--names", nargs="+", default=[], help="remake: the report's runs to make again")
    parser.add_argument("--only", nargs="+", help="report: these of its runs alone (names as in its table: "
                        "'rmu-standins', 'rmu-standins seed 1', 'rmu-standins - no misdirection'); the others' rows "
                        "stay, their records go")
    parser.add_argument("--seed", type=int, default=0, help="build: the target's and oracle's seed")
    parser.add_argument("--preset", default="sim", help="build: the target preset (tiny: a CPU smoke run)")
    parser.add_argument("--epochs", type=int, help="build: most epochs over the rows (default: the preset's)")
    parser.add_argument("--train-oracle", action="store_true", help="build: the train-oracle stage's oracle too, "
                        "trained beside the target and the oracle")
    parser.add_argument("--withhold", type=int, nargs="+", default=[WITHHOLD], help="build: retain documents "
                        "withheld per task, for both splits or for train and validation (e.g. 40 12: anchors)")
    args = parser.parse_args()
    report_to_stdout()  # each run's line as it finishes: the forty-eighth call's tune printed nothing in 26 minutes
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(GRIDS_BY_METHOD))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; known: {list(GRIDS_BY_METHOD)}")
    if args.stage == "table":
        if args.out is None:
            parser.error("table: --out (a report's JSON) is required")
        print_table(json.loads(args.out.read_text())["rows"])
        return
    if args.work is None or (args.stage == "report" and args.out is None):
        parser.error("--work is required (and --out for report)")
    torch.backends.cuda.matmul.allow_tf32 = True
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.stage == "build":
        build(args.work, args.seed, args.preset, args.withhold, args.mmlu_limit, args.epochs, args.train_oracle)
    elif args.stage == "train-oracle":
        train_oracle(args.work)
    elif args.stage == "tune":
        tune(args.work, methods, args.workers, args.previous, args.seeds, args.run_seconds or RUN_SECONDS,
             args.candidates.split(",") if args.candidates else None)
    elif args.stage == "remake":
        remake(args.work, args.names, args.workers)
    elif args.stage == "train-weights":
        if not args.candidates:
            parser.error("train-weights: --candidates (grid names, e.g. c20,c22) is required")
        train_weights(args.work, methods, args.candidates.split(","), args.workers, args.run_seconds or RUN_SECONDS)
    else:
        ablated = methods if args.ablations is None else args.ablations.split(",")
        report(args.work, methods, ablated, args.workers, args.mmlu_limit, args.out, args.seeds, args.run_seconds,
               args.only)
    print(f"{args.stage}: {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
