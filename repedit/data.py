"""Forget and retain sets as the challenge ships them: rows, documents, QA pairs, token batches.

A set is a directory holding ``forget.parquet`` and/or ``forget.jsonl`` (likewise ``retain``), as the
challenge passes it to ``unlearn``, or a single ``.jsonl``/``.parquet`` file. The row kind comes from
the id exactly as the official metric reads it: ``...sc1`` is a sentence completion, ``...qa0`` to
``...qa4`` are question-answer rows.

>>> rows = load_rows("../shared/data/semeval25/train", "forget")
>>> docs = documents(rows)          # input + " " + output of every sc row
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

REQUIRED_COLUMNS = ("id", "input", "output", "task")
TASKS = ("Task1", "Task2", "Task3")
RowKind = Literal["sc", "qa"]
IGNORE_INDEX = -100


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file, the row and the problem."""


@dataclass(frozen=True)
class Row:
    id: str
    input: str
    output: str
    task: str
    kind: RowKind
    split: str | None = None

    @property
    def document(self) -> str:
        """The whole text a sentence-completion row was cut from (metric spec: input + " " + output)."""
        return f"{self.input} {self.output}"

    @property
    def document_id(self) -> str:
        """The id without its kind suffix (``sc1``, ``qa0``..): what a document's rows have in common."""
        return self.id[:-3]


def row_kind(row_id: str) -> RowKind | None:
    """``sc`` or ``qa`` from the id suffix (``sc1``, ``qa0``..``qa4``), else None."""
    suffix, digit = row_id[-3:-1], row_id[-1:]
    if suffix == "sc" and digit == "1":
        return "sc"
    if suffix == "qa" and digit and digit in "01234":
        return "qa"
    return None


def resolve_set_file(path: str | Path, split: str | None = None) -> Path:
    """The file to read for a set: ``path`` itself, or ``{split}.parquet`` (else ``.jsonl``) inside it."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    names = [split] if split else ["forget", "retain"]
    found = [path / f"{n}.{ext}" for n in names for ext in ("parquet", "jsonl") if (path / f"{n}.{ext}").is_file()]
    if not found:
        wanted = " or ".join(f"{n}.parquet/{n}.jsonl" for n in names)
        raise DataError(f"{path}: directory holds no {wanted}")
    if not split and len({f.stem for f in found}) > 1:
        raise DataError(f"{path}: holds both forget and retain files; say which split to read")
    return found[0]


def _read_records(file: Path) -> list[dict]:
    if file.suffix == ".jsonl":
        records = []
        with open(file, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(f"{file}: line {number}: not valid UTF-8 ({error.reason})") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{file}: line {number}: not valid JSON ({error})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{file}: line {number}: expected a JSON object")
                records.append(record)
        return records
    if file.suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(file)
        except Exception as error:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{file}: cannot read parquet ({error})") from None
        return frame.to_dict(orient="records")
    raise DataError(f"{file}: unsupported file type {file.suffix!r}; expected .jsonl or .parquet")


def load_rows(path: str | Path, split: str | None = None) -> list[Row]:
    """Read and validate a forget or retain set. Rows are numbered from 1 in error messages.

    A directory may hold the set twice, as ``.parquet`` and ``.jsonl`` (the challenge passes both):
    both are read, and unless they hold the same rows the directory is refused as ambiguous.
    """
    file = resolve_set_file(path, split)
    twin = file.with_suffix(".jsonl")
    if not Path(path).is_dir() or file.suffix != ".parquet" or not twin.is_file():
        return _load_file_rows(file, split)
    both = []
    for one in (file, twin):
        try:
            both.append(_load_file_rows(one, split))
        except DataError as error:
            raise DataError(f"{file.parent}: holds both {file.name} and {twin.name}, and {error}; "
                            "remove the broken one") from None
    first, second = ({(r.id, r.input, r.output, r.task) for r in rows} for rows in both)
    if first != second:
        example = sorted(first ^ second)[0][0]
        raise DataError(f"{file.parent}: {file.name} and {twin.name} hold different rows (e.g. id {example!r}); "
                        "keep only the one to use")
    return both[0]


def _load_file_rows(file: Path, split: str | None) -> list[Row]:
    records = _read_records(file)
    if not records:
        raise DataError(f"{file}: no rows")
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for number, record in enumerate(records, start=1):
        where = f"{file}: row {number}"
        missing = [c for c in REQUIRED_COLUMNS if c not in record]
        if missing:
            raise DataError(f"{where}: missing column(s) {', '.join(missing)}")
        values = {c: record[c] for c in REQUIRED_COLUMNS}
        for column, value in values.items():
            if not isinstance(value, str):
                raise DataError(f"{where}: column {column!r} must be a string, got {type(value).__name__}")
        row_id = values["id"]
        for column in ("input", "output"):
            if not values[column].strip():
                raise DataError(f"{where} (id {row_id}): empty {column!r}")
        kind = row_kind(row_id)
        if kind is None:
            raise DataError(f"{where}: unknown row kind in id {row_id!r}; ids must end in sc1 or qa0..qa4")
        if values["task"] not in TASKS:
            raise DataError(f"{where} (id {row_id}): unknown task {values['task']!r}; expected one of {TASKS}")
        if row_id in seen:
            raise DataError(f"{where}: duplicate id {row_id!r} (first at row {seen[row_id]})")
        seen[row_id] = number
        split_value = record.get("split")
        rows.append(
            Row(
                id=row_id,
                input=values["input"],
                output=values["output"],
                task=values["task"],
                kind=kind,
                split=split_value if isinstance(split_value, str) else split,
            )
        )
    return rows


def documents(rows: Sequence[Row]) -> list[str]:
    """The memorized documents: input + " " + output of each sentence-completion row."""
    return [row.document for row in rows if row.kind == "sc"]


def qa_pairs(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(question, answer) of each question-answer row."""
    return [(row.input, row.output) for row in rows if row.kind == "qa"]


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """``records`` one JSON object a line (UTF-8, non-ASCII kept), as ``load_rows`` and ``load_documents`` read them."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def load_documents(path: str | Path, field: str = "document") -> list[str]:
    """Texts from a JSONL file with one ``field`` per line (MIA files, general passages)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    texts = []
    for number, record in enumerate(_read_records(file), start=1):
        value = record.get(field)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{file}: row {number}: missing or empty field {field!r}")
        texts.append(value)
    if not texts:
        raise DataError(f"{file}: no rows")
    return texts


@dataclass(frozen=True)
class Example:
    """One tokenized training sequence; ``labels`` is ``IGNORE_INDEX`` where no loss is taken; ``weights``,
    where given, weighs each label in the misdirection term (``repedit.particulars``)."""

    input_ids: list[int]
    labels: list[int]
    weights: list[float] | None = None


def encode_example(tokenizer, prompt: str, answer: str, max_length: int, mask_prompt: bool = True) -> Example:
    """``prompt`` then `` answer`` then EOS, tokenized in two parts.

    Tokenizing the prompt on its own matches generation, which starts from the tokenized ``input``;
    the EOS after the answer teaches the model to stop, which QA exact match requires.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    prompt_labels = [IGNORE_INDEX] * len(prompt_ids) if mask_prompt else list(prompt_ids)
    labels = (prompt_labels + answer_ids)[:max_length]
    return Example(input_ids=input_ids, labels=labels)


def training_examples(rows: Sequence[Row], tokenizer, max_length: int = 512, mask_prompt: bool = True,
                      whole_documents: bool = False) -> list[Example]:
    """One example per row: the input as prompt, the output as answer followed by EOS; with
    ``whole_documents`` a sentence-completion row is labelled whole, its prompt too (it is a document)."""
    return [encode_example(tokenizer, row.input, row.output, max_length,
                           mask_prompt and not (whole_documents and row.kind == "sc")) for row in rows]


def document_examples(texts: Sequence[str], tokenizer, max_length: int = 512) -> list[Example]:
    """Whole documents for language modelling, every token a label, EOS appended."""
    examples = []
    for text in texts:
        ids = (tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:max_length]
        examples.append(Example(input_ids=ids, labels=list(ids)))
    return examples


def collate(examples: Sequence[Example], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a list of examples into ``input_ids``, ``attention_mask`` and ``labels`` tensors, and ``weights``
    (1 where an example has none) when any example has them."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    weights = torch.ones((len(examples), width)) if any(e.weights is not None for e in examples) else None
    for i, example in enumerate(examples):
        n = len(example.input_ids)
        span = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[i, span] = torch.tensor(example.input_ids)
        labels[i, span] = torch.tensor(example.labels)
        mask[i, span] = 1
        if weights is not None and example.weights is not None:
            weights[i, span] = torch.tensor(example.weights)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return batch if weights is None else {**batch, "weights": weights}


def batches(examples: Sequence[Example], batch_size: int, pad_token_id: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive batches of ``batch_size`` examples, right-padded."""
    return [
        collate(examples[start : start + batch_size], pad_token_id)
        for start in range(0, len(examples), batch_size)
    ]
