"""Where a loss attack's signal sits: the target's per-token NLL on forget documents and on unseen documents
of the same kinds, split into particulars and template tokens (``repedit.particulars``).

A token is a particular when the bigram ending at it occurs in no other document of the forget and retain
sets (an unseen document's, in none of them). If forget documents differ from unseen ones mostly on their
particulars, ``--forget-tokens particulars`` can bring them to the unseen level alone; if their template
tokens differ too (a memorized document predicts its own template more surely), an edit that leaves the
template alone leaves that part of the gap. Prints per task: the share of particular tokens, the mean NLL of
each class on forget and on unseen documents, and how much of the document-level gap each class holds.

``--edited NAME=DIR ...`` splits each edit's collateral the same way: how far the unseen documents' particulars and
template tokens rose from the target's NLL. On the tiny target of real documents the rise is the template's (PII
biographies' template +31-40% a token, their particulars -1 to -5%; BENCHMARKS.md): the edit damages what the kind's
documents share, not the model's guess at each document's own values. It splits the forget documents' NLL after each
edit too, so that with the retrain oracle among the edits (``--edited "oracle=W/oracle"``, whose forget documents are
unseen ones) it shows which class an edit forgot: the documents' own values, or the template they share. And per
kind, the unseen documents' rise per nat the forget documents rose (``rise_per_nat``, document means): the collateral
an edit pays for its forgetting, which on the sim's stories was the same whichever tokens were misdirected
(BENCHMARKS.md, "Eighty-fifth session"), and which the attack band needs near a quarter of c20's.

    python bench/particulars_cpu.py --target W/sim --sets W/sets/validation \\
        --unseen W/sim/withheld/validation/nonmember.jsonl --out particulars.json [--edited "NAME=W/report/runs/NAME"]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from anchor_hold import named  # the pipeline hands these scripts the same NAME=DIR list

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.collateral import read_withheld
from repedit.data import TASKS, Example, Row, load_rows
from repedit.particulars import TokenClasses


@torch.inference_mode()
def token_nlls(model, ids: list[int]) -> list[float]:
    """The NLL of each token after the first, given the ones before it."""
    tokens = torch.tensor([ids])
    return F.cross_entropy(model(tokens).logits[0, :-1].float(), tokens[0, 1:], reduction="none").tolist()


def by_class(model, ids: list[int], particular: list[bool]) -> dict[str, list[float]]:
    """A document's per-token NLLs, split into its particulars and its template tokens."""
    out: dict[str, list[float]] = {"particulars": [], "template": []}
    for i, nll in enumerate(token_nlls(model, ids), start=1):
        out["particulars" if particular[i] else "template"].append(nll)
    return out


def read_sets(sets: Path, tokenizer) -> tuple[dict[str, list[Row]], dict[str, list[list[int]]], TokenClasses]:
    """The forget and retain sets' document rows, their token ids, and the particulars of the two sets together."""
    rows = {name: [r for r in load_rows(sets, name) if r.kind == "sc"] for name in ("forget", "retain")}
    encoded = {name: [tokenizer(r.document)["input_ids"] for r in rows[name]] for name in rows}
    classes = TokenClasses.of([Example(x, x) for x in encoded["forget"] + encoded["retain"]],
                              [r.document_id for r in rows["forget"] + rows["retain"]])
    return rows, encoded, classes


def summary(documents: list[dict[str, list[float]]]) -> dict:
    """Over ``documents``: the share of particular tokens, each class's mean NLL and its part of the mean token
    NLL (its NLLs summed over every token), and the mean of the documents' mean NLLs (what the attack scores)."""
    tokens = {k: [x for d in documents for x in d[k]] for k in ("particulars", "template")}
    count = sum(map(len, tokens.values()))
    return {"particular_share": len(tokens["particulars"]) / count,
            **{f"{k}_nll": statistics.fmean(v) if v else float("nan") for k, v in tokens.items()},
            **{f"{k}_part": sum(v) / count for k, v in tokens.items()},
            "document_nll": statistics.fmean(statistics.fmean(d["particulars"] + d["template"]) for d in documents)}


def split_parser(description: str) -> argparse.ArgumentParser:
    """The options of a script that reads a target's forget, retain and unseen documents (this one's, and
    ``membership_probe.py``'s)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--target", type=Path, required=True, help="the memorizing checkpoint")
    parser.add_argument("--sets", type=Path, required=True, help="folder with forget.jsonl and retain.jsonl")
    parser.add_argument("--unseen", type=Path, required=True, help="unseen documents (.jsonl: document, task)")
    parser.add_argument("--out", type=Path, required=True, help="the results JSON")
    return parser


def main() -> None:
    parser = split_parser(__doc__.splitlines()[0])
    parser.add_argument("--edited", type=named, nargs="*", default=[], metavar="NAME=DIR",
                        help="edited checkpoints of the target: where each one's rise on the unseen documents lands")
    args = parser.parse_args()
    model, tokenizer = load_causal_lm(args.target, torch.float32, "cpu"), load_checkpoint_tokenizer(args.target)
    model.eval()
    rows, encoded, classes = read_sets(args.sets, tokenizer)
    unseen = {task: [tokenizer(text)["input_ids"] for text in texts]  # task -> encoded documents
              for task, texts in read_withheld(args.unseen.parent, args.unseen.name).items()}

    def unseen_by_class(m, task: str) -> list[dict[str, list[float]]]:
        return [by_class(m, x, classes.unseen(x)) for x in unseen.get(task, [])]

    def forget_by_class(m, task: str) -> list[dict[str, list[float]]]:
        return [by_class(m, x, classes.member(x))
                for r, x in zip(rows["forget"], encoded["forget"], strict=True) if r.task == task]

    results: dict = {}
    for task in TASKS:
        forget, others = forget_by_class(model, task), unseen_by_class(model, task)
        if not forget or not others:
            continue
        results[task] = {"forget": summary(forget), "unseen": summary(others),
                         "documents": {"forget": len(forget), "unseen": len(others)}, "edited": {}}
    for name, folder in args.edited:
        edit = load_causal_lm(folder, torch.float32, "cpu").eval()
        for task, result in results.items():
            after, forgotten = summary(unseen_by_class(edit, task)), summary(forget_by_class(edit, task))
            rose = forgotten["document_nll"] - result["forget"]["document_nll"]
            result["edited"][name] = {**after, **{f"{k}_rise": after[f"{k}_nll"] / result["unseen"][f"{k}_nll"] - 1
                                                  for k in ("particulars", "template", "document")},
                                      "forget": forgotten,  # the unseen documents' rise per nat the forget ones rose
                                      "rise_per_nat": (after["document_nll"] - result["unseen"]["document_nll"]) / rose
                                      if rose else None}
    args.out.write_text(json.dumps(results, indent=2))
    print(f"{'task':6} {'set':7} {'docs':>5} {'particular share':>17} {'particulars NLL':>16} {'template NLL':>13} "
          f"{'document NLL':>13}")
    for task, result in results.items():
        for name in ("forget", "unseen"):
            s = result[name]
            print(f"{task:6} {name:7} {result['documents'][name]:5d} {s['particular_share']:17.2f} "
                  f"{s['particulars_nll']:16.2f} {s['template_nll']:13.2f} {s['document_nll']:13.2f}")
        f, u = result["forget"], result["unseen"]
        print(f"{task:6} gap in mean token NLL (unseen - forget): {u['particulars_part'] - f['particulars_part']:+.2f} "
              f"on particulars, {u['template_part'] - f['template_part']:+.2f} on template tokens")
        for name, e in result["edited"].items():
            per_nat = "-" if e["rise_per_nat"] is None else f"{e['rise_per_nat']:.3f}"
            print(f"{task:6} {name}: unseen particulars {100 * e['particulars_rise']:+.1f}%, template "
                  f"{100 * e['template_rise']:+.1f}%, documents {100 * e['document_rise']:+.1f}%; forget documents' "
                  f"particulars {e['forget']['particulars_nll']:.2f}, template {e['forget']['template_nll']:.2f} nats; "
                  f"unseen rise per nat forgotten {per_nat}")


if __name__ == "__main__":
    main()
