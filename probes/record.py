"""JSON round trips for the small result objects (probe, norm, lens and shift results)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

R = TypeVar("R", bound="Record")


class Record:
    """A dataclass mixin: ``to_json``/``from_json`` and ``save``/``load``.

    Fields hold plain JSON values (numbers, strings, lists, dicts); a class with nested records
    overrides ``from_dict``.
    """

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[R], values: dict[str, Any]) -> R:
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls: type[R], text: str) -> R:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        return cls.from_json(Path(path).read_text())
