"""``repedit evaluate``: a checkpoint's SemEval-2025 Task 4 score, as the organizers computed it.

Generates for every forget and retain row, measures the MIA document NLLs and (optionally) MMLU,
writes the official inference files into ``out_dir`` and scores them with the same
``repedit.metric.score_directory`` that ``repedit score`` runs, so a score can always be recomputed
from the files. Generation and NLL are batched; ``one_at_a_time=True`` runs the one-prompt-at-a-time loop the
organizers ran, which ``bench/eval_speed.py`` compares against.

With ``withheld`` (a target's ``withheld/<dirname>/`` folder) the results also get the collateral
columns of ``repedit.collateral``: unseen and general NLL, the all-kind AUC and, given a retrain
``oracle`` checkpoint, the KS distance of the forget NLLs from the oracle's.

>>> results = evaluate("runs/rmu", "../shared/data/semeval25/validation", "runs/rmu-eval",
...                    mia_dir="../shared/data/semeval25/mia_data", mmlu_dir="../shared/data/mmlu")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from repedit.data import DataError, Row, load_documents, load_rows
from repedit.generate import accelerate_processes, document_nll, document_nll_one, generate_one, greedy_generate
from repedit.guard import check_nlls
from repedit.metric import (
    MMLU_FILE,
    RESULTS_FILE,
    clear_inference,
    format_table,
    score_directory,
    write_inference,
)

MAX_NEW_TOKENS = 256  # the official limit; lower only for smoke runs
MIA_SPLITS = ("member", "nonmember")


def resolve_device_dtype(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """This process's accelerator unless told otherwise; bfloat16 on GPU, as the official; float32 on CPU."""
    from accelerate import PartialState

    from repedit.runtime import pick_device

    return pick_device(device or str(PartialState().device), dtype)


def row_records(model, tokenizer, rows: Sequence[Row], batch_size: int, one_at_a_time: bool = False,
                max_new_tokens: int = MAX_NEW_TOKENS, split: str = "") -> list[dict]:
    """One official inference record per row: the generation and the NLL of ``input + " " + output``.

    The NLL column is informational (the score does not read it).
    """
    prompts, docs = [row.input for row in rows], [row.document for row in rows]
    if one_at_a_time:
        outputs = [generate_one(model, tokenizer, p, max_new_tokens) for p in tqdm(prompts, desc="generate")]
        nll = [document_nll_one(model, tokenizer, d) for d in tqdm(docs, desc="nll")]
    else:
        outputs = greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size, f"{split} generate".strip())
        nll = document_nll(model, tokenizer, docs, batch_size, f"{split} nll".strip())
    return [
        {"id": row.id, "task": row.task, "input": row.input, "expected_output": row.output,
         "model_output": out, "nll": value}
        for row, out, value in zip(rows, outputs, nll, strict=True)
    ]


def load_mia(mia_dir: str | Path) -> dict[str, tuple[list[str], list[str]]]:
    """``{"member": (ids, documents), "nonmember": (ids, documents)}`` from ``{member,nonmember}.jsonl``."""
    sets = {}
    for split in MIA_SPLITS:
        file = Path(mia_dir) / f"{split}.jsonl"
        texts = load_documents(file)
        frame = pd.read_json(file, lines=True, dtype=False)  # as the official read it, for the ids
        ids = frame["id"] if "id" in frame and len(frame) == len(texts) else range(len(texts))
        sets[split] = ([str(i) for i in ids], texts)
    return sets


def mia_records(model, tokenizer, sets: dict[str, tuple[list[str], list[str]]], batch_size: int,
                one_at_a_time: bool = False) -> dict[str, list[dict]]:
    """Per MIA split, each document's id and mean token NLL (the official ``mia_results`` rows)."""
    records = {}
    for split, (ids, texts) in sets.items():
        if one_at_a_time:
            nll = [document_nll_one(model, tokenizer, t) for t in tqdm(texts, desc=split)]
        else:
            nll = document_nll(model, tokenizer, texts, batch_size, f"{split} nll")
        records[split] = [{"id": i, "nll": value} for i, value in zip(ids, nll, strict=True)]
    return records


def evaluate(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
             mia_dir: str | Path | None = None, mmlu_dir: str | Path | None = None,
             mmlu_limit: int | None = None, batch_size: int = 32, device: str | None = None,
             dtype: str | None = None, max_new_tokens: int = MAX_NEW_TOKENS, withheld: str | Path | None = None,
             general: str | Path | None = None, oracle: str | Path | None = None) -> dict:
    """Run inference, write the official files to ``out_dir``, score them and print the table.

    Without ``mia_dir`` or ``mmlu_dir`` the result says which is missing and has no final score.
    ``withheld``, ``general``, ``oracle``: the collateral columns (``repedit.collateral``), added to
    the results as ``collateral``; the oracle is loaded, scored on the forget documents and freed
    before the model loads. Every process computes them (the NLLs are spread and gathered), like the
    MIA. Returns the content of ``out_dir/evaluation_results.json``.
    """
    from repedit.assets import load_tokenizer
    from repedit.checkpoint import check_checkpoint, load_causal_lm
    from repedit.collateral import forget_nll, format_collateral, measure_collateral
    from repedit.membership import MEMBER_FILE, NONMEMBER_FILE
    from repedit.mmlu import load_mmlu, mmlu_accuracy

    if mmlu_limit is not None and mmlu_dir is None:
        raise ValueError("--mmlu-limit: needs --mmlu, the directory with MMLU dev and test parquet files")
    if withheld is None and (general is not None or oracle is not None):
        raise ValueError("--general, --oracle: need --withheld, a target's withheld/<dirname> folder")
    check_checkpoint(Path(model_dir))
    rows = {split: load_rows(data_dir, split) for split in ("forget", "retain")}
    mia_sets = load_mia(mia_dir) if mia_dir is not None else None  # bad paths fail before the model loads
    mmlu_data = load_mmlu(mmlu_dir) if mmlu_dir is not None else None
    missing = [n for n in (MEMBER_FILE, NONMEMBER_FILE) if withheld is not None and not (Path(withheld) / n).is_file()]
    if missing:
        raise DataError(f"--withheld {withheld}: no {' or '.join(missing)}")
    if general is not None and not Path(general).is_file():
        raise DataError(f"--general {general}: no such file")
    with accelerate_processes() as state:  # before any other PartialState: the first decides how processes join
        device_, dtype_ = resolve_device_dtype(device, dtype)
        oracle_nll = None
        if oracle is not None and withheld is not None:
            oracle_model = load_causal_lm(Path(oracle), dtype_, device_)
            oracle_nll = forget_nll(oracle_model, load_tokenizer(oracle), Path(withheld), batch_size)
            del oracle_model  # one model in memory at a time
            if device_.type == "cuda":
                torch.cuda.empty_cache()
        tokenizer = load_tokenizer(model_dir)
        model = load_causal_lm(Path(model_dir), dtype_, device_)
        records = {split: row_records(model, tokenizer, part, batch_size, max_new_tokens=max_new_tokens, split=split)
                   for split, part in rows.items()}
        if mia_sets is not None:
            records.update(mia_records(model, tokenizer, mia_sets, batch_size))
        for split, split_records in records.items():  # before any file is written: no NaN reaches the score
            check_nlls(f"{model_dir}: {split}", [r["id"] for r in split_records], [r["nll"] for r in split_records])
        accuracy = mmlu_accuracy(model, tokenizer, *mmlu_data, batch_size, mmlu_limit) if mmlu_data else None
        collateral = None
        if withheld is not None:
            collateral = measure_collateral(model, tokenizer, Path(withheld), Path(general) if general else None,
                                            oracle_nll, batch_size)
        out = Path(out_dir)
        if state.is_main_process:
            clear_inference(out)
            for split, split_records in records.items():
                write_inference(out, split, split_records)
            if accuracy is not None:
                (out / MMLU_FILE).write_text(json.dumps({"average_acc": accuracy, "limit": mmlu_limit}) + "\n")
            results = score_directory(out, accuracy)
            if collateral is not None:
                results["collateral"] = collateral
                (out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
            print(format_table(results))
            if collateral is not None:
                print(format_collateral(collateral))
    return json.loads((out / RESULTS_FILE).read_text())
