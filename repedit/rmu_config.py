"""``RMUConfig``: everything an RMU run depends on, typed, with its JSON form.

The paper's fields sit at the top (defaults: its Zephyr-7B settings); the terms beyond it are grouped
in ``Loss`` (each with a weight, 0 switching it off, so published RMU stays the default), the stop
rule in ``Calibration`` (None: run ``steps``) and the repair above the edit in ``Repair`` (0 rounds: none).
Each field's ``metadata`` gives its command-line option and help, from which ``repedit unlearn`` builds its
flags. A key ``"group.name"`` (``"loss.alpha": 10.0``) overrides one field of a group, so a grid can vary it:

>>> RMUConfig.from_dict({"layers": [5, 6, 7], "adaptive": 3.0, "loss": {"alpha": 100.0},
...                      "calibration": {"unseen": "unseen.jsonl", "tasks": ["Task3"]}, "repair.rounds": 2})
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from repedit.calibration_config import Calibration
from repedit.config_fields import check_divides, known_values, nest, option
from repedit.data import TASKS
from repedit.repair_config import Repair

FORGET_TOKENS = ("all", "answer", "document", "particulars")
DESTINATIONS = ("control", "unseen")


# A pass's rows x tokens x hidden size at most where --micro-batch is not given: OLMo-7B's 8 rows of 512 tokens, the
# preset's passes, 31.3 GiB there with its --offload (BENCHMARKS.md, "Fifty-sixth call"). Small models: one pass.
PASS_ELEMENTS = 8 * 512 * 4096
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
    # The retain NLL runs the layers above L on the retain rows: at 7B 70% of c20's step. One row in k each step is the
    # same gradient in expectation, but in passes of 8 it saved 4% (BENCHMARKS.md, "Seventy-second call").
    retain_nll_stride: int = field(default=1, metadata=option(
        "with --retain-nll: the term reads one in this many of each step's retain rows, by their place in the retain "
        "set, the next one each time the loop comes round to the batch, so every row is read once in that many rounds "
        "(the layers above L run on those alone); 1: every row"))
    retain_nll_tokens: int = field(default=0, metadata=option(
        "with --retain-nll, where a step runs in passes (--micro-batch): the layers above L run ahead of them on its "
        "retain rows sorted by length, at most this many tokens a pass (rows x the longest), and the term's gradient "
        "at h_L enters each pass (repedit.retain_ahead): the same edit in fewer, less padded passes of the whole "
        "model, the step's own passes keeping --micro-batch's memory; the preset: 2048; 0: in each pass"))
    forget_ascent: float = field(default=0.0, metadata=option(
        "a bounded ascent raising each forget row's NLL up to the unseen texts' level, never past it "
        "(needs --calibrate)"))
    anchor: float = field(default=0.0, metadata=option(
        "keeps the unseen texts' h_L at the frozen model's, as --alpha does the retain rows' (needs --calibrate)"))
    # Texts the anchor holds and calibration never scores: a stop rule scoring held texts would see the
    # kinds stand still while unheld text of the same kinds rises with the forget documents.
    anchor_texts: str | None = field(default=None, metadata=option(
        "texts the anchor holds instead of the --calibrate texts, or beside the stand-ins' with "
        "--calibrate-standins (.jsonl: text or document; at most --anchor-limit), e.g. generated documents of the "
        "forget set's kinds and general text"))
    # Unseen text of every kind with no unseen document in it. Beside the stand-ins' anchors, general text rose 1.9-2.1%
    # where with theirs alone 2.3-2.5% (BENCHMARKS.md, twenty-sixth call); in their place, they held less (fifth build).
    invented_anchors: int = field(default=0, metadata=option(
        "documents of every kind invented by repedit.synth (a story, a PII biography, a Wikipedia-style "
        "biography each) that the anchor holds beside --anchor-texts' (--anchor-limit texts in all at most); 0: none"))
    # The sim reads the invented PII biographies at 8.74 nats a token and its unseen ones at 3.45: held, the invented
    # stayed while unseen ones rose +14% (sixty-fourth call); retain ones with other names and numbers read 3.72.
    recombined_pii_anchors: int = field(default=0, metadata=option(
        "retain PII biographies (Task2) with other retain people's names and new numbers (repedit.synth."
        "recombine_fields, drawn with --seed) that the anchor holds after --anchor-texts' and before "
        "--invented-anchors' (--anchor-limit texts in all at most): unseen PII biographies as a model trained on "
        "the challenge's reads them; 0: none"))
    # At 1,024 the preset's 768 invented documents and 372 stand-ins' texts leave out the last 116: all the Wikipedia
    # biographies' swaps and 20 of the PII biographies' (BENCHMARKS.md, forty-sixth call); at 7B each 1,024 more
    # texts of 512 tokens cache about 4 GiB. Holding them all (2,048): not chosen on train, behind on validation
    # (final 0.625, retain min 0.887; BENCHMARKS.md, fifty-seventh call).
    anchor_limit: int = field(default=1024, metadata=option(
        "the most texts the anchor holds (--anchor-texts', --recombined-pii-anchors', --invented-anchors', then the "
        "stand-ins' kind by kind; the held --calibrate texts come on top): the last ones past it are left out, and "
        "the run says so"))
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
    # The mean draws every forget token of a kind to one point, the template's features with the document's; keeping
    # the kind's main directions (repedit.subspace) halved the unseen PII biographies' rise on the tiny target of real
    # documents, and on the sim stalled the forgetting of stories and Wikipedia biographies, whose main directions
    # carry the documents' own content (BENCHMARKS.md, "The kind's directions kept in the goal").
    destination_keep: tuple[float, ...] | None = field(default=None, metadata=option(
        "with --destination unseen: each task's share (Task1,Task2,Task3; 0 <= share < 1) of its unseen texts' "
        "variance at L whose principal directions the goal keeps from the frozen forget state (the goal: the kind's "
        "mean plus that projection of the state's difference from it), e.g. 0,0.4,0; 0: the mean alone"))
    # The shares by hand were read off each build's train table, the largest whose goal clears the kind's level by two
    # nats (BENCHMARKS.md, sixty-first to sixty-fourth calls); the run reads the same on its own forget set.
    destination_keep_margin: float | None = field(default=None, metadata=option(
        "with --destination unseen and --calibrate, in place of --destination-keep: each task's share is the "
        "largest of 0.05-0.5 whose goal, written in exactly at L, takes its forget documents' median NLL this many "
        "nats past its stop level (0 where none does), read on the frozen model before the first step, e.g. 2"))
    # Relearning goes around the edit through the layers below it (BENCHMARKS.md, "Tried and removed"). At 0.1, on the
    # tiny target of real documents, relearning gave back 0.60 of the NLL gap against 0.75-0.79, and unseen PII
    # biographies rose +20-26% against +3-12% (BENCHMARKS.md, "A latent adversary against relearning"). On the sim, one
    # step at 0.1 beside the preset: 0.23 against 0.57, unseen stories and Wikipedia biographies +16-17% against +7-8%,
    # and it does the same with its anchor in the ball, 0.20 at +13-15% ("Sixty-ninth call").
    latent_epsilon: float = field(default=0.0, metadata=option(
        "each forget row's input to the first edited layer perturbed, within this share of each token's norm, the way "
        "that most undoes the misdirection, before the forget term is taken (repedit.latent: targeted latent "
        "adversarial training, against relearning), e.g. 0.1; 0: off"))
    latent_steps: int = field(default=4, metadata=option(
        "with --latent-epsilon or --latent-anchor: the adversaries' steps of projected gradient ascent (each one more "
        "pass of the edited layers)"))
    # Alone, the forget rows' ball misdirects unseen texts of their kinds too; with the anchor held in a ball of the
    # same size, the edit gave relearning 0.55-0.60 of the gap against 0.60-0.66, the withheld documents rising +8-11%
    # against +11-15% (tiny target of real documents; BENCHMARKS.md, "The anchor held in a ball too"). The anchor's
    # ball alone (0.1) moved them +5.7% against +6.7% with the kinds nearer chance ("The anchor alone in a ball").
    latent_anchor: float = field(default=0.0, metadata=option(
        "the anchor's texts held in a ball of this share of each token's norm: each anchor batch's inputs perturbed "
        "(--latent-steps steps) away from the frozen model's states, and the anchor term taken there, so the edit "
        "stays flat around unseen text; with --latent-epsilon or without; e.g. 0.1; 0: off"))
    chunk: int = field(default=0, metadata=option(
        "low-memory mode of the whole-model terms: recompute the layers above L in backward and run the "
        "LM head on this many positions at a time (e.g. 4096); 0: off, fastest"))

    @property
    def has_own_anchor_texts(self) -> bool:
        """Whether the anchor is given texts of its own (--anchor-texts, --recombined-pii-anchors, --invented-anchors)
        rather than the --calibrate texts."""
        return bool(self.anchor_texts or self.recombined_pii_anchors or self.invented_anchors)

    @property
    def keeps_directions(self) -> bool:
        """Whether the goal keeps some kind's directions (``destination_keep``, or ``destination_keep_margin`` choosing
        them): the step cache then holds the forget rows' h_L."""
        return self.destination_keep_margin is not None or (
            self.destination_keep is not None and any(share > 0 for share in self.destination_keep))


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
        "gradients, equal to one pass's: the same run in less memory (default: the most rows whose rows x "
        "--max-length x hidden size is at most OLMo-7B's 8 x 512 x 4096; the whole batch on small models)"))
    # At 7B on the challenge's train split the step caches alone hold 8.3 GB, the anchor's texts more.
    offload: bool = field(default=False, metadata=option(
        "keep the cached batches (every step's and the anchor's, with their frozen activations) in CPU memory, "
        "each moved to the device for its step: the same run in less GPU memory (the standins preset at 7B: "
        "31 GiB, for 3% of a step)"))
    max_length: int = field(default=512, metadata=option("tokens per row"))
    seed: int = field(default=0, metadata=option("random seed: control vector, data order"))
    time_budget: float | None = field(default=None, metadata=option(
        "seconds; a valid checkpoint exists before it ends"))
    deterministic: bool = field(default=False, metadata=option(DETERMINISTIC))
    loss: Loss = field(default_factory=Loss, metadata=option("loss terms beyond the paper's"))
    calibration: Calibration | None = field(default=None, metadata=option("the stop rule"))
    repair: Repair = field(default_factory=Repair, metadata=option("the repair above the edit (repedit.repair)"))
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

    def fitted(self, hidden_size: int) -> RMUConfig:
        """This config with ``micro_batch`` set where it is not and one pass would exceed ``PASS_ELEMENTS``: the
        largest divisor of ``batch_size`` within it (1 at the least)."""
        rows = max(m for m in range(1, self.batch_size + 1) if self.batch_size % m == 0
                   and (m == 1 or m * self.max_length * hidden_size <= PASS_ELEMENTS))
        return self if self.micro_batch is not None or rows == self.batch_size else replace(self, micro_batch=rows)

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
        check_divides(self.micro_batch, self.batch_size, "--micro-batch", "--batch-size")
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
        if loss.retain_nll_stride < 1:
            raise ValueError(f"--retain-nll-stride: {loss.retain_nll_stride}: one row in how many, at least 1")
        if loss.retain_nll_tokens < 0:
            raise ValueError(f"--retain-nll-tokens: {loss.retain_nll_tokens}: tokens a pass, >= 0 (0: off)")
        for given, used in (("--retain-nll-stride", loss.retain_nll_stride > 1),
                            ("--retain-nll-tokens", loss.retain_nll_tokens > 0)):
            if used and loss.retain_nll == 0:
                raise ValueError(f"{given}: needs --retain-nll > 0 (the term it computes)")
        for name, choices in (("destination", DESTINATIONS), ("forget_tokens", FORGET_TOKENS)):
            if getattr(loss, name) not in choices:
                raise ValueError(f"--{name.replace('_', '-')}: {getattr(loss, name)!r}; choose one of "
                                 f"{', '.join(choices)}")
        keep = loss.destination_keep
        if keep is not None and (len(keep) != len(TASKS) or not all(0 <= share < 1 for share in keep)):
            raise ValueError(f"--destination-keep: {','.join(map(str, keep))}: one share of variance a task "
                             f"({','.join(TASKS)}), each 0 <= share < 1")
        keep_flag = "--destination-keep-margin" if loss.destination_keep_margin is not None else "--destination-keep"
        if loss.keeps_directions and loss.destination != "unseen":
            raise ValueError(f"{keep_flag}: needs --destination unseen (the kind's mean it keeps directions of)")
        if loss.destination_keep_margin is not None:
            if keep is not None:
                raise ValueError("--destination-keep-margin: chooses the shares --destination-keep gives; give one")
            if not math.isfinite(loss.destination_keep_margin):
                raise ValueError(f"--destination-keep-margin: {loss.destination_keep_margin!r} is not a finite number")
        if not (math.isfinite(loss.latent_epsilon) and loss.latent_epsilon >= 0):
            raise ValueError(f"--latent-epsilon: {loss.latent_epsilon!r}: a share of each token's norm, >= 0 (0: off)")
        if loss.latent_steps < 1:
            raise ValueError(f"--latent-steps: {loss.latent_steps}: at least 1 step")
        if not (math.isfinite(loss.latent_anchor) and loss.latent_anchor >= 0):
            raise ValueError(f"--latent-anchor: {loss.latent_anchor!r}: a share of each token's norm, >= 0 (0: off)")
        if loss.latent_anchor > 0 and loss.anchor == 0:
            raise ValueError("--latent-anchor: needs --anchor > 0 (the term it holds in the ball)")
        if loss.particulars_ngram < 1:
            raise ValueError(f"--particulars-ngram: {loss.particulars_ngram}: at least 1 token, e.g. 4")
        calibration = self.calibration
        for flag, count in (("--invented-anchors", loss.invented_anchors),
                            ("--recombined-pii-anchors", loss.recombined_pii_anchors)):
            if count < 0:
                raise ValueError(f"{flag}: {count}: a count of documents, >= 0")
        if loss.anchor_limit < 1:
            raise ValueError(f"--anchor-limit: {loss.anchor_limit}: a count of texts, >= 1")
        for given, used in (("--anchor-texts", loss.anchor_texts is not None),
                            ("--invented-anchors", loss.invented_anchors > 0),
                            ("--recombined-pii-anchors", loss.recombined_pii_anchors > 0),
                            ("--anchor-shuffle", loss.anchor_shuffle)):
            if used and loss.anchor <= 0:
                raise ValueError(f"{given}: needs --anchor > 0 (the weight that holds them)")
        if loss.anchor_texts is not None and not Path(loss.anchor_texts).is_file():
            raise ValueError(f"--anchor-texts: {loss.anchor_texts}: no such file")
        self.repair.validate(loss.anchor > 0 and calibration is not None, self.layer + 1 < num_hidden_layers)
        if calibration is None:
            for given, used in (("--destination unseen", loss.destination == "unseen"), ("--anchor", loss.anchor > 0),
                                ("--forget-ascent", loss.forget_ascent > 0)):
                if used:
                    raise ValueError(f"{given}: needs --calibrate (the unseen texts, whose NLL and h_L it reads)")
            return
        calibration.validate()
        if calibration.anchor_share > 0 and loss.anchor <= 0:
            raise ValueError("--calibrate-anchor-share: needs --anchor > 0 (the weight that holds the texts)")
        own = loss.has_own_anchor_texts or calibration.anchor_share > 0
        if not calibration.standin_anchors and (calibration.standins is None or not own):
            raise ValueError("--calibrate-standin-anchors: false needs --calibrate-standins, and texts of the anchor's "
                             "own (--anchor-texts, --invented-anchors, --recombined-pii-anchors or "
                             "--calibrate-anchor-share) to hold instead")
        if loss.anchor_shuffle and not (own or calibration.standins is not None):
            raise ValueError("--anchor-shuffle: the anchor holds the --calibrate texts as the stop rule scores them; "
                             "give it texts of its own (--anchor-texts, --invented-anchors, --recombined-pii-anchors, "
                             "--calibrate-standins or --calibrate-anchor-share) to shuffle")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> RMUConfig:
        """The config from its JSON form: nested objects for ``loss`` and ``calibration``, and
        ``"loss.alpha"``-style keys overriding one field of a group."""
        if values.get("method", "rmu") != "rmu":
            raise ValueError(f"RMU config: method is {values['method']!r}, expected 'rmu'")
        values = nest({k: v for k, v in values.items() if k != "method"})
        clean = known_values(cls, values, "RMU config", MOVED)
        clean["loss"] = Loss(**known_values(Loss, values.get("loss") or {}, "RMU config: loss", MOVED))
        clean["repair"] = Repair(**known_values(Repair, values.get("repair") or {}, "RMU config: repair", MOVED))
        if values.get("calibration") is not None:
            clean["calibration"] = Calibration(**known_values(Calibration, values["calibration"],
                                                              "RMU config: calibration", MOVED))
        return cls(**clean)


# Keys of the flat JSON form before issue #20, and where their values go now.
MOVED = {**{name: f"now loss.{name}" for name in ("alpha", "misdirection", "retain_nll", "forget_ascent", "anchor",
                                                  "forget_tokens", "destination")},
         **{f"calibrate_{name}": f"now calibration.{name}" for name in ("every", "tolerance", "tasks")},
         "calibrate": "now calibration.unseen", "calibrate_by": "removed: calibration is by document",
         "calibrate_margin": "removed", "target_layer": "removed: the last of layers is misdirected"}
