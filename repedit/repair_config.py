"""``Repair``: the settings of the repair above the edit (``RMUConfig.repair``), typed, and their checks.

Apart from ``repedit.repair``, which runs the RMU loop and so imports what imports ``repedit.rmu_config``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from repedit.config_fields import check_divides, option


@dataclass
class Repair:
    """How the layers above the edit are repaired, and how many edit-then-repair rounds run (0: none)."""

    rounds: int = field(default=0, metadata=option(
        "edit, then train the MLPs of the layers above L toward the frozen model's next-token distributions on the "
        "anchor's texts and the retain documents (KL), the edit again from the repaired model: this many edits and "
        "repairs in all; needs --anchor's texts; 0: off", flag="--repair-rounds"))
    steps: int = field(default=200, metadata=option("optimizer steps of each repair", flag="--repair-steps"))
    # Near its optimum 1e-3 walks off it (the sim, CPU: KL 0.001 -> 0.04 in 40 steps, unseen text more likely), 1e-4
    # does not; which repairs the edit better is the grid's c30 against c33, c34 (BENCHMARKS.md "Ninetieth session").
    lr: float = field(default=1e-3, metadata=option("the repair's AdamW learning rate", flag="--repair-lr"))
    # Every layer above L is 4 on the sim (L = 7 of 12); at 7B all 24 ran out of an 80 GB card, 4 peaked at 38.7 GiB.
    layers: int | None = field(default=4, metadata=option(
        "how many layers above L the repair trains, the next ones (fewer where the model has fewer)",
        flag="--repair-layers"))
    batch_size: int = field(default=16, metadata=option("texts a repair step reads", flag="--repair-batch-size"))
    # At 7B, 16 texts of 256 tokens through every layer above L to the LM head: 38.7 GiB with 4 layers trained, 26.6
    # GiB in passes of 4 (BENCHMARKS.md, "Ninety-eighth session").
    micro_batch: int | None = field(default=None, metadata=option(
        "texts of each repair step a forward and backward pass takes (dividing --repair-batch-size); a step sums its "
        "passes' gradients, the same repair in less memory; not given: the whole batch", flag="--repair-micro-batch"))
    retain_share: float = field(default=0.5, metadata=option(
        "the share of each repair batch that is retain documents, the rest the anchor's texts",
        flag="--repair-retain-share"))
    # Each repair lowered the forget documents' NLL it never read, the first by 1.1-2.0 nats, the last by 0.4-0.5 (the
    # tiny target, BENCHMARKS.md "Ninety-first session"): the model written was not the one the stop rule judged.
    # Holding a quarter lost to c30 on the sim's train and on five CPU runs of six ("Ninety-second session").
    forget_share: float = field(default=0.0, metadata=option(
        "the share of each repair batch that is forget documents, held at the edit's next-token distributions (KL to "
        "the model before the repair), so the repair takes the edit's rise back from other texts and not the "
        "forgetting; 0: the repair reads no forget document", flag="--repair-forget-share"))
    max_length: int = field(default=256, metadata=option("tokens a repair text is cut to", flag="--repair-max-length"))
    # A later edit starts from a model near its goals with a fresh optimizer, whose first steps move each weight about
    # the learning rate whatever the gradient: c30's second edits on the sim wrote their first check (step 10) on every
    # validation seed, read 0.22-0.64 by the stop rule's attack (BENCHMARKS.md, "Ninety-second session"). At a fifth of
    # the rate: nearer the oracle on three CPU seeds of three, behind c30 on the sim's train, 0.805 against 0.902
    # ("Ninety-third session").
    later_lr: float | None = field(default=None, metadata=option(
        "the learning rate of every edit after the first (default: --lr), so a later edit nears its goals in smaller "
        "steps between checks", flag="--repair-later-lr"))

    # Small first steps without a slower edit: c39's fifth of the rate never brought the sim's train stories back
    # ("Ninety-third session"); over 50 steps a later edit's first ten (a check's worth) move about a tenth as far.
    later_warmup: int = field(default=0, metadata=option(
        "steps over which every edit after the first raises its learning rate linearly to the full rate (step k of N: "
        "k/N of it), so a fresh optimizer's first steps, each about the rate whatever the gradient, do not carry the "
        "edit past its goals between checks; 0: none", flag="--repair-later-warmup"))

    def validate(self, anchor_texts: bool = True, layer_above: bool = True) -> None:
        """Raise a ValueError naming the offending option; ``anchor_texts``: the run holds texts in its anchor
        (--anchor with --calibrate), ``layer_above``: the model has a layer above L."""
        for flag, value, least in (("--repair-rounds", self.rounds, 0), ("--repair-steps", self.steps, 1),
                                   ("--repair-batch-size", self.batch_size, 1),
                                   ("--repair-max-length", self.max_length, 2),
                                   ("--repair-layers", 1 if self.layers is None else self.layers, 1),
                                   ("--repair-later-warmup", self.later_warmup, 0)):
            if value < least:
                raise ValueError(f"{flag}: {value}; at least {least}")
        check_divides(self.micro_batch, self.batch_size, "--repair-micro-batch", "--repair-batch-size")
        for flag, lr in (("--repair-lr", self.lr), ("--repair-later-lr", self.later_lr)):
            if lr is not None and not (math.isfinite(lr) and lr > 0):
                raise ValueError(f"{flag}: must be a positive number, got {lr}")
        if self.rounds and not (anchor_texts and layer_above):
            raise ValueError("--repair-rounds: needs the anchor's texts (--anchor > 0 with --calibrate) and a layer "
                             "above L, the last of --layers")
        for flag, share in (("--repair-retain-share", self.retain_share), ("--repair-forget-share", self.forget_share)):
            if not 0 <= share <= 1:
                raise ValueError(f"{flag}: must be within [0, 1], got {share}")
        if self.retain_share + self.forget_share > 1:
            raise ValueError(f"--repair-forget-share: {self.forget_share} with --repair-retain-share "
                             f"{self.retain_share} leaves no room in the batch; together at most 1")
