"""Independent oracles the tests compare the package against: plain re-implementations written
from the specifications, sharing no code with what they check."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer, load_tensors, read_config, weight_map


def independent_score(directory: Path, mmlu: float) -> dict:
    """The spec, re-implemented with the csv module and plain loops."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def read(pattern: str) -> list[dict]:
        rows = []
        for file in sorted(directory.glob(pattern)):
            with open(file, newline="") as handle:
                rows += list(csv.DictReader(handle))
        return rows

    terms = []
    per_task = {}
    for split in ("forget", "retain"):
        for task in ("Task1", "Task2", "Task3"):
            sc, qa = [], []
            for row in read(f"{split}_*.csv"):
                if row["task"] != task:
                    continue
                generated = row["model_output"] if row["model_output"] != "" else "nan"
                if row["id"][-3:-1] == "sc":
                    sc.append(scorer.score(row["expected_output"], generated)["rougeL"].recall)
                else:
                    qa.append(1 if row["expected_output"].strip().lower() == generated.strip().lower() else 0)
            values = [sum(sc) / len(sc), sum(qa) / len(qa)]
            per_task[(split, task)] = values
            terms += [1 - v for v in values] if split == "forget" else values
    aggregate = 0.0 if min(terms) == 0 else len(terms) / sum(1 / t for t in terms)
    members = [-float(r["nll"]) for r in read("mia_results/member_*.csv")]
    nonmembers = [-float(r["nll"]) for r in read("mia_results/nonmember_*.csv")]
    wins = sum(1.0 if m > n else 0.5 if m == n else 0.0 for m in members for n in nonmembers)
    auc = wins / (len(members) * len(nonmembers))
    mia = 1 - 2 * abs(auc - 0.5)
    return {"terms": terms, "per_task": per_task, "aggregate": aggregate, "auc": auc, "mia": mia,
            "final": (aggregate + mmlu + mia) / 3}


def best_by_brute_force(results: Sequence[dict]) -> set[str]:
    """The names of the results no other result beats, compared pair by pair as the sweep documents
    it: the official score where there is one, else the proxy's final score; on a tie, the higher
    mean of the proxy's task terms."""
    def primary(result: dict) -> float:
        return result["score"] if result.get("score") is not None else result["proxy"]["final"]

    def beats(a: dict, b: dict) -> bool:
        return primary(a) > primary(b) or (primary(a) == primary(b) and a["proxy"]["mean"] > b["proxy"]["mean"])

    return {r["name"] for r in results if not any(beats(other, r) for other in results)}


def assert_complete_checkpoint(out: Path, source: Path):
    """``out`` loads as the model ``source`` is (same tensors, layers and tokenizer), every loaded weight
    equals the one in ``out``'s files and is finite. Returns the loaded model."""
    names = weight_map(out)
    assert set(names) == set(weight_map(source))
    assert read_config(out).num_hidden_layers == read_config(source).num_hidden_layers
    model = load_causal_lm(out)
    state = model.state_dict()
    for name, shard in names.items():
        stored = load_tensors(out / shard, {name})[name]
        assert torch.equal(state[name], stored) and bool(torch.isfinite(stored).all()), name
    text = "Once upon a time, 1984-12-31."
    assert load_checkpoint_tokenizer(out)(text)["input_ids"] == load_checkpoint_tokenizer(source)(text)["input_ids"]
    return model


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean next-token NLL over labelled positions from the whole logits. (B, T, V), (B, T) -> (B,)"""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100,
                                               reduction="none")
    return losses.sum(dim=1) / (shift_labels != -100).sum(dim=1).clamp(min=1)


def sklearn_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """ROC AUC, positives labelled 1, as the official scorer computes it (``sklearn.metrics.roc_auc_score``)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([1] * len(positive) + [0] * len(negative), [*positive, *negative]))
