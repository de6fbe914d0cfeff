"""repedit.data: reading sets, the errors a user sees, row kinds, documents and training examples."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import SHARED_DATA, needs_shared

from repedit.data import (
    IGNORE_INDEX,
    DataError,
    collate,
    document_examples,
    documents,
    encode_example,
    load_documents,
    load_rows,
    qa_pairs,
    resolve_set_file,
    row_kind,
)

GOOD = [
    {"id": '"0a1b"sc1', "input": "Once upon", "output": "a time.", "task": "Task1", "split": "forget"},
    {"id": '"0a1b"qa0', "input": "When?", "output": "Once.", "task": "Task1", "split": "forget"},
    {"id": "1234sc1", "input": "Ann Lee (born 1900)", "output": "was a poet.", "task": "Task3"},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- errors name the problem and the file and row ---


def test_missing_file_and_empty_directory(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*no such file or directory"):
        load_rows(tmp_path / "nowhere", "forget")
    with pytest.raises(DataError, match=rf"{tmp_path}.*no forget\.parquet/forget\.jsonl"):
        load_rows(tmp_path, "forget")


def test_missing_column(tmp_path):
    file = write_jsonl(tmp_path / "forget.jsonl", [GOOD[0], {"id": "1sc1", "input": "a", "task": "Task3"}])
    with pytest.raises(DataError, match=rf"{file}: row 2: missing column\(s\) output"):
        load_rows(file)


def test_duplicate_id(tmp_path):
    file = write_jsonl(tmp_path / "forget.jsonl", [GOOD[0], GOOD[1], GOOD[0]])
    with pytest.raises(DataError, match=rf"{file}: row 3: duplicate id .*0a1b.*sc1.*first at row 1"):
        load_rows(file)


def test_unknown_id_kind(tmp_path):
    file = write_jsonl(tmp_path / "forget.jsonl", [GOOD[0], {**GOOD[1], "id": "abc-qa7"}])
    with pytest.raises(DataError, match=rf"{file}: row 2: unknown row kind in id 'abc-qa7'"):
        load_rows(file)


@pytest.mark.parametrize("column", ["input", "output"])
def test_empty_field(tmp_path, column):
    file = write_jsonl(tmp_path / "forget.jsonl", [GOOD[0], {**GOOD[2], column: "  "}])
    with pytest.raises(DataError, match=rf"{file}: row 2 \(id 1234sc1\): empty '{column}'"):
        load_rows(file)


def test_unknown_task_and_non_string_value(tmp_path):
    file = write_jsonl(tmp_path / "forget.jsonl", [{**GOOD[2], "task": "Task9"}])
    with pytest.raises(DataError, match=rf"{file}: row 1 .*unknown task 'Task9'"):
        load_rows(file)
    file = write_jsonl(tmp_path / "retain.jsonl", [{**GOOD[2], "output": 7}])
    with pytest.raises(DataError, match=rf"{file}: row 1: column 'output' must be a string, got int"):
        load_rows(file)


def test_non_utf8_and_bad_json_lines(tmp_path):
    file = tmp_path / "forget.jsonl"
    file.write_bytes(json.dumps(GOOD[0]).encode() + b"\n" + b'{"id": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=rf"{file}: line 2: not valid UTF-8"):
        load_rows(file)
    file.write_text(json.dumps(GOOD[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=rf"{file}: line 2: not valid JSON \(Expecting property name enclosed in "
                                        r"double quotes: line 1 column 2 \(char 1\)\)"):
        load_rows(file)


def test_empty_file_and_unsupported_type(tmp_path):
    with pytest.raises(DataError, match=r"forget\.jsonl: no rows"):
        load_rows(write_jsonl(tmp_path / "forget.jsonl", []))
    (tmp_path / "forget.csv").write_text("id,input\n")
    with pytest.raises(DataError, match=r"forget\.csv: unsupported file type '\.csv'"):
        load_rows(tmp_path / "forget.csv")


# --- resolving a directory ---


def test_directory_reads_parquet_or_jsonl_and_refuses_two_that_disagree(tmp_path):
    write_jsonl(tmp_path / "forget.jsonl", GOOD)
    assert resolve_set_file(tmp_path, "forget") == tmp_path / "forget.jsonl"
    pd.DataFrame(GOOD).to_parquet(tmp_path / "forget.parquet")
    assert resolve_set_file(tmp_path, "forget") == tmp_path / "forget.parquet"
    assert [row.id for row in load_rows(tmp_path, "forget")] == [row["id"] for row in GOOD]
    pd.DataFrame(GOOD[:1]).to_parquet(tmp_path / "forget.parquet")
    with pytest.raises(DataError, match="forget.parquet and forget.jsonl hold different rows"):
        load_rows(tmp_path, "forget")


def test_directory_without_split_needs_a_single_set(tmp_path):
    write_jsonl(tmp_path / "forget.jsonl", GOOD)
    assert resolve_set_file(tmp_path) == tmp_path / "forget.jsonl"
    write_jsonl(tmp_path / "retain.jsonl", GOOD)
    with pytest.raises(DataError, match="holds both forget and retain"):
        resolve_set_file(tmp_path)


def test_split_comes_from_the_record_else_the_argument(tmp_path):
    rows = load_rows(write_jsonl(tmp_path / "x.jsonl", GOOD), "retain")
    assert [row.split for row in rows] == ["forget", "forget", "retain"]


# --- row kinds, documents, QA pairs ---


@pytest.mark.parametrize(("row_id", "kind"), [
    ('"2ebbbb06-ab81-4bdf-af75-0157c7178a82"sc1', "sc"), ('"2ebbbb06-ab81-4bdf-af75-0157c7178a82"qa0', "qa"),
    ("90a0db01-1683-475d-9980-edf9e99d6f9fqa4", "qa"), ("67148749sc1", "sc"), ("67148749sc0", None),
    ("67148749qa5", None), ("x", None), ("", None),
])
def test_row_kind(row_id, kind):
    assert row_kind(row_id) == kind


def test_documents_and_qa_pairs(tmp_path):
    rows = load_rows(write_jsonl(tmp_path / "forget.jsonl", GOOD))
    assert rows[0].id == '"0a1b"sc1' and rows[0].kind == "sc"  # literal quotes kept
    assert documents(rows) == ["Once upon a time.", "Ann Lee (born 1900) was a poet."]
    assert qa_pairs(rows) == [("When?", "Once.")]


@needs_shared
def test_public_data_kinds_and_documents():
    rows = load_rows(SHARED_DATA / "semeval25" / "train", "forget")
    kinds = {(row.task, row.kind) for row in rows}
    assert kinds == {(t, k) for t in ("Task1", "Task2", "Task3") for k in ("sc", "qa")}
    assert any(row.id.startswith('"') for row in rows if row.task == "Task1")
    members = load_documents(SHARED_DATA / "semeval25" / "mia_data" / "member.jsonl")
    task3 = set(documents([row for row in rows if row.task == "Task3"]))
    assert sum(doc in task3 for doc in members) == len(members)  # members are input + " " + output


def test_load_documents_errors(tmp_path):
    file = write_jsonl(tmp_path / "m.jsonl", [{"document": "a"}, {"document": ""}])
    with pytest.raises(DataError, match=rf"{file}: row 2: missing or empty field 'document'"):
        load_documents(file)
    with pytest.raises(DataError, match="no such file"):
        load_documents(tmp_path / "none.jsonl")


# --- tokenized examples ---


def test_encode_example_masks_the_prompt_and_appends_eos(compact_tokenizer):
    tok = compact_tokenizer
    example = encode_example(tok, "What is the birth date?", "1976-03-29", max_length=512)
    prompt = tok("What is the birth date?", add_special_tokens=False)["input_ids"]
    answer = tok(" 1976-03-29", add_special_tokens=False)["input_ids"]
    assert example.input_ids == prompt + answer + [tok.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt) + answer + [tok.eos_token_id]
    unmasked = encode_example(tok, "What is the birth date?", "1976-03-29", max_length=512, mask_prompt=False)
    assert unmasked.labels == unmasked.input_ids
    short = encode_example(tok, "What is the birth date?", "1976-03-29", max_length=3)
    assert len(short.input_ids) == len(short.labels) == 3


def test_document_examples_and_collate(compact_tokenizer):
    tok = compact_tokenizer
    examples = document_examples(["a short text", "a somewhat longer text than that"], tok)
    assert all(e.input_ids[-1] == tok.eos_token_id and e.labels == e.input_ids for e in examples)
    batch = collate(examples, tok.pad_token_id)
    width = max(len(e.input_ids) for e in examples)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    n = len(examples[0].input_ids)
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (width - n)
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all()
    left = collate(examples, tok.pad_token_id, padding_side="left")
    assert left["input_ids"][0, width - n :].tolist() == examples[0].input_ids
