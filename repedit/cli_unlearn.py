"""``repedit unlearn``: its options, derived from the methods' config dataclasses.

Every field of a method config (``RMUConfig`` and its ``Loss`` and ``Calibration`` groups, the
baselines' configs) becomes an option named by its metadata (``--calibrate-every``), with its help,
choices and default shown, in an argument group per method. Values stack: the config's defaults,
then ``--preset``, then ``--config``, then the options given; an error names where its value came from.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

from repedit.config_fields import flag, nest
from repedit.methods import METHODS, config_from_dict, preset, preset_names
from repedit.options import finite_float

logger = logging.getLogger(__name__)


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {text!r}") from None


def float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(finite_float(part) for part in text.split(",") if part.strip())
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def boolean(text: str) -> bool:
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return words[text.lower()]


def name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


_PARSERS: dict[str, Callable[[str], object]] = {"float": finite_float, "int": int, "str": str,
                                                 "tuple[int, ...]": int_list, "tuple[str, ...]": name_list,
                                                 "tuple[float, ...]": float_list, "bool": boolean}


def _groups(cls) -> list[tuple[str, type]]:
    """(JSON key prefix, dataclass) of a config and of the groups it nests (``loss.``, ``calibration.``)."""
    hints = typing.get_type_hints(cls)
    found: list[tuple[str, type]] = [("", cls)]
    for f in fields(cls):
        group = [a for a in (typing.get_args(hints[f.name]) or (hints[f.name],)) if isinstance(a, type)
                 and is_dataclass(a)]
        if f.init and group:
            found.append((f.name + ".", group[0]))
    return found


def options() -> dict[str, dict]:
    """Every option: its flag -> {path: JSON key per method, field, defaults per method}."""
    table: dict[str, dict] = {}
    for method, entry in METHODS.items():
        for prefix, cls in _groups(entry.config):
            for f in fields(cls):
                kind = str(f.type).split("|")[0].strip()
                if not f.init or kind not in _PARSERS:
                    continue
                option = table.setdefault(flag(f), {"field": f, "paths": {}, "defaults": {}, "group": method})
                option["paths"][method] = prefix + f.name
                default = f.default if f.default is not MISSING else None
                option["defaults"][method] = default
    return table


def add_unlearn_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=list(METHODS), help="rmu (default) or a baseline")
    parser.add_argument("--preset", choices=preset_names(), help="a named config shipped with repedit; "
                        "standins: the README's recipe, the representation edit (give --calibrate texts with a "
                        "task field); ascent: the bounded ascent it replaced (give --calibrate); published: the "
                        "paper's RMU")
    parser.add_argument("--config", type=Path, help="a JSON config; options given here override it")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, option in options().items():
        f = option["field"]
        title = {"rmu": "RMU (and options every method shares)"}.get(option["group"], option["group"])
        if option["paths"].get("rmu", "").startswith(("loss.", "calibration.", "repair.")):
            title = "RMU " + option["paths"]["rmu"].split(".")[0]
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        defaults = option["defaults"]
        shown = (repr(next(iter(defaults.values()))) if len(set(map(repr, defaults.values()))) == 1
                 else ", ".join(f"{m} {d!r}" for m, d in defaults.items()))
        methods = "" if len(option["paths"]) == len(METHODS) else f"[{', '.join(option['paths'])}] "
        choices = f.metadata.get("choices") if f.metadata else None
        text = (f.metadata.get("help") if f.metadata else None) or f.name.replace("_", " ")
        kind = str(f.type).split("|")[0].strip()
        alone = kind == "bool"  # --deterministic alone means true
        group.add_argument(name, type=_PARSERS[kind], default=None, choices=choices, nargs="?" if alone else None,
                           const=True if alone else None, help=f"{methods}{text} (default: {shown})".replace("%", "%%"))


def minus_lists_joined(argv: list[str]) -> list[str]:
    """``argv`` with each number list given after its flag and starting with a minus (``--calibrate-offsets
    -0.15,0.18,0.21``) joined to the flag by '=': argparse would read the list as an option of its own."""
    lists = {name for name, option in options().items() if str(option["field"].type).startswith("tuple[float")}
    joined: list[str] = []
    for word in argv:
        if joined and joined[-1] in lists and re.fullmatch(r"-\.?\d[\d.,eE+-]*", word):
            joined[-1] = f"{joined[-1]}={word}"
        else:
            joined.append(word)
    return joined


def add_model_and_sets(parser) -> None:
    """The input checkpoint and the two sets, as every unlearning command takes them."""
    parser.add_argument("--model", type=Path, required=True, help="input checkpoint directory")
    parser.add_argument("--forget", type=Path, required=True, help="forget set: directory or .jsonl/.parquet")
    parser.add_argument("--retain", type=Path, required=True, help="retain set: directory or .jsonl/.parquet")


def add_unlearn(sub) -> None:
    parser = sub.add_parser("unlearn", help="unlearn a forget set from a checkpoint (RMU by default)",
                            formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    add_model_and_sets(parser)
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint directory")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--log", type=Path, help="write one JSON line per step here")
    add_unlearn_options(parser)


def _config_file(args) -> dict:
    """The values of ``--config``, if given."""
    if args.config is None:
        return {}
    try:
        values = json.loads(args.config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--config: {args.config}: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config: {args.config}: expected a JSON object of options, got {type(values).__name__}")
    return values


def _preset(args) -> dict:
    return preset(args.preset) if args.preset else {}


def _method(args) -> str:
    return args.method or _config_file(args).get("method") or _preset(args).get("method") or "rmu"


def _given(args) -> dict:
    """The options given on the command line, by JSON key of the chosen method (``loss.alpha``)."""
    method, given = _method(args), {}
    for name, option in options().items():
        value = getattr(args, name.lstrip("-").replace("-", "_"))
        if value is not None:
            given[option["paths"].get(method, name.lstrip("-").replace("-", "_"))] = value
    return given


def _merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, group by group (``loss`` objects merge key by key)."""
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def _keys(values: dict, prefix: str = "") -> set[str]:
    """The JSON keys of ``values``, a group's fields as ``group.name``."""
    keys: set[str] = set()
    for key, value in nest(values).items():
        keys |= _keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


@contextmanager
def _named_as_given(args) -> Iterator[None]:
    """Errors that name an option (``--lr: ...``) say where its value came from: the command line,
    a key of ``--config``, of ``--preset``, or the default (``repedit unlearn`` with no ``--layers``)."""
    try:
        yield
    except ValueError as error:
        match = re.match(r"--([a-z][a-z-]*)", str(error))
        if match is None:
            raise
        option = options().get(match.group(0))
        path = option and option["paths"].get(_method(args))
        if option is None or path is None or path in _given(args):
            raise
        rest = str(error)[match.end():]
        if path in _keys(_config_file(args)):
            raise ValueError(f"--config {args.config}: {path!r}{rest}") from None
        if path in _keys(_preset(args)):
            raise ValueError(f"--preset {args.preset}: {path!r}{rest}") from None
        default = option["defaults"][_method(args)]
        raise ValueError(f"{match.group(0)} (not given; default {default!r}){rest}") from None


def unlearn_config_from_args(args):
    """The method config: defaults, then --preset, then --config, then the options given."""
    with _named_as_given(args):
        given = _given(args)
        values = _merge(nest(_preset(args)), nest(_config_file(args)))
        if args.method is not None:
            values["method"] = args.method
        values = {**values, **given}
        if "adaptive" in values and "coeff" not in values:
            values["coeff"] = None  # --adaptive replaces the fixed default coefficient
        return config_from_dict(values)


def run_unlearn(args) -> None:
    from repedit.curves import plot_curves
    from repedit.distributed import rank
    from repedit.unlearn import unlearn

    config = unlearn_config_from_args(args)
    with _named_as_given(args):
        result = unlearn(args.model, args.forget, args.retain, args.out, config, device=args.device,
                         dtype=args.dtype, log=args.log)
    if rank() != 0:  # a data-parallel run's other processes: the main one reports and writes
        return
    last = result.losses[-1] if result.losses else {}
    logger.info("%s: %d steps (%s), %s", result.method, len(result.losses), result.stopped,
                ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k not in ("step", "seconds")))
    logger.info("timings (s): %s", ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    logger.info("wrote %s (curves: %s)", result.output_dir, plot_curves(result, Path(args.out) / "unlearn_curves.png"))


__all__ = ["add_model_and_sets", "add_unlearn", "int_list", "name_list", "run_unlearn", "unlearn_config_from_args"]
