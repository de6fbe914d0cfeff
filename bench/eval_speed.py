"""How much faster batched evaluation is than the official one-at-a-time loop, and how far apart they are.

Both paths run on the same loaded model and the same rows: generation + row NLL for the forget and
retain sets, the MIA document NLLs, and MMLU (batched vs batch size 1). Each path's inference is
scored with the same ``repedit.metric.score_records``; the table shows seconds per stage, the
speed-up, the largest absolute difference of each score and how many generations differ.

    python bench/eval_speed.py --model MODEL --data ../shared/data/semeval25/validation \\
        --mia ../shared/data/semeval25/mia_data --mmlu ../shared/data/mmlu --rows 8 --mmlu-limit 570 \\
        --out bench-eval.json

``--rows N`` keeps the first N rows of each split, task and kind (all 12 terms stay defined).
``--loop-rows M`` (M <= N) runs the one-at-a-time loop on the first M of those only, for a model
whose loop would outlast a call (OLMo-7B: about 7 s a row at 256 tokens): the speed-up is then per
item, and agreement is measured on the M rows both paths ran.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from repedit.assets import load_tokenizer
from repedit.checkpoint import load_causal_lm
from repedit.data import Row, load_rows
from repedit.evaluate import load_mia, mia_records, resolve_device_dtype, row_records
from repedit.generate import generate_one, greedy_generate
from repedit.metric import score_records
from repedit.mmlu import load_mmlu, mmlu_accuracy, stratified_sample


def first_rows(rows: list[Row], limit: int | None) -> list[Row]:
    """The first ``limit`` rows of each (task, kind), in file order."""
    if limit is None:
        return rows
    taken: dict[tuple[str, str], int] = {}
    kept = []
    for row in rows:
        key = (row.task, row.kind)
        if taken.get(key, 0) < limit:
            taken[key] = taken.get(key, 0) + 1
            kept.append(row)
    return kept


def timed(work: Callable):
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def run_path(model, tokenizer, rows: dict, mia: dict, mmlu: tuple | None, batch_size: int, one_at_a_time: bool,
             max_new_tokens: int) -> tuple[dict, float | None, dict]:
    """Inference records (rows and MIA documents), MMLU accuracy and seconds per stage for one path."""
    seconds = {}
    records = {}
    for split, part in rows.items():
        records[split], seconds[f"{split} rows"] = timed(
            lambda part=part: row_records(model, tokenizer, part, batch_size, one_at_a_time, max_new_tokens))
    nll, seconds["mia documents"] = timed(lambda: mia_records(model, tokenizer, mia, batch_size, one_at_a_time))
    records.update(nll)
    accuracy = None
    if mmlu is not None:
        dev, test = mmlu
        accuracy, seconds["mmlu questions"] = timed(
            lambda: mmlu_accuracy(model, tokenizer, dev, test, batch_size=1 if one_at_a_time else batch_size))
    return records, accuracy, seconds


def scores_of(records: dict, accuracy: float | None, ids: dict[str, set] | None = None) -> dict:
    """The metric on a path's records, on the rows of ``ids`` (per split) alone when given."""
    kept = {split: [r for r in part if ids is None or r["id"] in ids[split]] for split, part in records.items()}
    return score_records(kept["forget"], kept["retain"], [r["nll"] for r in kept["member"]],
                         [r["nll"] for r in kept["nonmember"]], accuracy)


def score_differences(fast: dict, slow: dict) -> dict[str, float | None]:
    """Largest absolute difference of each reported score (None where a score is missing)."""
    terms = zip(fast["aggregated-terms"], slow["aggregated-terms"], strict=True)
    diffs: dict[str, float | None] = {"12 terms (max)": max(abs(a - b) for a, b in terms)}
    for name in ("harmonic-mean-task-aggregate", "mia_loss_acc", "mia_final_score", "mmlu_average",
                 "aggregate-score"):
        diffs[name] = None if fast[name] is None else abs(fast[name] - slow[name])
    return diffs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="directory with forget and retain sets")
    parser.add_argument("--mia", type=Path, required=True, help="directory with member/nonmember.jsonl")
    parser.add_argument("--mmlu", type=Path, help="directory with MMLU dev/test.parquet")
    parser.add_argument("--rows", type=int, help="first N rows of each split, task and kind (default: all)")
    parser.add_argument("--loop-rows", type=int, help="the one-at-a-time loop on the first M of those only")
    parser.add_argument("--mia-docs", type=int, help="first N member and N nonmember documents")
    parser.add_argument("--mmlu-limit", type=int, default=570, help="stratified MMLU sample (default: 570)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    args = parser.parse_args(argv)
    if args.loop_rows is not None and (args.loop_rows < 1 or (args.rows is not None and args.loop_rows > args.rows)):
        parser.error(f"--loop-rows: must be between 1 and --rows ({args.rows}), got {args.loop_rows}")

    device, dtype = resolve_device_dtype(args.device, args.dtype)
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, dtype, device)
    rows = {split: first_rows(load_rows(args.data, split), args.rows) for split in ("forget", "retain")}
    n = args.mia_docs
    mia = {split: (ids[:n], docs[:n]) for split, (ids, docs) in load_mia(args.mia).items()}
    mmlu = None
    if args.mmlu is not None:
        dev, test = load_mmlu(args.mmlu)
        mmlu = (dev, stratified_sample(test, args.mmlu_limit))
    # Warm-up of both paths' kernels and the allocator (without the batched one, the first stage timed on
    # OLMo-7B, forget rows, took twice the second's time a row: suspected, not re-measured).
    generate_one(model, tokenizer, rows["forget"][0].input, 4)
    greedy_generate(model, tokenizer, [r.input for r in rows["forget"][: args.batch_size]], 4, args.batch_size)

    loop_rows = {split: first_rows(part, args.loop_rows) for split, part in rows.items()}
    fast_records, fast_accuracy, fast_seconds = run_path(model, tokenizer, rows, mia, mmlu, args.batch_size, False,
                                                         args.max_new_tokens)
    slow_records, slow_accuracy, slow_seconds = run_path(model, tokenizer, loop_rows, mia, mmlu, args.batch_size,
                                                         True, args.max_new_tokens)
    mia_documents = sum(len(texts) for _, texts in mia.values())
    mmlu_questions = 0 if mmlu is None else len(mmlu[1])
    counts = {path: {"forget rows": len(part["forget"]), "retain rows": len(part["retain"]),
                     "mia documents": mia_documents, "mmlu questions": mmlu_questions}
              for path, part in (("batched", rows), ("one_at_a_time", loop_rows))}
    both = {split: {r["id"] for r in part} for split, part in slow_records.items()}  # rows both paths ran
    fast = scores_of(fast_records, fast_accuracy, both)
    slow = scores_of(slow_records, slow_accuracy)
    by_id = {split: {r["id"]: r for r in part} for split, part in fast_records.items()}
    pairs = [(by_id[split][b["id"]], b) for split, part in slow_records.items() for b in part]
    differing = [a["id"] for a, b in pairs if "model_output" in a and a["model_output"] != b["model_output"]]
    report = {
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "stages": {stage: {"items": counts["batched"][stage], "batched_s": fast_seconds[stage],
                           "loop_items": counts["one_at_a_time"][stage], "one_at_a_time_s": slow_seconds[stage],
                           "speedup": per_item(slow_seconds, counts["one_at_a_time"], stage)
                           / per_item(fast_seconds, counts["batched"], stage)} for stage in fast_seconds},
        "total": {"batched_s": sum(fast_seconds.values()), "one_at_a_time_s": sum(slow_seconds.values())},
        "generations_differing": len(differing), "differing_ids": differing,
        "generations": counts["one_at_a_time"]["forget rows"] + counts["one_at_a_time"]["retain rows"],
        "max_abs_difference": {**score_differences(fast, slow),
                               "document NLL (max)": max(abs(a["nll"] - b["nll"]) for a, b in pairs)},
        "batched_scores": fast, "one_at_a_time_scores": slow,
    }
    print(format_report(report))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def per_item(seconds: dict, counts: dict, stage: str) -> float:
    return seconds[stage] / max(counts[stage], 1)


def format_report(report: dict) -> str:
    lines = [f"{report['device']} {report['dtype']}, batch size {report['batch_size']}, "
             f"{report['max_new_tokens']} new tokens; speed-up per item",
             f"{'stage':<16}{'items':>7}{'batched s':>11}{'loop items':>11}{'1-by-1 s':>11}{'speed-up':>10}"]
    for stage, row in report["stages"].items():
        lines.append(f"{stage:<16}{row['items']:>7}{row['batched_s']:>11.2f}{row['loop_items']:>11}"
                     f"{row['one_at_a_time_s']:>11.2f}{row['speedup']:>9.1f}x")
    total = report["total"]
    lines.append(f"{'total':<16}{'':>7}{total['batched_s']:>11.2f}{'':>11}{total['one_at_a_time_s']:>11.2f}")
    lines.append(f"generations differing: {report['generations_differing']} of {report['generations']}")
    lines.append("max |batched - one at a time|:")
    for name, value in report["max_abs_difference"].items():
        lines.append(f"  {name:<30}{'n/a' if value is None else f'{value:.2e}':>10}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
