"""How far a frozen target's states tell its forget documents from unseen documents of the same kind, layer by layer.

A representation edit is keyed on the states at its layers: where a linear probe cannot tell a kind's forget
documents from its unseen ones there, the edit has little to move the one by and not the other. Per kind and token
class, on the states that predict each token (the one before it), a logistic probe cross-validated with folds grouped
by document (``probes.linear``) separates forget from unseen documents (membership and content differ), forget from
retain (both trained: content alone, the probe's chance level on these texts) and retain from unseen. Classes:
``template``, the tokens whose n-gram two or more training documents share (``repedit.particulars``), the same
definition on every set, so the sides see the same kind of token; ``particulars``, a forget or retain document's own
n-grams and an unseen document's n-grams no training document has. Each comparison takes the same number of tokens a
side, drawn ``--samples`` times. On the sim (BENCHMARKS.md, "Fifty-seventh call") membership reads at 0.51-0.75
against the control's 0.44-0.51, most at layers 1-4 and less with depth, and the kinds' order does not follow the
order of their collateral: linear separability does not explain it.

    python bench/membership_probe.py --target W/sim --sets W/sets/validation \\
        --unseen W/sim/withheld/validation/nonmember.jsonl --out membership_probe.json
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence

import torch
from particulars_cpu import read_sets, split_parser

from probes.collect import Activations, layer_batches
from probes.linear import probe_layers
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.collateral import read_withheld
from repedit.data import TASKS
from repedit.particulars import TokenClasses, ngrams

Flags = Callable[[list[int]], list[bool]]
COMPARISONS = (("forget", "unseen"), ("forget", "retain"), ("retain", "unseen"))


def template_flags(classes: TokenClasses) -> Flags:
    """Whether each token's n-gram is one two or more training documents share."""
    return lambda ids: [gram is not None and gram in classes.shared for gram in ngrams(ids, classes.n)]


@torch.inference_mode()
def predicting_states(model, sequences: Sequence[list[int]], flags: Mapping[str, Flags], pad_id: int,
                      batch_size: int = 4) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per class of ``flags``, from one run of the model: every decoder layer's output at the positions that predict
    a token of the class (n_layers, rows, d_model), and each row's sequence index."""
    states: dict[str, list[torch.Tensor]] = {name: [] for name in flags}
    source: dict[str, list[int]] = {name: [] for name in flags}
    for b, (hidden, _) in enumerate(layer_batches(model, sequences, pad_id, None, batch_size)):
        for j, ids in enumerate(sequences[b * batch_size : (b + 1) * batch_size]):
            for name, flagged in flags.items():
                before = [i - 1 for i, flag in enumerate(flagged(ids)) if flag and i > 0]
                states[name].append(hidden[:, j, before])
                source[name] += [b * batch_size + j] * len(before)
    return {name: (torch.cat(states[name], dim=1), torch.tensor(source[name], dtype=torch.long)) for name in flags}


def compare(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor], n: int, seed: int,
            name: str) -> list[float]:
    """Each layer's held-out probe accuracy of ``a`` against ``b``, ``n`` rows a side drawn with ``seed``."""
    (states_a, source_a), (states_b, source_b) = a, b
    draw = random.Random(seed)
    rows_a = sorted(draw.sample(range(states_a.shape[1]), n))
    rows_b = sorted(draw.sample(range(states_b.shape[1]), n))
    layers = tuple(range(states_a.shape[0]))
    result = probe_layers(Activations(layers, states_a[:, rows_a], source_a[rows_a], "token"),
                          Activations(layers, states_b[:, rows_b], source_b[rows_b], "token"), name, folds=4,
                          seed=seed)
    return [probe.accuracy for probe in result.layers]


def main() -> None:
    parser = split_parser(__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=360, help="tokens a side of each comparison at most")
    parser.add_argument("--samples", type=int, default=3, help="draws of those tokens, each probed anew")
    args = parser.parse_args()
    for option, value in (("--tokens", args.tokens), ("--samples", args.samples)):
        if value < 1:
            parser.error(f"{option}: {value}: at least 1")
    model, tokenizer = load_causal_lm(args.target, torch.float32, "cpu").eval(), load_checkpoint_tokenizer(args.target)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, encoded, classes = read_sets(args.sets, tokenizer)
    unseen = {task: [tokenizer(text)["input_ids"] for text in texts]
              for task, texts in read_withheld(args.unseen.parent, args.unseen.name).items()}
    template = template_flags(classes)  # each set's token classes: the template alike, the particulars its own
    flags = {"forget": {"template": template, "particulars": classes.member},
             "retain": {"template": template, "particulars": classes.member},
             "unseen": {"template": template, "particulars": classes.unseen}}
    results: dict = {}
    for task in TASKS:
        documents = {name: [x for r, x in zip(rows[name], encoded[name], strict=True) if r.task == task]
                     for name in ("forget", "retain")} | {"unseen": unseen.get(task, [])}
        if not all(len(d) >= 2 for d in documents.values()):  # grouped folds need two documents a side
            continue
        states = {name: predicting_states(model, docs, flags[name], pad_id) for name, docs in documents.items()}
        for token_class in ("template", "particulars"):
            for a, b in COMPARISONS:
                name = f"{task} {token_class}: {a} vs {b}"
                side_a, side_b = states[a][token_class], states[b][token_class]
                if min(len(side_a[1].unique()), len(side_b[1].unique())) < 2:
                    print(f"{name}: fewer than two documents on a side hold such tokens; left out")
                    continue
                n = min(args.tokens, side_a[0].shape[1], side_b[0].shape[1])
                runs = [compare(side_a, side_b, n, seed, name) for seed in range(args.samples)]
                results[name] = {"tokens": n,
                                 "documents": [len(documents[a]), len(documents[b])],
                                 "accuracy": [sum(layer) / len(layer) for layer in zip(*runs, strict=True)],
                                 "samples": runs}
    args.out.write_text(json.dumps(results, indent=2))
    print(f"held-out probe accuracy per layer (mean of {args.samples} draws); chance: forget vs retain")
    for name, result in results.items():
        print(f"{name:40} {result['tokens']:5d} tokens  " + " ".join(f"{x:.2f}" for x in result["accuracy"]))


if __name__ == "__main__":
    main()
