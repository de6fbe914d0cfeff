"""The baselines' configs: the options every baseline shares, and each method's own.

>>> NPOConfig(epochs=5, beta=0.2).schedule(n_forget=64, n_retain=64)[0]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from repedit.config_fields import option, typed_values
from repedit.rmu_config import DETERMINISTIC
from repedit.schedules import Step, chunk_schedule, epoch_schedule


def _require_positive(config, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be at least 1")


@dataclass
class BaselineConfig:
    """Options every baseline shares.

    Trained weights: the decoder ``layers`` if given, else the top ``last_layers`` (all layers when
    the model has fewer), else the whole model, embeddings and head included; within a trained
    layer only the modules named in ``params`` (e.g. ``mlp.down_proj``) when given.
    """

    lr: float = field(default=1e-5, metadata=option("AdamW learning rate (the organizers' and the winners')"))
    epochs: int = field(default=10, metadata=option(
        "passes over the forget set (sugd: over each chunk); the organizers ran 10"))
    steps: int | None = field(default=None, metadata=option(
        "stop after this many optimizer steps; None: the epochs decide"))
    batch_size: int = field(default=32, metadata=option("forget rows per step, the organizers' batch"))
    max_length: int = field(default=512, metadata=option("tokens per row; SemEval rows are far shorter"))
    seed: int = field(default=0, metadata=option("row order"))
    retain_weight: float = field(default=1.0, metadata=option(
        "weight of NLL(retain); gradient difference as published weighs both terms 1"))
    layers: tuple[int, ...] | None = field(default=None, metadata=option(
        "decoder layers trained; overrides --last-layers"))
    last_layers: int | None = field(default=None, metadata=option("the top k decoder layers trained"))
    params: tuple[str, ...] = field(default=(), metadata=option(
        "modules trained inside each trained layer; empty: all of them"))
    time_budget: float | None = field(default=None, metadata=option(
        "seconds; a valid checkpoint exists before it ends"))
    deterministic: bool = field(default=False, metadata=option(DETERMINISTIC))
    method: str = field(default="", init=False)

    def trained_layers(self, num_hidden_layers: int) -> tuple[int, ...] | None:
        """The decoder layers whose weights train, or None for the whole model."""
        if self.layers is None and self.last_layers is not None:
            return tuple(range(max(0, num_hidden_layers - self.last_layers), num_hidden_layers))
        return self.layers

    def validate(self, num_hidden_layers: int) -> None:
        """Raise a ValueError naming the offending option."""
        if self.layers is not None:
            bad = [i for i in self.layers if not 0 <= i < num_hidden_layers]
            if not self.layers or bad:
                raise ValueError(f"--layers: layer(s) {bad} out of range or none given; "
                                 f"the model has layers 0..{num_hidden_layers - 1}")
        elif self.last_layers is not None:
            _require_positive(self, ("last_layers",))
        _require_positive(self, ("epochs", "batch_size", "max_length"))
        if self.steps is not None:
            _require_positive(self, ("steps",))
        if self.lr <= 0:
            raise ValueError("--lr: must be positive")
        if self.retain_weight < 0:
            raise ValueError("--retain-weight: must not be negative")

    def schedule(self, n_forget: int, n_retain: int) -> list[Step]:
        return epoch_schedule(n_forget, n_retain, self.batch_size, self.epochs, self.seed)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> BaselineConfig:
        """The config from its JSON form; keys of other methods (RMU's ``coeff``, ...) are refused."""
        method = cls().method
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(values) - known - {"method"})
        if unknown:
            options = ", ".join(f"{k} (--{k.replace('_', '-')})" for k in unknown)
            raise ValueError(f"{method}: option(s) {options} do not apply to {method}; "
                             f"its options: {sorted(known)}")
        if values.get("method", method) != method:
            raise ValueError(f"{method} config: method is {values['method']!r}, expected {method!r}")
        return cls(**typed_values(cls, values))


@dataclass
class GradDiffConfig(BaselineConfig):
    """Gradient difference, ``-NLL(forget) + retain_weight * NLL(retain)``, over the whole model by
    default: the organizers' baseline (10 epochs, batch 32, lr 1e-5)."""

    method: str = field(default="graddiff", init=False)


@dataclass
class NPOConfig(BaselineConfig):
    """NPO (Zhang et al. 2024), ``-(2/beta) logsigmoid(-beta (logp(forget) - logp_ref(forget)))`` on
    summed answer log-likelihoods, plus ``retain_weight * NLL(retain)``; otherwise as graddiff."""

    beta: float = field(default=0.1, metadata=option("inverse temperature (the NPO paper's and the organizers')"))
    method: str = field(default="npo", init=False)

    def validate(self, num_hidden_layers: int) -> None:
        super().validate(num_hidden_layers)
        if self.beta <= 0:
            raise ValueError("--beta: must be positive")


@dataclass
class SUGDConfig(BaselineConfig):
    """The 1st-placed team's sequential gradient difference: ``0.5 * CE_retain - CE_forget`` chunk by
    chunk, each forget row trained beside ``retain_ratio`` retain rows, the top layers only."""

    epochs: int = field(default=5, metadata=option("per chunk; not given in the notes: a starting point to tune"))
    batch_size: int = field(default=4, metadata=option(
        "forget rows per step; with 7 retain rows each, 32 rows: the organizers' batch"))
    retain_weight: float = field(default=0.5, metadata=option("the team's 0.5 * CE_retain"))
    last_layers: int | None = field(default=8, metadata=option("the team trained only the last layers"))
    chunk_size: int = field(default=32, metadata=option("forget rows per chunk (the team's)"))
    retain_ratio: int = field(default=7, metadata=option("retain rows per forget row, the team's ratio"))
    method: str = field(default="sugd", init=False)

    def validate(self, num_hidden_layers: int) -> None:
        super().validate(num_hidden_layers)
        _require_positive(self, ("chunk_size", "retain_ratio"))

    def schedule(self, n_forget: int, n_retain: int) -> list[Step]:
        return chunk_schedule(n_forget, n_retain, self.chunk_size, self.retain_ratio, self.batch_size,
                              self.epochs)
