"""Which route gives the edit back? The relearning attack with one part of the model trainable at a time.

For each checkpoint, fine-tunes a copy on the forget documents the relearning attacker knows (``repedit attack``'s
split and steps: 10% of the documents, seed 0, 30 AdamW steps at 1e-4 in batches of 8) with every weight, or only
the weights below the edited layers (the embeddings and every layer under the first edited one), the edited layers,
their MLPs alone (the weights the edit changed), or the layers above them with the head; reports the probed
documents' mean NLL after each and the fraction of the gap the edit opened that it gives back. A retrain oracle given
as a run is the control: what those steps teach a model that never saw the probed documents. The edited layers are
``--layers``, or the first RMU run's (its ``unlearn.json``), the same for every run.

On the tiny target of real documents (BENCHMARKS.md, "What relearning finds on a model that never saw the
documents"): the oracle takes back 0.01-0.03 of its gap by any route; an edit 0.77, 0.61 by the layers below it
alone, a route the latent adversary narrows (0.35), and 0.34 by the edited MLPs alone, which it does not. Usage (CPU
or one GPU):

    python bench/relearn_attackers.py --reference W/target --forget W/data --runs edit=W/runs/RUN oracle=W/oracle \
        --out routes.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Callable
from pathlib import Path

from attack import named_runs

from repedit.attack import AttackConfig, recovered_fraction
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import documents, load_rows, training_examples
from repedit.generate import document_nll, pad_id
from repedit.relearn import finetune, split_documents
from repedit.runtime import pick_device, rmu_run_config


def span(first: int, last: int) -> list[str]:
    return [] if first > last else [f"layer {first}" if first == last else f"layers {first}-{last}"]


def routes(layers: tuple[int, ...], count: int, tied: bool) -> dict[str, Callable[[str], bool]]:
    """Route name -> does a parameter of that name train? For edited ``layers`` of a ``count``-layer OLMo; with
    ``tied`` embeddings the one matrix is the head too, so it trains in neither the route below nor the one above."""
    first, last = min(layers), max(layers)

    def under(*prefixes: str) -> Callable[[str], bool]:
        return lambda name: name.startswith(prefixes)

    below = ([] if tied else ["embeddings"]) + span(0, first - 1)
    above = span(last + 1, count - 1) + ["norm"] + ([] if tied else ["head"])
    found: dict[str, Callable[[str], bool]] = {"every weight": lambda name: True}
    if below:  # none where the edit starts at layer 0 of a tied model
        found[f"below: {', '.join(below)}"] = under(*([] if tied else ["model.embed_tokens."]),
                                                    *(f"model.layers.{i}." for i in range(first)))
    found[f"the edited {span(first, last)[0]}"] = under(*(f"model.layers.{i}." for i in layers))
    found["the edited MLPs alone"] = under(*(f"model.layers.{i}.mlp." for i in layers))
    found[f"above: {', '.join(above)}"] = under(*(f"model.layers.{i}." for i in range(last + 1, count)),
                                                "model.norm.", "lm_head.")
    return found


def edited_layers(runs: dict[str, Path]) -> tuple[int, ...]:
    """The first RMU run's edited layers, read from its ``unlearn.json``."""
    for directory in runs.values():
        config = rmu_run_config(directory)
        if config is not None:
            return tuple(config["layers"])
    raise SystemExit("--layers: no run is an RMU run with an unlearn.json: name the edited layers")


def format_table(results: dict) -> str:
    names = list(next(iter(results["runs"].values()))["routes"])
    lines = [f"probed documents' NLL after 30 steps on the known ones (recovered fraction); original "
             f"{results['original']:.2f}", f"{'run':<28}{'unlearned':>10}" + "".join(f"  {n:>28}" for n in names)]
    for run, row in results["runs"].items():
        cells = "".join(f"  {r['nll']:>19.2f} ({'  n/a' if r['recovered'] is None else format(r['recovered'], '+.2f')})"
                        for r in row["routes"].values())
        lines.append(f"{run[:28]:<28}{row['unlearned']:>10.2f}{cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="the target before unlearning")
    parser.add_argument("--forget", type=Path, required=True, help="the forget set the runs unlearned")
    parser.add_argument("--runs", nargs="+", required=True, help="NAME=DIR of each checkpoint (an oracle too)")
    parser.add_argument("--layers", help="the edited layers, comma-separated (default: the first RMU run's)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results; the table goes beside it (.txt)")
    args = parser.parse_args()
    runs = named_runs(args.runs)
    layers = tuple(int(i) for i in args.layers.split(",")) if args.layers else edited_layers(runs)
    device, dtype = pick_device(args.device, None)
    config = AttackConfig()
    tokenizer = load_checkpoint_tokenizer(args.reference)
    known, probed = split_documents(load_rows(args.forget, "forget"), config.relearn_fraction, config.finetune.seed,
                                    config.relearn_known)
    examples = training_examples(known, tokenizer, config.max_length, whole_documents=True)
    texts = documents([r for r in probed if r.kind == "sc"])

    def nll(model) -> float:
        return statistics.fmean(document_nll(model, tokenizer, texts))

    results: dict = {"original": nll(load_causal_lm(args.reference, dtype, device)), "layers": list(layers),
                     "known": len(examples), "probed": len(texts), "runs": {}}
    for run, directory in runs.items():
        unlearned = load_causal_lm(directory, dtype, device)
        before = nll(unlearned)
        row: dict = {"unlearned": before, "routes": {}}
        for name, trains in routes(layers, unlearned.config.num_hidden_layers,
                                  bool(getattr(unlearned.config, "tie_word_embeddings", False))).items():
            model = copy.deepcopy(unlearned)
            for parameter_name, parameter in model.named_parameters():
                parameter.requires_grad_(trains(parameter_name))
            finetune(model, examples, config.finetune, pad_id(tokenizer), f"{run}: {name}")
            after = nll(model)
            row["routes"][name] = {"nll": after, "recovered": recovered_fraction(results["original"], before, after,
                                                                               config.min_nll_headroom)}
            del model
        results["runs"][run] = row
    args.out.write_text(json.dumps(results, indent=1))
    table = format_table(results)
    args.out.with_suffix(".txt").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
