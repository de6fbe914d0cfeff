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
``calibrate`` texts) is embedded with the config and written to a temporary file at run time.

The entry point runs ``run_submission``: it writes the untouched input as a valid checkpoint first
(hard links, under a second), then runs the configured method, or a proxy-ranked search over a
grid on every GPU (``repedit.sweep.search``), each replacing the output only atomically, and stops
before the time budget (55 of the challenge's 60 minutes unless the config says otherwise).

>>> Path("submission.py").write_text(generate_submission(config={"method": "rmu", "adaptive": 5.0}))
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from repedit.calibration import unseen_texts
from repedit.checkpoint import read_config, save_edited
from repedit.data import DataError
from repedit.guard import check_options
from repedit.methods import config_from_dict, run_method
from repedit.proxy import ProxyConfig
from repedit.runtime import Budget, pick_device, read_sets
from repedit.sweep import Candidate, read_grid, search

PACKAGE = "repedit"
ALLOWED_PACKAGES = frozenset({"torch", "transformers", "pandas", "numpy"})  # beside the standard library
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


class ExportError(ValueError):
    """The submission cannot be generated; the message names the module, name or option."""


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
                return [_run_single(model, forget, retain, out, config, deadline)]
            candidates = [Candidate(**{**c, "config": _calibrated(c["config"], local)})
                          for c in search_spec["candidates"]]
            return search(model, forget, retain, out, candidates, ProxyConfig(**search_spec["proxy"]),
                          search_spec["reference"], deadline, script)
    except Exception:
        traceback.print_exc()
        print(f"unlearn: stopped by the error above; {out} holds the last valid checkpoint (the input model "
              "unchanged unless one was saved before the error)", file=sys.stderr)
        return []


def _write_calibration(texts: dict[str, list[str]], directory: Path) -> dict[str, str]:
    """The embedded calibration texts as local files: exported path -> file here."""
    local = {}
    for index, (path, documents) in enumerate(texts.items()):
        file = directory / f"calibration-{index}.jsonl"
        file.write_text("".join(json.dumps({"text": text}) + "\n" for text in documents))
        local[path] = str(file)
    return local


def _calibrated(values: dict, local: dict[str, str]) -> dict:
    """A config whose ``calibrate`` file (a path on the machine that exported it) points here."""
    return {**values, "calibrate": local[values["calibrate"]]} if values.get("calibrate") else values


def _run_single(model: Path, forget: str | Path, retain: str | Path, out: Path, values: dict,
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


def _calibration_texts(configs: Sequence[dict]) -> dict[str, list[str]]:
    """The texts of every ``calibrate`` file the configs name, to embed: the file stays behind."""
    texts = {}
    for values in configs:
        path = values.get("calibrate")
        if path and path not in texts:
            try:
                texts[path] = unseen_texts(path)
            except (DataError, OSError) as error:
                raise ExportError(f"calibrate: {error}") from None
    return texts


def export(out: str | Path, config: str | Path | None = None, grid: str | Path | None = None,
           reference: str | Path | None = None, time_budget: float | None = None) -> Path:
    """``repedit export``: read the config (or grid) and reference files, write the submission to ``out``."""
    values, candidates, proxy = None, None, None
    if config is not None:
        try:
            values = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ExportError(f"--config: {config}: {error}") from None
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


def import_violations(source: str) -> list[str]:
    """Imports in ``source`` beyond the standard library and ``ALLOWED_PACKAGES`` (``line N: module``),
    except inside ``try: ... except ImportError``, where a missing package is handled."""
    tree = ast.parse(source)
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(h.type) for h in node.handlers):
            optional.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." * node.level + (node.module or "")]
        else:
            continue
        for name in names:
            allowed = name.split(".")[0] in ALLOWED_PACKAGES or _is_stdlib(name)
            if not allowed and id(node) not in optional:
                bad.append(f"line {node.lineno}: {name or '.'}")
    return bad


def _catches_import_error(handler: ast.expr | None) -> bool:
    names = handler.elts if isinstance(handler, ast.Tuple) else [handler]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def _is_repedit(module: str | None) -> bool:
    return module is not None and (module == PACKAGE or module.startswith(PACKAGE + "."))


@dataclass
class _Unit:
    """One top-level statement of a module other than an import: a def, a class, an assignment, ..."""

    node: ast.stmt
    start: int  # first line (1-based), with its decorators and the comment lines right above it
    defines: frozenset[str]
    links: dict[str, tuple[str, str]]  # repedit names imported inside it: local name -> (module, name)
    drop: frozenset[int]  # lines of those imports, left out of the output


@dataclass
class _Module:
    name: str
    where: str  # for messages: repedit/rmu.py
    lines: list[str]
    docstring: str | None
    units: list[_Unit] = field(default_factory=list)
    by_name: dict[str, list[int]] = field(default_factory=dict)  # name -> indices of the units defining it
    links: dict[str, tuple[str, str]] = field(default_factory=dict)  # top-level repedit imports
    imports: dict[str, tuple] = field(default_factory=dict)  # other top-level imports: bound name -> key
    requires: set[str] = field(default_factory=set)  # repedit modules imported at top level


class Inliner:
    """Collects the definitions a piece of code needs from repedit, transitively, and writes them out."""

    def __init__(self) -> None:
        self.modules: dict[str, _Module] = {}
        self.included: dict[str, set[int]] = {}  # module -> indices of its included units, in discovery order
        self.imports: dict[tuple, str] = {}  # hoisted import key -> the module that needed it first

    def inline(self, entry_source: str, origin: str, prologue_source: str = "") -> str:
        """The entry point ``entry_source`` preceded by everything it uses from repedit, as one file;
        ``prologue_source`` runs first, before any inlined code."""
        entry = self._parse("__entry__", entry_source, "the entry point")
        prologue = self._parse("__prologue__", prologue_source, "the prologue")
        for own in (prologue, entry):
            self.modules[own.name] = own
            for index in range(len(own.units)):
                self._include(own, index)
        inlined = [m for m in self._import_order() if m not in (prologue.name, entry.name)]
        order = [m for m in (prologue.name, *inlined, entry.name) if m in self.included]
        self._check_names(order)
        sections = []
        for name in order:
            module = self.modules[name]
            body = self._body(module)
            sections.append(f"# --- from {module.where} ---\n\n{body}" if name in inlined else body)
        header = (f"# GENERATED by `repedit export` from {origin}.\n"
                  "# Do not edit: change repedit and export again. The code is inlined from\n"
                  f"# {', '.join(self.modules[n].where for n in inlined)}.\n")
        source = "\n\n\n".join([header + f'"""{entry.docstring}"""\n\nfrom __future__ import annotations\n\n'
                                + self._import_lines(), *sections]) + "\n"
        try:
            compile(source, "<submission>", "exec")
        except SyntaxError as error:
            raise ExportError(f"export: the inlined code does not compile: {error}") from None
        return source

    def _body(self, module: _Module) -> str:
        """The included units of ``module`` in source order, with the source's blank lines: two around
        definitions, none between consecutive constants."""
        body, previous = "", None
        for index in sorted(self.included[module.name], key=lambda i: module.units[i].start):
            unit = module.units[index]
            if previous is not None:
                definitions = isinstance(unit.node, _DEFINITIONS) or isinstance(previous.node, _DEFINITIONS)
                body += "\n\n\n" if definitions else "\n"
            body += self._text(module, unit)
            previous = unit
        return body

    # -- reading modules --

    def _module(self, name: str) -> _Module:
        if name not in self.modules:
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin is None:
                raise ExportError(f"export: cannot find module {name}")
            where = name.replace(".", "/") + ".py"
            self.modules[name] = self._parse(name, Path(spec.origin).read_text(), where)
        return self.modules[name]

    def _parse(self, name: str, source: str, where: str) -> _Module:
        tree = ast.parse(source)
        body = tree.body
        docstring = ast.get_docstring(tree, clean=False)
        if docstring is not None:
            body = body[1:]
        module = _Module(name, where, source.splitlines(), docstring)
        for node in body:
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                if any(alias.name != "annotations" for alias in node.names):
                    raise ExportError(f"{where}: line {node.lineno}: only `from __future__ import "
                                      "annotations` is kept")
            elif isinstance(node, ast.Import | ast.ImportFrom):
                for bound, target in _bindings(node, where):
                    if target[0] == PACKAGE:
                        module.links[bound] = target[1:]
                        module.requires.add(target[1])
                    else:
                        module.imports[bound] = target
            elif not _is_main_guard(node):
                unit = _unit(node, module.lines, where)
                for defined in unit.defines:
                    module.by_name.setdefault(defined, []).append(len(module.units))
                module.units.append(unit)
        return module

    # -- following names --

    def _include(self, module: _Module, index: int) -> None:
        """Include a unit and, through a work list, everything its names lead to."""
        work = [(module, index)]
        while work:
            module, index = work.pop()
            chosen = self.included.setdefault(module.name, set())
            if index in chosen:
                continue
            chosen.add(index)
            unit = module.units[index]
            for name in _names(unit.node):
                work.extend(self._resolve(module, name, unit.links))

    def _resolve(self, module: _Module, name: str, local: dict[str, tuple[str, str]]) -> list[tuple]:
        """The units ``name`` refers to in ``module`` (none for builtins, locals and hoisted imports);
        ``local`` holds the repedit names imported inside the unit that uses it."""
        if name in module.by_name:
            return [(module, i) for i in module.by_name[name]]
        link = local.get(name) or module.links.get(name)
        if link is not None:
            target, target_name = self._module(link[0]), link[1]
            if not any(target_name in table for table in (target.by_name, target.links, target.imports)):
                raise ExportError(f"{module.where}: imports {target_name!r} from {link[0]}, which lacks it")
            return self._resolve(target, target_name, {})
        if name in module.imports:
            self.imports.setdefault(module.imports[name], module.where)
        return []

    def _import_order(self) -> list[str]:
        """Included modules, each after the modules it imports at top level (run-time order)."""
        order: list[str] = []

        def visit(name: str) -> None:
            if name in order or name not in self.included:
                return
            for required in sorted(self.modules[name].requires):
                visit(required)  # top-level imports form no cycle: Python could not import them
            order.append(name)

        for name in self.included:
            visit(name)
        return order

    def _check_names(self, order: list[str]) -> None:
        """One namespace holds every module now: no name may be bound by two of them."""
        owner: dict[str, str] = {}

        def claim(name: str, by: str) -> None:
            if owner.setdefault(name, by) != by:
                raise ExportError(f"export: {name!r} is defined by {by} and by {owner[name]}; "
                                  "the submission is one namespace, so rename one")

        for key in self.imports:  # `import torch` and `import torch.nn` bind one name to one module
            plain = key[0] == "import" and key[2] is None
            claim(_bound(key), f"an import ({'import ' + _bound(key) if plain else _import_text(key)})")
        for name in order:
            module = self.modules[name]
            for index in self.included[name]:
                for defined in module.units[index].defines:
                    claim(defined, module.where)

    # -- writing --

    def _text(self, module: _Module, unit: _Unit) -> str:
        lines: list[str] = []
        for number in range(unit.start, _end(unit.node) + 1):
            if number in unit.drop:
                continue
            line = module.lines[number - 1]
            opened_block = lines and lines[-1].rstrip().endswith(":")
            if not line.strip() and number - 1 in unit.drop and opened_block:
                continue  # the blank line after a dropped import that opened a block
            lines.append(line)
        return "\n".join(lines)

    def _import_lines(self) -> str:
        plain = sorted(key for key in self.imports if key[0] == "import")
        froms: dict[str, list[str]] = {}
        for key in sorted(k for k in self.imports if k[0] == "from"):
            froms.setdefault(key[1], []).append(key[2] if key[3] is None else f"{key[2]} as {key[3]}")
        stdlib = [_import_text(k) for k in plain if _is_stdlib(k[1])]
        stdlib += [f"from {m} import {', '.join(names)}" for m, names in froms.items() if _is_stdlib(m)]
        other = [_import_text(k) for k in plain if not _is_stdlib(k[1])]
        other += [f"from {m} import {', '.join(names)}" for m, names in froms.items() if not _is_stdlib(m)]
        return "\n".join(stdlib) + "\n\n" + "\n".join(other)


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _end(node: ast.stmt) -> int:
    """The last line of a parsed statement (``end_lineno`` is set whenever the source was parsed)."""
    return node.end_lineno if node.end_lineno is not None else node.lineno


def _is_stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


def _bound(key: tuple) -> str:
    """The name an import key binds: ``("import", "torch.nn", None)`` binds ``torch``."""
    if key[0] == "import":
        return key[2] or key[1].split(".")[0]
    return key[3] or key[2]


def _import_text(key: tuple) -> str:
    if key[0] == "import":
        return f"import {key[1]}" + (f" as {key[2]}" if key[2] else "")
    return f"from {key[1]} import {key[2]}" + (f" as {key[3]}" if key[3] else "")


def _bindings(node: ast.Import | ast.ImportFrom, where: str) -> list[tuple[str, tuple]]:
    """(bound name, target) of each name an import binds: ``("repedit", module, name)`` for a repedit
    name, else a hoistable key ``("import", module, asname)`` / ``("from", module, name, asname)``."""
    if isinstance(node, ast.Import):
        if any(_is_repedit(alias.name) for alias in node.names):
            raise ExportError(f"{where}: line {node.lineno}: `import repedit...` cannot be inlined; "
                              "use from-imports")
        return [(a.asname or a.name.split(".")[0], ("import", a.name, a.asname)) for a in node.names]
    if node.level:
        raise ExportError(f"{where}: line {node.lineno}: relative imports cannot be inlined")
    if not _is_repedit(node.module):
        return [(a.asname or a.name, ("from", node.module, a.name, a.asname)) for a in node.names]
    bindings = []
    for alias in node.names:
        if alias.name == "*" or (alias.asname and alias.asname != alias.name):
            raise ExportError(f"{where}: line {node.lineno}: `{alias.name} as {alias.asname}` from "
                              f"{node.module} cannot be inlined; import names as they are")
        bindings.append((alias.name, (PACKAGE, node.module, alias.name)))
    return bindings


def _unit(node: ast.stmt, lines: list[str], where: str) -> _Unit:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    while start > 1 and lines[start - 2].startswith("#"):
        start -= 1
    links: dict[str, tuple[str, str]] = {}
    drop: set[int] = set()
    for inner in ast.walk(node):
        if isinstance(inner, ast.Import | ast.ImportFrom) and inner is not node:
            is_repedit = (_is_repedit(inner.module) if isinstance(inner, ast.ImportFrom)
                          else any(_is_repedit(a.name) for a in inner.names))
            if is_repedit:
                for bound, target in _bindings(inner, where):
                    links[bound] = target[1:]
                drop.update(range(inner.lineno, _end(inner) + 1))
    return _Unit(node, start, frozenset(_defined(node)), links, frozenset(drop))


def _defined(node: ast.AST) -> set[str]:
    """Names a top-level statement binds in the module namespace (not inside functions or classes)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        return {node.id}
    if isinstance(node, ast.Import | ast.ImportFrom):
        return {alias.asname or alias.name.split(".")[0] for alias in node.names}
    if isinstance(node, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
        return set()
    return set().union(*(_defined(child) for child in ast.iter_child_nodes(node)))


def _names(node: ast.AST) -> set[str]:
    return {inner.id for inner in ast.walk(node) if isinstance(inner, ast.Name)}


def _is_main_guard(node: ast.stmt) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")
