"""The target card: the memorization a target reached, measured as the official metric measures it
(greedy generation; ROUGE-L recall on sentence completions, exact match on questions; the MIA AUC),
what it does with text it never saw, and the card as a short report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from repedit.checkpoint import HELDOUT_FILE
from repedit.data import TASKS, Row
from repedit.membership import WithheldSet


def measure_memorization(model, tokenizer, sets: dict[str, list[Row]], batch_size: int) -> dict:
    """Per split and task: mean ROUGE-L recall of greedy continuations of the sc rows
    (``regurgitation``) and mean exact match of the answers (``qa_exact_match``)."""
    from repedit.generate import greedy_generate
    from repedit.metric import exact_match, rouge_l_recall

    scores: dict[str, dict[str, dict]] = {}
    for split, rows in sets.items():
        generated = greedy_generate(model, tokenizer, [row.input for row in rows], batch_size=batch_size)
        for task in TASKS:
            pairs = [(row, text) for row, text in zip(rows, generated, strict=True) if row.task == task]
            sc = [rouge_l_recall(row.output, text) for row, text in pairs if row.kind == "sc"]
            qa = [exact_match(row.output, text) for row, text in pairs if row.kind == "qa"]
            if pairs:
                scores.setdefault(split, {})[task] = {
                    "regurgitation": statistics.fmean(sc) if sc else None, "sc_rows": len(sc),
                    "qa_exact_match": statistics.fmean(qa) if qa else None, "qa_rows": len(qa),
                }
    return scores


def measure_mia(model, tokenizer, members: Sequence[str], nonmembers: Sequence[str], mia_dir: Path) -> dict:
    """AUC of telling ``mia_dir``'s ``member.jsonl`` documents from its ``nonmember.jsonl`` ones by their NLL
    (1.0: all members more likely than every nonmember)."""
    from repedit.generate import document_nll
    from repedit.metric import mia_auc

    member_nll = document_nll(model, tokenizer, members)
    nonmember_nll = document_nll(model, tokenizer, nonmembers)
    return {"auc": mia_auc(member_nll, nonmember_nll), "members": len(members), "nonmembers": len(nonmembers),
            "member_nll": statistics.fmean(member_nll), "nonmember_nll": statistics.fmean(nonmember_nll),
            "dir": str(mia_dir)}


def measure_unseen(model, tokenizer, withheld: Sequence[WithheldSet], heldout: Sequence[str],
                   batch_size: int) -> dict:
    """What the target does with text it never saw: the mean NLL of the held-out general passages
    (``general_nll``) and of the withheld documents per data directory and task (``unseen_nll``)."""
    from repedit.collateral import mean_nll

    unseen = {w.name: {task: mean_nll(model, tokenizer, [r.document for r in w.nonmembers if r.task == task],
                                      f"withheld/{w.name} ({task})", batch_size)
                       for task in TASKS if any(r.task == task for r in w.nonmembers)}
              for w in withheld}
    general = mean_nll(model, tokenizer, heldout, HELDOUT_FILE, batch_size) if heldout else None
    return {"general_nll": general, "unseen_nll": unseen or None}


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_card(card: dict) -> str:
    """The card as a short report: shape, training, and a split x task table of memorization."""
    config = card["config"]
    lines = [
        f"target {card['preset']}: {card['parameters'] / 1e6:.1f}M parameters ({card['megabytes']:.1f} MB "
        f"{config['dtype']}), {config['num_hidden_layers']} layers x {config['hidden_size']}, "
        f"{config['tokenizer']} tokenizer ({config['vocab_size']}), on {card['device']}",
    ]
    if not card["trained"]:
        return "\n".join(lines + [f"random weights, written in {card['seconds']['total']:.1f} s"])
    for name, log in card["training"].items():
        accuracy = "" if log["answer_accuracy"] is None else f", answer accuracy {log['answer_accuracy']:.4f}"
        lines.append(f"{name}: {log['epochs']} epochs, {log['steps']} steps, {log['seconds']:.1f} s, "
                     f"loss {log['loss']:.4f}{accuracy} (stopped: {log['stopped']})")
    lines.append(f"{'split':<8}{'task':<7}{'regurgitation':>14}{'qa exact match':>16}{'rows (sc/qa)':>14}")
    for split, tasks in card["memorization"].items():
        for task, s in tasks.items():
            lines.append(f"{split:<8}{task:<7}{_value(s['regurgitation']):>14}{_value(s['qa_exact_match']):>16}"
                         f"{s['sc_rows']:>8}/{s['qa_rows']}")
    data = card["data"]
    if data.get("withheld"):
        lines.append("withheld, never trained on: " + "; ".join(
            f"{name} " + ", ".join(f"{task} {n}" for task, n in w["documents"].items()) + f" ({w['members']} members)"
            for name, w in data["withheld"].items()))
    if data.get("excluded"):
        lines.append("excluded from training (retrain oracle): " + "; ".join(
            f"{e['path']} ({e['documents']} documents, {e['rows']} rows)" for e in data["excluded"]))
    if card.get("unseen_nll"):
        lines.append("unseen NLL: " + "; ".join(
            f"{name} " + ", ".join(f"{task} {v:.3f}" for task, v in tasks.items())
            for name, tasks in card["unseen_nll"].items()))
    if card.get("general_nll") is not None:
        uniform = math.log(card["config"]["vocab_size"])
        lines.append(f"held-out general NLL {card['general_nll']:.3f} (uniform guessing: {uniform:.3f})")
    if card["mia"]:
        m = card["mia"]
        lines.append(f"MIA AUC {m['auc']:.4f} ({m['members']} members, NLL {m['member_nll']:.3f}; "
                     f"{m['nonmembers']} nonmembers, NLL {m['nonmember_nll']:.3f})")
    seconds = card["seconds"]
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return "\n".join(lines)
