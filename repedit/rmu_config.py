"""``RMUConfig``: everything an RMU run depends on, typed, with its JSON form.

The paper's fields sit at the top (defaults: its Zephyr-7B settings); the terms beyond it are grouped
in ``Loss`` (each with a weight, 0 switching it off, so published RMU stays the default) and the stop
rule in ``Calibration`` (None: run ``steps``). Each field's ``metadata`` gives its command-line
option and help, from which ``repedit unlearn`` builds its flags.

>>> RMUConfig.from_dict({"layers": [5, 6, 7], "adaptive": 3.0, "loss": {"alpha": 100.0},
...                      "calibration": {"unseen": "unseen.jsonl", "tasks": ["Task3"]}})

A key ``"group.name"`` (``"loss.alpha": 10.0``) overrides one field of a group, so a grid can vary it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from repedit.config_fields import nest, option, positive_numbers, typed_values
from repedit.data import TASKS
from repedit.standins import COUNT

FORGET_TOKENS = ("all", "answer", "document", "particulars")
DESTINATIONS = ("control", "unseen")
LEVELS = ("auto", "frozen", "rising")
GOALS = ("median", "quantiles")


DETERMINISTIC = "torch's deterministic kernels: a seed repeats exactly on a GPU too (--deterministic false: off)"


@dataclass
class Loss:
    """The terms of the loss beyond the paper's forget term: each one's weight (0: off), which forget
    tokens are misdirected and where to, and how the whole-model terms are computed (``chunk``).
    Weights other than ``alpha`` are in units of c^2 / hidden size (per nat for the NLL terms), the
    misdirection term's size at the start, so a value carries across models."""

    alpha: float = field(default=1200.0, metadata=option(
        "retain term weight; large because mse averages over every hidden unit (paper: 1200)"))
    misdirection: float = field(default=1.0, metadata=option("forget (misdirection) term weight; 0: off"))
    retain_nll: float = field(default=0.0, metadata=option(
        "the retain answers' language-modelling loss: keeps exact answers, the EOS after them and long "
        "greedy completions (needs the whole model)"))
    forget_ascent: float = field(default=0.0, metadata=option(
        "a bounded ascent raising each forget row's NLL up to the unseen texts' level, never past it "
        "(needs --calibrate)"))
    anchor: float = field(default=0.0, metadata=option(
        "keeps the unseen texts' h_L at the frozen model's, as --alpha does the retain rows' (needs --calibrate)"))
    # Texts the anchor holds and calibration never scores: a stop rule scoring held texts would see the
    # kinds stand still while unheld text of the same kinds rises with the forget documents.
    anchor_texts: str | None = field(default=None, metadata=option(
        "texts the anchor holds instead of the --calibrate texts, or beside the stand-ins' with "
        "--calibrate-standins (.jsonl: text or document; at most 1,024), e.g. generated documents of the "
        "forget set's kinds and general text"))
    # Unseen text of every kind with no unseen document in it. Beside the stand-ins' anchors, general text rose 1.9-2.1%
    # where with theirs alone 2.3-2.5% (BENCHMARKS.md, twenty-sixth call); in their place, they held less (fifth build).
    invented_anchors: int = field(default=0, metadata=option(
        "documents of every kind invented by repedit.synth (a story, a PII biography, a Wikipedia-style "
        "biography each) that the anchor holds beside --anchor-texts' (1,024 texts in all at most); 0: none"))
    # The anchor's texts in their order (invented, the stand-ins' kind by kind, held), a batch a step, cycled: the
    # forget documents' NLL swings with the period of its batches (BENCHMARKS.md, forty-first and fiftieth calls).
    anchor_shuffle: bool = field(default=False, metadata=option(
        "hold the anchor's texts in an order drawn with --seed, so that every step's batch mixes them (the "
        "invented documents, the stand-ins', the held ones), not one group after another"))
    # "answer": the tokens that predict each row's answer, not the prompts forget and retain rows share;
    # "document": answers of QA rows and every token of a sentence completion, the whole document a
    # membership attack scores; "particulars": of those, the tokens no other document shares
    # (repedit.particulars), not the template the documents of a kind share.
    forget_tokens: str = field(default="all", metadata=option(
        "forget tokens misdirected: all; answer: those predicting an answer; document: QA answers and "
        "every token of sentence completions; particulars: of those, the tokens whose n-gram "
        "(--particulars-ngram) no other forget or retain document has", choices=FORGET_TOKENS))
    # By bigram, a value whose every token follows the same token somewhere else (a phone number's digits,
    # a date) is template; by a longer n-gram it is the document's own, and so are template words in an
    # order only this document has.
    particulars_ngram: int = field(default=2, metadata=option(
        "with --forget-tokens particulars: a token is a particular when the n tokens ending at it occur in "
        "that order in no other forget or retain document (2: bigrams; 4 counts more tokens as particulars)"))
    # "unseen": the frozen model's mean h_L over the unseen texts of the forget row's task: reachable, and
    # what unseen text looks like there (c then only sets the units of the weights above).
    destination: str = field(default="control", metadata=option(
        "where forget activations go: control, c x u (paper); unseen: the frozen model's mean h_L on the "
        "unseen texts (--calibrate) of each row's task", choices=DESTINATIONS))
    chunk: int = field(default=0, metadata=option(
        "low-memory mode of the whole-model terms: recompute the layers above L in backward and run the "
        "LM head on this many positions at a time (e.g. 4096); 0: off, fastest"))


@dataclass
class Calibration:
    """The stop rule: bring forget documents to the NLL of text the model never saw, document by document.

    Each forget document's rows leave the forget terms once its NLL reaches the unseen texts' median
    (its task's, when every unseen text has a ``task``), or with ``goals`` "quantiles" their NLL at its rank's
    quantile; the run stops once a loss attack tells no task's
    forget documents from the unseen texts (AUC within ``tolerance`` of 0.5) or every document is there,
    keeping the checked weights that came closest: near the level, documents swing across it.
    """

    unseen: str | None = field(default=None, metadata=option(
        "texts the model never saw (.jsonl: text or document, optional task): calibrate against them",
        flag="--calibrate"))
    tolerance: float = field(default=0.05, metadata=option(
        "stop once every task's attack AUC is within this of 0.5 (MIA score 0.9)", flag="--calibrate-tolerance"))
    every: int = field(default=5, metadata=option("steps between calibration checks", flag="--calibrate-every"))
    # Only these tasks must land within the tolerance from either side; any other need only stop looking
    # more familiar than the unseen texts: how unlikely unseen text of its own kind is, texts of another
    # kind cannot say (Wikipedia text, of stories).
    tasks: tuple[str, ...] | None = field(default=None, metadata=option(
        "the tasks whose documents the unseen texts are like, e.g. Task3 for Wikipedia text (default: all)",
        flag="--calibrate-tasks"))
    # An edit that raises unseen text too lifts a level re-measured at each check, and an ascent bounded by
    # it may chase it (suspected in the ascent recipe's rise on the 40/12 sim; measured once, a frozen level
    # did not stop that rise); a level measured once is where a retrain oracle's forget documents sit.
    level: str = field(default="auto", metadata=option(
        "the level(s) documents are brought to: frozen, measured once on the frozen model; rising, the "
        "unseen texts' median re-measured at every check; auto: rising for one level, frozen per task",
        flag="--calibrate-level", choices=LEVELS))
    # A retrain oracle's forget documents spread as unseen ones do: on the sim's forty-second build 22 of its 34
    # Wikipedia biographies sat below their kind's median level, and on train a set spread as the stop rule's texts
    # was KS 0.12-0.26 from withheld documents where the median's floor was 0.40-0.50 (BENCHMARKS.md, forty-second
    # call): every document at the median is an overshoot; the quantiles ask each for the texts' NLL at its rank.
    goals: str = field(default="median", metadata=option(
        "each forget document's goal: median, its kind's level; quantiles, the unseen texts' NLL at the quantile of "
        "its rank among its kind's forget documents", flag="--calibrate-goals", choices=GOALS))
    # The challenge gives unseen text of one kind; calibrated on it alone, the edit overshoots the others.
    standins: float | None = field(default=None, metadata=option(
        "make stand-ins for the forget tasks the --calibrate texts (with a task field) lack: retain documents "
        "with their particulars swapped (words in fewer than this share of a task's documents; e.g. 0.1), as "
        "unfamiliar as the texts of a task they have; the anchor then holds others and recombined documents "
        "(--calibrate-standin-anchors)", flag="--calibrate-standins"))
    # Measured on the 40/12 sim's train split (BENCHMARKS.md, "Seventeenth and eighteenth calls"): at the
    # fraction matched on Wikipedia biographies, PII stand-ins sit 31% above unseen PII biographies, stories' 2%.
    standin_scales: tuple[float, ...] | None = field(default=None, metadata=option(
        "each task's swap fraction (Task1,Task2,Task3) as a multiple of the matched one, e.g. 0.94,0.63,1",
        flag="--calibrate-standin-scales"))
    # A kind's level is a median over random swaps of a few documents: the sim's PII level sat 14.2% under validation's
    # withheld biographies with 24 stand-ins, 2.8% over with 96 (BENCHMARKS.md, CPU section "How many stand-ins").
    standin_count: int = field(default=COUNT, metadata=option(
        "stand-ins of each kind the stop rule scores, and again the anchor holds: its half of the retain documents "
        "swapped with seeds 0, 1, ... until there are this many; more average out the swaps' chance",
        flag="--calibrate-standin-count"))
    # Held with the stand-ins' retain documents, the stop rule's stand-ins rose less than withheld documents of their
    # kind (PII biographies +6.8% against +16.6%): its reference sat low (BENCHMARKS.md, fifty-first call).
    standin_anchors: bool = field(default=True, metadata=option(
        "with --calibrate-standins, the anchor holds the other half of the retain documents swapped and recombined "
        "documents too (false: only --anchor-texts', --invented-anchors' and the held ones)",
        flag="--calibrate-standin-anchors"))
    # The held-out attack follows the stop rule's at the written check (r 0.97 over the forty-third call's thirteen
    # runs), which lands 0.09-0.20 from chance among checks that swing: a scaled edit lands nearer.
    edit_scales: tuple[float, ...] | None = field(default=None, metadata=option(
        "after the run, also score the written check's edit scaled by each of these (frozen + s x the edit; e.g. "
        "0.98,0.99,1.01,1.02: 4% less of it undid most of the forgetting on the sim) and write whichever of them and "
        "the check comes closest to calibrated",
        flag="--calibrate-edit-scales"))
    # The forget documents' NLL swings with the anchor's cycle of 17 batches, up to 1.5 nats between checks; averaged
    # over 18 steps the checks moved a fifth as far on both splits, but the held-out attack still read 0.06-0.12 of AUC
    # above the stop rule's, and final fell (BENCHMARKS.md, fiftieth and fifty-first calls).
    average: int | None = field(default=None, metadata=option(
        "score and write the edited weights as an exponential average over about this many steps (1 - 1/STEPS a "
        "step; e.g. 18: the preset's anchor cycles in 17 batches), not as the last step left them; one more copy of "
        "the edited weights", flag="--calibrate-average"))
    # Past the written check a run goes on until every document is at its level (on train, up to 510 steps of 1,750):
    # over the 106 recorded runs, 150 steps' patience writes the same check in each, 100 not (fifty-first call).
    patience: int | None = field(default=None, metadata=option(
        "stop once this many steps pass with no check closer to calibrated than the best; the best is written "
        "either way", flag="--calibrate-patience"))
    # The stop rule's attack re-scores the unseen texts and nothing else holds them: an edit that lifts them
    # lifts the level the forget documents are chased to (Wikipedia biographies overshot; BENCHMARKS.md,
    # "Nineteenth call"). Anchoring some of them holds the kind; calibration keeps the rest as unseen.
    anchor_share: float = field(default=0.0, metadata=option(
        "the share of each task's --calibrate texts the anchor holds instead of the stop rule (0.5: every "
        "other one), beside its other texts; needs --anchor", flag="--calibrate-anchor-share"))


@dataclass
class RMUConfig:
    """Everything an RMU run depends on. Defaults are the paper's Zephyr-7B settings."""

    layers: tuple[int, ...] = field(default=(5, 6, 7), metadata=option(
        "edited layers, the paper's L-2, L-1, L; the last one's output is misdirected"))
    params: tuple[str, ...] = field(default=("mlp.down_proj",), metadata=option(
        "modules trained inside each edited layer"))
    coeff: float | None = field(default=6.5, metadata=option(
        "steering coefficient c (paper, Zephyr-7B: 6.5); must exceed typical norms at L"))
    adaptive: float | None = field(default=None, metadata=option(
        "beta: c = beta x mean norm of the frozen forget activations (adaptive RMU); overrides --coeff"))
    lr: float = field(default=5e-5, metadata=option("AdamW learning rate"))
    steps: int = field(default=150, metadata=option("optimizer steps (with --calibrate: at most)"))
    batch_size: int = field(default=4, metadata=option("forget rows per step, and as many retain rows"))
    # At 7B the preset's 64 + 64 rows of 512 tokens need more than a 40 GB card in one pass.
    micro_batch: int | None = field(default=None, metadata=option(
        "rows of each set a forward and backward pass takes (dividing --batch-size); a step sums its passes' "
        "gradients, equal to one pass's: the same run in less memory (default: the whole batch)"))
    max_length: int = field(default=512, metadata=option("tokens per row"))
    seed: int = field(default=0, metadata=option("random seed: control vector, data order"))
    time_budget: float | None = field(default=None, metadata=option(
        "seconds; a valid checkpoint exists before it ends"))
    deterministic: bool = field(default=False, metadata=option(DETERMINISTIC))
    loss: Loss = field(default_factory=Loss, metadata=option("loss terms beyond the paper's"))
    calibration: Calibration | None = field(default=None, metadata=option("the stop rule"))
    method: str = field(default="rmu", init=False)

    @property
    def layer(self) -> int:
        """L, the layer whose output is misdirected: the last edited one."""
        return max(self.layers)

    def trained_layers(self, num_hidden_layers: int) -> tuple[int, ...]:
        """The decoder layers whose weights train (as ``BaselineConfig.trained_layers``)."""
        return self.layers

    @property
    def pass_rows(self) -> int:
        """Rows of each set a forward and backward pass takes: ``micro_batch``, or the whole batch."""
        return self.micro_batch or self.batch_size

    @property
    def passes(self) -> int:
        """Forward and backward passes a step takes."""
        return self.batch_size // self.pass_rows

    @property
    def needs_whole_model(self) -> bool:
        """Only the retain NLL term and calibration read the layers above L and the LM head."""
        return self.loss.retain_nll > 0 or self.calibration is not None

    def validate(self, num_hidden_layers: int) -> None:
        """Raise a ValueError naming the offending option."""
        if not self.layers:
            raise ValueError("--layers: give at least one layer")
        bad = [i for i in self.layers if not 0 <= i < num_hidden_layers]
        if bad:
            raise ValueError(f"--layers: layer(s) {bad} out of range; the model has layers 0..{num_hidden_layers - 1}")
        if self.coeff is None and self.adaptive is None:
            raise ValueError("--coeff or --adaptive: one is required")
        for name in ("steps", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be at least 1")
        if self.micro_batch is not None and not (0 < self.micro_batch <= self.batch_size
                                                 and self.batch_size % self.micro_batch == 0):
            raise ValueError(f"--micro-batch: {self.micro_batch} does not divide --batch-size {self.batch_size}")
        if self.lr <= 0:
            raise ValueError("--lr: must be positive")
        if self.loss.chunk < 0:
            raise ValueError("--chunk: must be 0 (off) or a number of positions")
        loss = self.loss
        for name in ("alpha", "misdirection", "retain_nll", "forget_ascent", "anchor"):
            if not math.isfinite(getattr(loss, name)):
                raise ValueError(f"--{name.replace('_', '-')}: {getattr(loss, name)!r} is not a finite number")
            if getattr(loss, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')}: a weight must be >= 0")
        for name, choices in (("destination", DESTINATIONS), ("forget_tokens", FORGET_TOKENS)):
            if getattr(loss, name) not in choices:
                raise ValueError(f"--{name.replace('_', '-')}: {getattr(loss, name)!r}; choose one of "
                                 f"{', '.join(choices)}")
        if loss.particulars_ngram < 1:
            raise ValueError(f"--particulars-ngram: {loss.particulars_ngram}: at least 1 token, e.g. 4")
        calibration = self.calibration
        if loss.invented_anchors < 0:
            raise ValueError(f"--invented-anchors: {loss.invented_anchors}: a count of documents, >= 0")
        for given, used in (("--anchor-texts", loss.anchor_texts is not None),
                            ("--invented-anchors", loss.invented_anchors > 0),
                            ("--anchor-shuffle", loss.anchor_shuffle)):
            if used and loss.anchor <= 0:
                raise ValueError(f"{given}: needs --anchor > 0 (the weight that holds them)")
        if loss.anchor_texts is not None and not Path(loss.anchor_texts).is_file():
            raise ValueError(f"--anchor-texts: {loss.anchor_texts}: no such file")
        if calibration is None:
            for given, used in (("--destination unseen", loss.destination == "unseen"), ("--anchor", loss.anchor > 0),
                                ("--forget-ascent", loss.forget_ascent > 0)):
                if used:
                    raise ValueError(f"{given}: needs --calibrate (the unseen texts, whose NLL and h_L it reads)")
            return
        if not 0 <= calibration.tolerance < 0.5:  # NaN too
            raise ValueError("--calibrate-tolerance: must be in [0, 0.5)")
        for flag, value, allowed in (("--calibrate-level", calibration.level, LEVELS),
                                     ("--calibrate-goals", calibration.goals, GOALS)):
            if value not in allowed:
                raise ValueError(f"{flag}: {value!r}; choose one of {', '.join(allowed)}")
        if calibration.standins is not None and not 0 < calibration.standins <= 1:
            raise ValueError(f"--calibrate-standins: {calibration.standins}: a share in (0, 1], e.g. 0.1")
        scales = calibration.standin_scales
        if scales is not None and (calibration.standins is None or len(scales) != len(TASKS)
                                   or not positive_numbers(scales)):
            raise ValueError(f"--calibrate-standin-scales: {','.join(map(str, scales))}: one positive number a task "
                             f"({','.join(TASKS)}), with --calibrate-standins")
        for flag, count, least in (("every", calibration.every, 1), ("patience", calibration.patience, 1),
                                   ("average", calibration.average, 2),  # averaged over 1: the last step
                                   ("standin-count", calibration.standin_count, 1)):
            if count is not None and count < least:
                raise ValueError(f"--calibrate-{flag}: {count}: at least {least}")
        if calibration.edit_scales is not None and not positive_numbers(calibration.edit_scales):
            raise ValueError(f"--calibrate-edit-scales: {','.join(map(str, calibration.edit_scales))}: positive "
                             "numbers, e.g. 0.98,0.99,1.01,1.02")
        if not 0 <= calibration.anchor_share < 1:  # NaN too
            raise ValueError(f"--calibrate-anchor-share: {calibration.anchor_share}: a share in [0, 1), e.g. 0.5")
        if calibration.anchor_share > 0 and loss.anchor <= 0:
            raise ValueError("--calibrate-anchor-share: needs --anchor > 0 (the weight that holds the texts)")
        own = bool(loss.anchor_texts or loss.invented_anchors or calibration.anchor_share > 0)  # the anchor's texts
        if not calibration.standin_anchors and (calibration.standins is None or not own):
            raise ValueError("--calibrate-standin-anchors: false needs --calibrate-standins, and texts of the anchor's "
                             "own (--anchor-texts, --invented-anchors or --calibrate-anchor-share) to hold instead")
        if loss.anchor_shuffle and not (own or calibration.standins is not None):
            raise ValueError("--anchor-shuffle: the anchor holds the --calibrate texts as the stop rule scores them; "
                             "give it texts of its own (--anchor-texts, --invented-anchors, --calibrate-standins or "
                             "--calibrate-anchor-share) to shuffle")
        if calibration.unseen is None:
            raise ValueError("--calibrate: not given; calibration needs the unseen texts")
        if not Path(calibration.unseen).is_file():
            raise ValueError(f"--calibrate: {calibration.unseen}: no such file")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> RMUConfig:
        """The config from its JSON form: nested objects for ``loss`` and ``calibration``, and
        ``"loss.alpha"``-style keys overriding one field of a group."""
        if values.get("method", "rmu") != "rmu":
            raise ValueError(f"RMU config: method is {values['method']!r}, expected 'rmu'")
        values = nest({k: v for k, v in values.items() if k != "method"})
        clean = _known(cls, values, "RMU config")
        clean["loss"] = Loss(**_known(Loss, values.get("loss") or {}, "RMU config: loss"))
        if values.get("calibration") is not None:
            clean["calibration"] = Calibration(**_known(Calibration, values["calibration"], "RMU config: calibration"))
        return cls(**clean)


def _known(cls, values, where: str) -> dict:
    """``typed_values``, refusing keys that ``cls`` lacks."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected an object, got {values!r}")
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        moved = "".join(f"; {key}: {MOVED[key]}" for key in unknown if key in MOVED)
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}{moved}")
    return typed_values(cls, values)


# Keys of the flat JSON form before issue #20, and where their values go now.
MOVED = {**{name: f"now loss.{name}" for name in ("alpha", "misdirection", "retain_nll", "forget_ascent", "anchor",
                                                  "forget_tokens", "destination")},
         **{f"calibrate_{name}": f"now calibration.{name}" for name in ("every", "tolerance", "tasks")},
         "calibrate": "now calibration.unseen", "calibrate_by": "removed: calibration is by document",
         "calibrate_margin": "removed", "target_layer": "removed: the last of layers is misdirected"}
