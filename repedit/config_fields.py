"""Config dataclasses' fields: each one's command-line option and help, and the typed JSON form.

Shared by ``repedit.rmu_config`` and ``repedit.baseline_configs``: a field's ``metadata`` (``option``)
gives its flag and help, from which ``repedit unlearn`` builds its options, and ``typed_values`` reads
a config's JSON form, naming the option of a value of the wrong type.
"""

from __future__ import annotations

from dataclasses import fields


def option(help: str, flag: str | None = None, choices: tuple[str, ...] | None = None) -> dict:
    """A field's metadata: its help text, its flag when not ``--field-name``, its choices."""
    return {"help": help, "flag": flag, "choices": choices}


def check_divides(part: int | None, whole: int, part_flag: str, whole_flag: str) -> None:
    """Raise a ValueError naming both options unless ``part`` (None: not set) divides ``whole``, the batch a
    micro-batch splits into passes."""
    if part is not None and not (0 < part <= whole and whole % part == 0):
        raise ValueError(f"{part_flag}: {part} does not divide {whole_flag} {whole}")


def nest(values: dict) -> dict:
    """``{"loss": {...}, "loss.alpha": 10}`` as ``{"loss": {..., "alpha": 10}}``: a dotted key overrides
    one field of its group (a grid's axis), after the group itself."""
    nested = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items() if "." not in k}
    for key, value in values.items():
        if "." in key:
            group, name = key.split(".", 1)
            if nested.get(group) is None:
                nested[group] = {}
            if not isinstance(nested[group], dict):
                raise ValueError(f"{key}: {group} is {nested[group]!r}, not an object")
            nested[group][name] = value
    return nested


_JSON_TYPES: dict[str, tuple[type, ...]] = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,),
                                            "None": (type(None),)}


def flag(f) -> str:
    """The command-line option of dataclass field ``f``."""
    return (f.metadata.get("flag") if f.metadata else None) or "--" + f.name.replace("_", "-")


def typed_values(cls, values: dict) -> dict:
    """The values of a config's JSON form for the plain fields of dataclass ``cls``, lists made tuples.

    A key ``cls`` lacks, or a value whose type its field does not take (``"alpha": "x"``,
    ``"layers": 5``), raises a ValueError naming the option, so that a bad grid fails when it is read,
    not when its run starts. Fields holding another config (``loss``) are left to the caller.
    """
    known = {f.name: f for f in fields(cls) if f.init}
    clean = {}
    for key, value in values.items():
        if key not in known:
            continue  # the caller refuses unknown keys, in its own words
        kinds = [part.strip() for part in str(known[key].type).split("|")]
        if not all(k in _JSON_TYPES or k.startswith("tuple[") for k in kinds):
            continue  # a nested config
        for kind in kinds:
            if kind.startswith("tuple["):
                items = _JSON_TYPES[kind[len("tuple["):].split(",")[0]]
                if isinstance(value, list | tuple) and all(_is(v, items) for v in value):
                    value = tuple(value)
                    break
            elif _is(value, _JSON_TYPES[kind]):
                break
        else:
            raise ValueError(f"{flag(known[key])}: got {value!r}, expected {known[key].type}")
        clean[key] = value
    return clean


def known_values(cls, values, where: str, moved: dict[str, str]) -> dict:
    """``typed_values``, refusing keys that ``cls`` lacks (saying where a ``moved`` one went)."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected an object, got {values!r}")
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        hints = "".join(f"; {key}: {moved[key]}" for key in unknown if key in moved)
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}{hints}")
    return typed_values(cls, values)


def _is(value, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))  # true is no number
