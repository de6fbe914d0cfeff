"""Which part of an edit's spectrum forgets and which moves unseen text: each edited matrix's change cut by SVD.

Loads an unlearned checkpoint and the target it was made from; for each edited matrix takes the change's singular
value decomposition and writes back the target plus the change without its top k directions, or with only them;
measures, per task, the forget documents' mean NLL, the unseen documents' change from the target (``--withheld``, and
``--unseen`` documents never trained on: a data directory's forget and retain sentence completions, e.g. the
challenge's validation split for a target built on train) with the loss attack's AUC of forget against them, and the
general passages' change. On the tiny target of real documents the top direction of each matrix carried most of the
rise on unseen stories and Wikipedia biographies at a seventh of the forgetting, and the forgetting needed the whole
spectrum at once (BENCHMARKS.md, "The kind's directions kept in the goal").

    PYTHONPATH=$PWD python bench/edit_spectrum.py --target T --edited E --forget DATA --withheld W.jsonl \\
        --unseen VALIDATION_DIR --general T/heldout_general.jsonl [--ranks 1,2,4,8,16] [--out R.json]
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from edit_attribution import edit_parser, forget_and_withheld

from repedit.calibration import unseen_texts
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import TASKS, load_rows
from repedit.generate import document_nll
from repedit.metric import mia_auc

Cut = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (U, S, Vh) -> the change written


def scores(model, tokenizer, sets: dict[str, list[tuple[str, str]]], general: list[str]) -> dict[str, list[float]]:
    """Each document's NLL, by set and task, and the general passages'."""
    out = {f"{name} {t}": document_nll(model, tokenizer, [x for x, k in pairs if k == t], batch_size=32)
           for name, pairs in sets.items() for t in TASKS}
    out["general"] = document_nll(model, tokenizer, general, batch_size=32)
    return out


def row(name: str, now: dict[str, list[float]], before: dict[str, list[float]]) -> dict:
    mean = statistics.fmean
    change = {key: 100 * (mean(now[key]) / mean(before[key]) - 1) for key in now if not key.startswith("forget")}
    return {"name": name, "forget_nll": [mean(now[f"forget {t}"]) for t in TASKS],
            "withheld_change": [change[f"withheld {t}"] for t in TASKS],
            "unseen_change": [change[f"unseen {t}"] for t in TASKS],
            "auc": [mia_auc(now[f"forget {t}"], now[f"unseen {t}"]) for t in TASKS],
            "general_change": change["general"]}


def spectrum_rows(target, model, tokenizer, sets: dict[str, list[tuple[str, str]]], general: list[str],
                  ranks: list[int]) -> list[dict]:
    """The target's row, the edit's, and for each k the edit without its top k directions and with them alone (each
    ``row``); ``model`` holds the edit again after."""
    before, params = dict(target.named_parameters()), dict(model.named_parameters())
    edited = [n for n, p in params.items() if p.dim() == 2 and not torch.equal(p, before[n])]
    if not edited:
        raise SystemExit("--edited: no matrix differs from --target's")
    svd = {n: torch.linalg.svd((params[n] - before[n]).detach(), full_matrices=False) for n in edited}
    for n, (_, s, _) in svd.items():
        share = ((s**2).cumsum(0) / (s**2).sum()).tolist()
        print(f"{n}: top 1 / 4 / 16 directions hold " + " / ".join(f"{share[min(k, len(share)) - 1]:.2f}"
                                                                      for k in (1, 4, 16)) + " of the change")
    base = scores(target, tokenizer, sets, general)
    cuts: dict[str, Cut] = {}
    for k in ranks:
        cuts[f"without the top {k}"] = lambda u, s, vh, k=k: u[:, k:] @ torch.diag(s[k:]) @ vh[k:]
        cuts[f"the top {k} alone"] = lambda u, s, vh, k=k: u[:, :k] @ torch.diag(s[:k]) @ vh[:k]
    cuts["edited"] = lambda u, s, vh: u @ torch.diag(s) @ vh  # last: the model is left as it came
    rows = [row("target", base, base)]
    for name, cut in cuts.items():
        with torch.no_grad():
            for n in edited:
                params[n].copy_(before[n] + cut(*svd[n]))
        rows.append(row(name, scores(model, tokenizer, sets, general), base))
    return [rows[0], rows[-1], *rows[1:-1]]


def main() -> None:
    parser = edit_parser(__doc__.splitlines()[0])
    parser.add_argument("--unseen", type=Path, required=True, help="data directory of never-trained documents")
    parser.add_argument("--general", type=Path, required=True, help=".jsonl of held-out general passages")
    parser.add_argument("--ranks", default="1,2,4,8,16", help="the k of each cut, comma-separated (\"\": none)")
    args = parser.parse_args()
    ranks = [int(k) for k in args.ranks.split(",") if k]  # none: the edit alone, scored
    target = load_causal_lm(args.target, torch.float32, "cpu")
    model = load_causal_lm(args.edited, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(args.edited)
    forget, withheld = forget_and_withheld(args)
    sets = {"forget": forget, "withheld": withheld,
            "unseen": [(r.document, r.task) for split in ("forget", "retain") for r in load_rows(args.unseen, split)
                       if r.kind == "sc"]}
    general = unseen_texts(str(args.general))
    rows = spectrum_rows(target, model, tokenizer, sets, general, ranks)
    print(f"{'':24}{'forget NLL T1/T2/T3':>22}{'withheld %':>20}{'unseen %':>20}{'AUC vs unseen':>18}{'general %':>10}")
    for r in rows:
        print(f"{r['name']:24}" + "".join(f"{'/'.join(f'{v:.{p}f}' for v in r[key]):>{w}}" for key, p, w in (
            ("forget_nll", 2, 22), ("withheld_change", 1, 20), ("unseen_change", 1, 20), ("auc", 2, 18)))
              + f"{r['general_change']:10.2f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
