"""Which part of an edit forgets and which part moves unseen text: undo one edited tensor (or group) at a time.

Loads an unlearned checkpoint and the target it was made from, finds the tensors that differ, and for each
tensor, each layer's tensors and each kind of tensor across layers puts the target's values back and
measures, per task, the forget documents' mean NLL and the withheld (never trained) documents' change from the
target. An edit whose parts act alone loses a part's share when it is undone; one whose parts act together
loses most of it whatever is undone, which is also what a few relearning steps exploit.

    PYTHONPATH=$PWD python bench/edit_attribution.py --target T --edited E --forget DATA --withheld W.jsonl

``--forget``: a data directory (its forget set's sentence-completion documents); ``--withheld``: .jsonl with
``text`` (or ``document``) and ``task`` (bench/method_cpu.py writes both under its --work; a sim build writes
``withheld/<split>/nonmember.jsonl``). ``bench/quality_calls.sh`` runs it on the report's chosen run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from repedit.calibration import unseen_texts
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.collateral import mean_nll
from repedit.data import TASKS, load_documents, load_rows


def per_task(model, tokenizer, forget: list[tuple[str, str]], withheld: list[tuple[str, str]]) -> dict:
    """{task: (forget mean NLL, withheld mean NLL)}."""
    return {t: tuple(mean_nll(model, tokenizer, [text for text, k in pairs if k == t], f"{name} {t}", batch_size=32)
                     for name, pairs in (("forget", forget), ("withheld", withheld))) for t in TASKS}


def groups(edited: list[str]) -> dict[str, list[str]]:
    """Each edited tensor alone, each layer's together, each kind of tensor (e.g. up_proj) across layers."""
    short = {name: name.removeprefix("model.").removesuffix(".weight") for name in edited}
    layers = sorted({name.split(".")[2] for name in edited}, key=int)
    kinds = sorted({name.split(".")[-2] for name in edited})
    return {**{short[n]: [n] for n in edited},
            **{f"layer {layer}": [n for n in edited if n.split(".")[2] == layer] for layer in layers},
            **{f"{kind}, every layer": [n for n in edited if n.split(".")[-2] == kind] for kind in kinds}}


def edit_parser(description: str) -> argparse.ArgumentParser:
    """The options of a script that reads an edit beside its target: this one's and ``edit_spectrum``'s."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--target", type=Path, required=True, help="the checkpoint before unlearning")
    parser.add_argument("--edited", type=Path, required=True, help="the unlearned checkpoint")
    parser.add_argument("--forget", type=Path, required=True, help="data directory with the forget set")
    parser.add_argument("--withheld", type=Path, required=True, help=".jsonl of never-trained texts with a task")
    parser.add_argument("--out", type=Path, help="JSON results")
    return parser


def forget_and_withheld(args: argparse.Namespace) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(text, task) of each forget sentence completion and of each withheld text."""
    forget = [(r.document, r.task) for r in load_rows(args.forget, "forget") if r.kind == "sc"]
    return forget, list(zip(unseen_texts(str(args.withheld)), load_documents(args.withheld, "task"), strict=True))


def main() -> None:
    parser = edit_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (float32 either way)")
    args = parser.parse_args()
    target = load_causal_lm(args.target, torch.float32, args.device)
    model = load_causal_lm(args.edited, torch.float32, args.device)
    tokenizer = load_checkpoint_tokenizer(args.edited)
    forget, withheld = forget_and_withheld(args)
    before = dict(target.named_parameters())
    params = dict(model.named_parameters())
    edited = [n for n, p in params.items() if not torch.equal(p, before[n])]
    if not edited:
        raise SystemExit(f"--edited: {args.edited}: no tensor differs from --target's")

    results = {"target": per_task(target, tokenizer, forget, withheld),
               "edited": per_task(model, tokenizer, forget, withheld)}
    for name, names in groups(edited).items():
        kept = {n: params[n].detach().clone() for n in names}
        with torch.no_grad():
            for n in names:
                params[n].copy_(before[n])
        results[f"undone: {name}"] = per_task(model, tokenizer, forget, withheld)
        with torch.no_grad():
            for n in names:
                params[n].copy_(kept[n])

    unseen = {t: results["target"][t][1] for t in TASKS}
    print(f"{'':34}" + "".join(f"{'forget NLL ' + t:>18}{'unseen ' + t:>14}" for t in TASKS))
    for name, row in results.items():
        print(f"{name:34}" + "".join(f"{row[t][0]:18.2f}{100 * (row[t][1] / unseen[t] - 1):+13.0f}%" for t in TASKS))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
