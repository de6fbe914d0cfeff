"""``repedit export``: the challenge's one-file submission, generated from repedit's own source.

The challenge imports one Python file and calls ``unlearn(input_model, output_path, forget_dir,
retain_dir)`` where only the standard library, torch, transformers, pandas and numpy can be relied
on. Rather than keep a second copy of the method, ``generate_submission`` inlines the code the file
needs: starting from a small entry-point template it follows every name to its top-level
definition in a repedit module (function, class, constant; ``from repedit... import`` lines are
resolved and dropped), and emits those definitions only, module by module in import order, with
their imports hoisted to the top. What nothing reaches (the CLI, plots, the official evaluation
with its rouge_score and accelerate imports) stays out. An import the challenge cannot satisfy, or
one name defined by two modules, is an error here, at export time. Data a config points to (the
``calibration.unseen`` texts, the ``loss.anchor_texts``) is embedded with the config and written to a
temporary file at run time.

The entry point runs ``run_submission``: it writes the untouched input as a valid checkpoint first
(hard links, under a second), then runs the configured method (RMU data-parallel over every GPU,
``repedit.launch``), or a proxy-ranked search over a grid on every GPU (``repedit.sweep.search``),
each replacing the output only atomically, and stops before the time budget (55 of the challenge's 60
minutes unless the config says otherwise).

>>> Path("submission.py").write_text(generate_submission(config={"method": "rmu", "adaptive": 5.0}))
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from repedit.calibration import unseen_tasks, unseen_texts
from repedit.checkpoint import read_config, save_edited
from repedit.config_fields import nest
from repedit.data import DataError
from repedit.distributed import world_size
from repedit.guard import check_options
from repedit.inline import PACKAGE, ExportError, Inliner, import_violations
from repedit.launch import processes_to_use, spread
from repedit.methods import config_from_dict, preset, run_method
from repedit.proxy import ProxyConfig
from repedit.runtime import Budget, pick_device, read_sets
from repedit.sweep import Candidate, read_grid, search

DEFAULT_BUDGET = 3300.0  # seconds: 55 of the challenge's 60, leaving time to start and for the last save

_TEMPLATE = '''\
"""SemEval-2025 Task 4 unlearning submission: {summary}.

The challenge calls ``unlearn`` (at the end of this file). Everything above it is repedit's code,
inlined by ``repedit export``.
"""

import json

from repedit.export import run_submission

SUBMISSION = json.loads({payload})


def unlearn(input_path_to_unlearning_candidate_model, output_path_to_write_unlearned_model,
            path_to_forget_set, path_to_retain_set):
    """Unlearn the forget set, keep the retain set, write the model and its tokenizer to the output path."""
    return run_submission(input_path_to_unlearning_candidate_model, output_path_to_write_unlearned_model,
                          path_to_forget_set, path_to_retain_set, SUBMISSION, globals().get("__file__"))
'''


# Runs before the inlined code. A harness may load the file by path (``spec_from_file_location``,
# ``exec_module``) without entering it in ``sys.modules``, where ``dataclasses`` looks a class's
# module up by name to read string annotations; this gives it the file's globals to read.
_PROLOGUE = '''\
import sys


class _ThisFile:
    """This file's globals in the place of its module, for a harness that did not register it."""


if sys.modules.get(__name__) is None:
    sys.modules[__name__] = _ThisFile()
    sys.modules[__name__].__dict__ = globals()
'''


# --- the submission at run time ---


def run_submission(model: str | Path, out: str | Path, forget: str | Path, retain: str | Path,
                   submission: dict, script: str | None = None) -> list[dict]:
    """What the generated ``unlearn`` does; ``submission`` is the embedded JSON (``generate_submission``).

    An error is printed and leaves the last valid checkpoint at ``out``: the challenge scores what is
    there. Returns one summary per run (a single run, or every search candidate).
    """
    deadline = time.time() + submission["time_budget"]
    model, out = Path(model), Path(out)
    save_edited(model, out, {})  # a valid checkpoint at once; everything after replaces it atomically
    try:
        with tempfile.TemporaryDirectory(prefix="repedit-calibration-") as scratch:
            local = _write_calibration(submission["calibration"], Path(scratch))
            search_spec = submission["search"]
            if search_spec is None:
                config = _calibrated(submission["config"], local)
                return [_run_single(model, forget, retain, out, config, deadline, script)]
            candidates = [Candidate(**{**c, "config": _calibrated(c["config"], local)})
                          for c in search_spec["candidates"]]
            return search(model, forget, retain, out, candidates, ProxyConfig(**search_spec["proxy"]),
                          search_spec["reference"], deadline, script)
    except Exception:
        traceback.print_exc()
        print(f"unlearn: stopped by the error above; {out} holds the last valid checkpoint (the input model "
              "unchanged unless one was saved before the error)", file=sys.stderr)
        return []


def _write_calibration(texts: dict[str, list[dict]], directory: Path) -> dict[str, str]:
    """The embedded text files as local files: exported path -> file here."""
    local = {}
    for index, (path, records) in enumerate(texts.items()):
        file = directory / f"calibration-{index}.jsonl"
        file.write_text("".join(json.dumps(record) + "\n" for record in records))
        local[path] = str(file)
    return local


# The text files a config may name (its JSON form's dotted key, and the option that reads it).
_TEXT_FILES = {"calibration.unseen": "--calibrate", "loss.anchor_texts": "--anchor-texts"}


def _text_paths(values: dict) -> dict[str, str]:
    """The text files a config's JSON form names: dotted key -> path."""
    nested = nest(values)
    found = {}
    for key in _TEXT_FILES:
        group, name = key.split(".")
        values_of_group = nested.get(group)
        path = values_of_group.get(name) if isinstance(values_of_group, dict) else None
        if path:
            found[key] = path
    return found


def _calibrated(values: dict, local: dict[str, str]) -> dict:
    """A config whose text files (paths on the machine that exported it) point here."""
    return {**values, **{key: local[path] for key, path in _text_paths(values).items()}}


def _run_single(model: Path, forget: str | Path, retain: str | Path, out: Path, values: dict, deadline: float,
                script: str | None) -> dict:
    """The configured run: RMU data-parallel over every GPU when started from the submission file
    (``repedit.launch``; rank 0 writes), else here, in this process."""
    processes = processes_to_use()
    if script and processes > 1 and values.get("method", "rmu") == "rmu":
        payload = {"model": str(model), "forget": str(forget), "retain": str(retain), "out": str(out),
                   "values": values, "deadline": deadline}
        return spread(script, _run_rank.__name__, payload, processes, deadline)
    return {**_run_here(model, forget, retain, out, values, deadline), "processes": 1}


def _run_rank(payload: dict) -> dict:
    """One rank of the data-parallel run: ``_run_here`` with the payload ``spread`` gave every rank."""
    summary = _run_here(Path(payload["model"]), payload["forget"], payload["retain"], Path(payload["out"]),
                        payload["values"], payload["deadline"])
    return {**summary, "processes": world_size()}


def _run_here(model: Path, forget: str | Path, retain: str | Path, out: Path, values: dict,
              deadline: float) -> dict:
    config = config_from_dict(dict(values))
    check_options(config)
    config.validate(read_config(model).num_hidden_layers)
    forget_rows, retain_rows = read_sets(forget, retain)
    device, dtype = pick_device()
    config.time_budget = deadline - time.time()
    budget = Budget(config.time_budget, leave_model=True)  # the challenge scores whatever is at ``out``
    result = run_method(model, forget_rows, retain_rows, out, config, device, dtype, budget, progress=True)
    return result.summary()


# --- generating the file ---


def generate_submission(config: dict | None = None, candidates: Sequence[Candidate] | None = None,
                        proxy: ProxyConfig | None = None, reference: Sequence[str] | None = None,
                        time_budget: float | None = None) -> str:
    """The submission file's text: one method ``config`` (JSON form), or a search over ``candidates``
    ranked by the proxy (``reference`` texts, never seen by the model, enable its MIA and utility
    terms). ``time_budget`` defaults to the config's, else ``DEFAULT_BUDGET``."""
    if (config is None) == (candidates is None):
        raise ExportError("export: give either --config or --search")
    if config is not None:
        try:
            parsed = config_from_dict(dict(config))
        except (TypeError, ValueError) as error:
            raise ExportError(f"--config: {error}") from None
        budget = time_budget or parsed.time_budget or DEFAULT_BUDGET
        summary = f"{parsed.method}, {budget:.0f} s budget"
        configs = [asdict(parsed)]
        spec: dict = {"config": configs[0], "search": None}
    else:
        if not candidates:
            raise ExportError("--search: no configurations")
        budget = time_budget or DEFAULT_BUDGET
        summary = f"search over {len(candidates)} configurations, {budget:.0f} s budget"
        search_spec = {"candidates": [asdict(c) for c in candidates], "proxy": asdict(proxy or ProxyConfig()),
                       "reference": list(reference) if reference else None}
        spec = {"config": None, "search": search_spec}
        configs = [c.config for c in candidates]
    spec.update(time_budget=budget, calibration=_calibration_texts(configs))
    template = _TEMPLATE.format(summary=summary, payload=_literal(_json_lines(spec)))
    source = Inliner().inline(template, _origin(), _PROLOGUE)
    bad = import_violations(source)
    if bad:
        raise ExportError(f"export: the generated file imports what the challenge may lack: {', '.join(bad)}")
    return source


def _calibration_texts(configs: Sequence[dict]) -> dict[str, list[dict]]:
    """The records (text, and task where every row has one) of every text file the configs name, to
    embed: the file stays behind, the per-task levels it gives do not."""
    texts: dict[str, list[dict]] = {}
    for values in configs:
        for key, path in _text_paths(values).items():
            if path in texts:
                continue
            try:
                documents, tasks = unseen_texts(path), unseen_tasks(path)
            except (DataError, OSError) as error:
                raise ExportError(f"{_TEXT_FILES[key]}: {error}") from None
            texts[path] = ([{"text": t} for t in documents] if tasks is None else
                           [{"text": t, "task": k} for t, k in zip(documents, tasks, strict=True)])
    return texts


def export(out: str | Path, config: str | Path | None = None, grid: str | Path | None = None,
           reference: str | Path | None = None, time_budget: float | None = None,
           preset_name: str | None = None, calibrate: str | Path | None = None,
           anchor_texts: str | Path | None = None) -> Path:
    """``repedit export``: read the config (a file, or the preset ``preset_name`` with its unseen texts ``calibrate``
    and the general texts its anchor holds, ``anchor_texts``) or grid, and the reference file; write the submission
    to ``out``."""
    values, candidates, proxy = None, None, None
    if config is not None:
        try:
            values = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ExportError(f"--config: {config}: {error}") from None
    if preset_name is not None:
        values = preset(preset_name)
        if calibrate is not None:
            values["calibration.unseen"] = str(calibrate)
        elif values.get("calibration") is not None:
            raise ExportError(f"--preset {preset_name}: calibrates; give --calibrate (texts the model never saw)")
        if anchor_texts is not None:
            values["loss.anchor_texts"] = str(anchor_texts)
    if grid is not None:
        candidates, proxy = read_grid(grid)
    texts = unseen_texts(str(reference)) if reference is not None else None
    source = generate_submission(values, candidates, proxy, texts, time_budget)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(source)
    return out


def _json_lines(value, depth: int = 0) -> str:
    """JSON with the top two levels one item a line (a config or a candidate stays on one line)."""
    pad = " " * (depth + 1)
    if depth < 2 and isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k)}: {_json_lines(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad[:-1] + "}"
    if depth <= 2 and isinstance(value, list) and value and isinstance(value[0], dict):
        return "[\n" + ",\n".join(pad + _json_lines(v, 2) for v in value) + "\n" + pad[:-1] + "]"
    return json.dumps(value)


def _literal(text: str) -> str:
    """A Python literal of ``text``: a raw triple-quoted string when that is exact, else ``repr``."""
    return repr(text) if "'''" in text or text.endswith("\\") else "r'''" + text + "'''"


def _origin() -> str:
    """repedit's version and commit, for the generated file's header."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "(not installed)"
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        command = ["git", "-C", str(root), *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", PACKAGE).strip()
    except (OSError, subprocess.CalledProcessError):
        return f"repedit {version}"
    return f"repedit {version}, commit {commit}" + (" with uncommitted changes in repedit/" if dirty else "")
