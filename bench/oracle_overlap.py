"""How much of each forget document the retrain oracle's training text holds, against the oracle's NLL of it.

The oracle KS (``repedit.collateral``) compares a run's forget-document NLLs with a retrain oracle's. The oracle
trains on everything but the forget set, so what other documents also teach stays likely to it: a forget document
whose phrases appear elsewhere in its training text (the train split's forget and retain rows, a biography's
particulars shared with another row, the general passages) keeps a low NLL, where a stop rule aimed at unseen text
raises every forget document of a kind to one level. Per kind: each forget document's share of token n-grams that
the oracle's training text holds, the correlation of that share with the oracle's NLL and with each run's, and
each one's mean NLL over the half of the documents with the lower share and the half with the higher; the withheld
(unseen) documents' shares beside them. With the target's NLLs of the withheld documents (the report's target
row), the line ``--calibrate-share-goals`` fits to unseen texts, fitted to them, gives each forget document a goal of
its own: how near those goals come to the oracle's NLLs says what that stop rule could do, against a run's KS. The
training text is the build's, made again from its settings (``repedit.membership.split_membership``,
``repedit.target.trained_general``; ``--data`` one folder of the build's: the text a user unlearning that split
would hold, its retain rows and the general passages): no model runs, seconds on a CPU.

    python bench/oracle_overlap.py --data D/semeval25/train D/semeval25/validation --withhold 40 12 \\
        --exclude D/semeval25/validation/forget.jsonl --general D/general/passages.jsonl --target W/sim \\
        --withheld W/sim/withheld/validation --oracle-nll W/oracle_nll.json --report quality.json --out o.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from repedit.calibration import unseen_tasks, unseen_texts
from repedit.checkpoint import CARD_FILE, load_causal_lm, load_checkpoint_tokenizer
from repedit.collateral import ks_statistic, nll_of, read_withheld
from repedit.data import TASKS
from repedit.membership import MEMBER_FILE, NONMEMBER_FILE, Membership, split_membership
from repedit.particulars import Ngram
from repedit.share_goals import held_share, known_ngrams, line_goals
from repedit.target import trained_general


def halves(shares: Sequence[float], nlls: Sequence[float]) -> tuple[float, float]:
    """The mean NLL of the documents with the lower half of the shares, and of the rest (ties by position)."""
    order = sorted(range(len(shares)), key=lambda i: shares[i])
    low, high = order[: len(order) // 2], order[len(order) // 2 :]
    return statistics.mean(nlls[i] for i in low), statistics.mean(nlls[i] for i in high)


def by_kind(shares: Sequence[float], nlls: Sequence[float]) -> dict:
    """The share's correlation with ``nlls`` (Pearson; None where either is constant) and the halves' mean NLLs."""
    low, high = halves(shares, nlls)
    try:
        correlation: float | None = statistics.correlation(shares, nlls)
    except statistics.StatisticsError:
        correlation = None
    return {"correlation": correlation, "low_share_nll": low, "high_share_nll": high}


def level_fit(task: str, text_shares: Sequence[float], text_nll: Sequence[float], shares: Sequence[float],
              oracle_nll: Sequence[float]) -> dict:
    """The goals ``--calibrate-share-goals`` would give the forget documents with these unseen texts
    (``repedit.share_goals``: the line of their NLL over their share, clipped to their range), and how near those
    goals come to the oracle's NLLs (their correlation, means, KS)."""
    slope, intercept, levels = line_goals(task, text_shares, text_nll, shares)
    return {"intercept": intercept, "slope": slope, "texts": len(text_shares),
            "text_correlation": statistics.correlation(text_shares, text_nll),
            "levels": levels, "oracle_correlation": statistics.correlation(levels, oracle_nll),
            "mean_level": statistics.mean(levels), "oracle_mean": statistics.mean(oracle_nll),
            "ks_to_oracle": ks_statistic(levels, oracle_nll)}


def overlap(members: dict[str, list[str]], nonmembers: dict[str, list[str]], known: set[Ngram],
            encode: Callable[[str], list[int]], n: int, oracle_nll: dict[str, list[float]],
            runs: dict[str, dict[str, list[float]]], fit_nll: dict[str, list[float]] | None = None,
            fit_texts: dict[str, list[str]] | None = None) -> dict:
    """Per kind: the forget documents' shares, the withheld ones', the oracle's and each run's ``by_kind`` and KS to
    the oracle, and with ``fit_nll`` (the target's NLL of ``fit_texts``, per kind in order; of the withheld documents
    where none are given) the ``level_fit``."""
    result: dict = {}
    for task in TASKS:
        if task not in members:
            continue
        shares = [held_share(encode(text), known, n) for text in members[task]]
        for name, values in {"oracle": oracle_nll, **runs}.items():
            if len(values[task]) != len(shares):
                raise ValueError(f"{name}: {len(values[task])} {task} forget NLLs for {len(shares)} documents")
        withheld_shares = [held_share(encode(text), known, n) for text in nonmembers.get(task, [])]
        result[task] = {
            "shares": shares,
            "withheld_shares": withheld_shares,
            "oracle": by_kind(shares, oracle_nll[task]),
            "runs": {name: {**by_kind(shares, values[task]), "ks_to_oracle": ks_statistic(values[task],
                                                                                          oracle_nll[task])}
                     for name, values in runs.items()},
        }
        if fit_nll is not None and fit_nll.get(task):
            texts = (fit_texts or nonmembers)[task]
            if len(fit_nll[task]) != len(texts):
                raise ValueError(f"fitted NLLs: {len(fit_nll[task])} of {task} for {len(texts)} texts")
            result[task]["level_fit"] = level_fit(task, [held_share(encode(t), known, n) for t in texts],
                                                  fit_nll[task], shares, oracle_nll[task])
    return result


def print_overlap(result: dict, n: int) -> None:
    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print(f"\nforget documents' share of token {n}-grams the training text (--data) holds; the NLL of the lower-share "
          f"half / the higher-share half, and its correlation with the share")
    print(f"{'kind':7}{'share median (withheld)':>24}{'NLL low / high half':>22}{'corr':>7}  model")
    for task, kind in result.items():
        withheld = statistics.median(kind["withheld_shares"]) if kind["withheld_shares"] else None
        shares = f"{statistics.median(kind['shares']):.3f} ({number(withheld, '.3f')})"
        for name, row in {"oracle (retrain)": kind["oracle"], **kind["runs"]}.items():  # whole names: seeds end them
            print(f"{task:7}{shares:>24}{row['low_share_nll']:>11.2f} / {row['high_share_nll']:<8.2f}"
                  f"{number(row['correlation'], '+.2f'):>7}  {name}"
                  + (f" (KS to the oracle {row['ks_to_oracle']:.2f})" if "ks_to_oracle" in row else ""))
            shares = ""
    fits = {task: kind["level_fit"] for task, kind in result.items() if "level_fit" in kind}
    if fits:
        print("\n--calibrate-share-goals' goal of each forget document, from the line of the texts' NLL under the "
              "target over their share:")
        print(f"{'kind':7}{'texts':>6}{'line':>22}{'r texts':>9}{'r oracle':>10}{'mean (oracle)':>15}"
              f"{'KS to oracle':>14}")
        for task, fit in fits.items():
            print(f"{task:7}{fit['texts']:>6}{fit['intercept']:>11.2f} {fit['slope']:+7.2f} x"
                  f"{fit['text_correlation']:>+9.2f}"
                  f"{fit['oracle_correlation']:>+10.2f}{fit['mean_level']:>8.2f} ({fit['oracle_mean']:.2f})"
                  f"{fit['ks_to_oracle']:>14.2f}")


def check_withheld(membership: Membership, target: Path) -> None:
    """Stop unless ``membership`` withholds the documents ``target``'s card lists: other settings than the build's
    would count the withheld documents as trained text and leave out trained ones."""
    card = json.loads((target / CARD_FILE).read_text())["data"].get("withheld") or {}
    mine = {w.name: w.summary()["ids"] for w in membership.withheld}
    theirs = {name: entry["ids"] for name, entry in card.items() if name in mine or not mine}
    if mine != theirs:
        raise SystemExit(f"{target / CARD_FILE}: the build withheld other documents (from {', '.join(sorted(theirs))}) "
                         f"than --data, --withhold and --seed give here: pass the build's settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="the build's data folders, in order")
    parser.add_argument("--withhold", type=int, nargs="+", default=[0], help="the build's --withhold")
    parser.add_argument("--seed", type=int, default=0, help="the build's seed")
    parser.add_argument("--exclude", type=Path, nargs="*", default=[], help="the oracle's excluded sets")
    parser.add_argument("--general", type=Path, help="the general passages the build trained on (some of)")
    parser.add_argument("--target", type=Path, required=True, help="the target: its tokenizer, held-out passages")
    parser.add_argument("--withheld", type=Path, required=True, help="the withheld folder the oracle NLLs are of")
    parser.add_argument("--oracle-nll", type=Path, required=True, help="the oracle's forget NLLs (oracle_nll.json)")
    parser.add_argument("--report", type=Path, help="a quality report (rows): its runs' forget NLLs beside, and its "
                        "target's of the withheld documents, the line's texts where --texts names none")
    parser.add_argument("--texts", type=Path, help="unseen texts with a task (a --calibrate file): the line's "
                        "texts, scored under --target here")
    parser.add_argument("--n", type=int, default=6, help="n-gram length in tokens")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    membership = split_membership(args.data, args.withhold, args.seed, args.exclude)
    check_withheld(membership, args.target)
    texts = [row.document for row in membership.trained]
    texts += trained_general(args.general, args.target) if args.general else []
    tokenizer = load_checkpoint_tokenizer(args.target)

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    rows = json.loads(args.report.read_text())["rows"] if args.report else []
    runs = {row["name"]: row["collateral"]["forget_nll"] for row in rows
            if not row["name"].startswith(("oracle", "target")) and row["collateral"].get("forget_nll")}
    fit_texts, fit_nll = None, next((row["collateral"].get("withheld_nll") for row in rows
                                     if row["name"].startswith("target")), None)
    if args.texts:  # the texts the stop rule would fit its line to, scored as it scores them: under the target
        tasks = unseen_tasks(str(args.texts))
        if tasks is None:
            parser.error(f"--texts: {args.texts}: every row needs a task")
        given = unseen_texts(str(args.texts))
        fit_texts = {task: [t for t, k in zip(given, tasks, strict=True) if k == task] for task in set(tasks)}
        model = load_causal_lm(args.target)
        fit_nll = {task: nll_of(model, tokenizer, mine, f"{args.texts} ({task})") for task, mine in fit_texts.items()}
    result = overlap(read_withheld(args.withheld, MEMBER_FILE), read_withheld(args.withheld, NONMEMBER_FILE),
                     known_ngrams(map(encode, texts), args.n), encode, args.n,
                     json.loads(args.oracle_nll.read_text()), runs, fit_nll, fit_texts)
    args.out.write_text(json.dumps({"n": args.n, "trained_texts": len(texts), "kinds": result}, indent=1))
    print_overlap(result, args.n)


if __name__ == "__main__":
    main()
