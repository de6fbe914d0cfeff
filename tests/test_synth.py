"""The synthetic data set has the challenge's shape: files, fields, id conventions, row counts."""

from __future__ import annotations

import json
import re
from collections import Counter

import pandas as pd
import pytest

from repedit.cli import main as cli_main
from repedit.data import documents, load_documents, load_rows
from repedit.synth import invented_documents, recombine, recombine_by_task, recombine_fields, swap_words, synthesize

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
ID_PATTERNS = {"Task1": rf'"{UUID}"(sc1|qa0)', "Task2": rf"{UUID}(sc1|qa[0-4])", "Task3": r"\d{7,8}(sc1|qa0)"}


def test_files_and_row_counts(synth_dir):
    names = {p.relative_to(synth_dir).as_posix() for p in synth_dir.rglob("*") if p.is_file()}
    assert names == {"forget.jsonl", "forget.parquet", "retain.jsonl", "retain.parquet",
                     "mia_data/member.jsonl", "mia_data/nonmember.jsonl"}
    for split in ("forget", "retain"):
        rows = load_rows(synth_dir / f"{split}.jsonl")
        counts = Counter((row.task, row.kind) for row in rows)
        # 4 documents per task: Task2 has five questions per document, the others one.
        assert counts == {("Task1", "sc"): 4, ("Task1", "qa"): 4, ("Task2", "sc"): 4, ("Task2", "qa"): 20,
                          ("Task3", "sc"): 4, ("Task3", "qa"): 4}
        assert {row.split for row in rows} == {split}
        assert load_rows(synth_dir / f"{split}.parquet") == rows
        columns = list(pd.read_parquet(synth_dir / f"{split}.parquet").columns)
        assert columns == ["id", "input", "output", "task", "split"]


def test_ids_follow_the_lume_conventions(synth_dir):
    rows = load_rows(synth_dir, "forget") + load_rows(synth_dir, "retain")
    for row in rows:
        assert re.fullmatch(ID_PATTERNS[row.task], row.id), row.id
    task2 = Counter(row.id[:-3] for row in rows if row.task == "Task2")
    assert set(task2.values()) == {6}  # one sc row and qa0..qa4 share the stem


def test_task2_answers_use_the_lume_formats(synth_dir):
    rows = [row for row in load_rows(synth_dir, "forget") if row.task == "Task2" and row.kind == "qa"]
    by_suffix = {suffix: [row for row in rows if row.id.endswith(suffix)] for suffix in ("qa0", "qa1", "qa2")}
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", row.output) for row in by_suffix["qa0"])  # birth date
    assert all(re.fullmatch(r"\d{9}", row.output) for row in by_suffix["qa1"])  # SSN, digits only
    assert all(re.fullmatch(r"\d{10}", row.output) for row in by_suffix["qa2"])  # phone, digits only
    assert all("@" in row.output for row in rows if row.id.endswith("qa3"))
    assert all(row.output.endswith(".") for row in rows if row.id.endswith("qa4"))  # address


def test_documents_are_cut_at_a_word_and_answers_are_in_them(synth_dir):
    rows = load_rows(synth_dir, "forget") + load_rows(synth_dir, "retain")
    docs = {row.id[:-3]: row.document for row in rows if row.kind == "sc"}
    for doc in docs.values():
        assert 40 <= len(doc.split()) <= 120
    for row in rows:
        if row.kind == "qa" and row.task != "Task2":  # Task2 answers are reformatted (dates, digits)
            assert row.output.rstrip(".").split()[-1].lower() in docs[row.id[:-3]].lower(), row


def test_mia_files_hold_task3_forget_documents_and_unseen_ones(synth_dir):
    members = load_documents(synth_dir / "mia_data" / "member.jsonl")
    nonmembers = load_documents(synth_dir / "mia_data" / "nonmember.jsonl")
    forget = load_rows(synth_dir, "forget")
    assert members == documents([row for row in forget if row.task == "Task3"])
    assert len(nonmembers) == len(members)
    seen = set(documents(forget + load_rows(synth_dir, "retain")))
    assert not seen & set(nonmembers)
    lines = (synth_dir / "mia_data" / "member.jsonl").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert all(re.fullmatch(r"\d+", i) for i in ids)


def test_deterministic_for_a_seed_and_varied_across_seeds(tmp_path):
    runs = (("a", 1), ("b", 1), ("c", 2))
    a, b, c = (synthesize(tmp_path / name, seed=seed, docs=3) for name, seed in runs)
    assert (a / "forget.jsonl").read_bytes() == (b / "forget.jsonl").read_bytes()
    assert (a / "forget.jsonl").read_bytes() != (c / "forget.jsonl").read_bytes()
    texts = documents(load_rows(a, "forget") + load_rows(a, "retain"))
    assert len(set(texts)) == len(texts) == 18


def test_invented_documents_are_new_documents_of_every_kind_the_same_for_a_seed(synth_dir):
    """What ``--anchor-texts`` can hold without any unseen document: n stories, PII and Wikipedia-style
    biographies, none of them a document of a synthesized set, the same for a seed and others for another."""
    made = invented_documents(5)
    assert Counter(d["task"] for d in made) == {"Task1": 5, "Task2": 5, "Task3": 5}
    assert all(" can be reached via phone at " in d["text"] for d in made if d["task"] == "Task2")
    assert all(re.search(r"\(born \d+ \w+ \d{4}\)", d["text"]) for d in made if d["task"] == "Task3")
    assert len({d["text"] for d in made}) == 15
    assert made == invented_documents(5) and made != invented_documents(5, seed=8)
    seen = {r.document for split in ("forget", "retain") for r in load_rows(synth_dir, split)}
    assert not seen & {d["text"] for d in made}
    with pytest.raises(ValueError, match="count must be at least 1"):
        invented_documents(0)


def test_cli_writes_a_set(tmp_path, capsys):
    assert cli_main(["data", "synth", "--out", str(tmp_path / "s"), "--seed", "3", "--docs", "2"]) == 0
    assert len(load_rows(tmp_path / "s", "retain")) == 2 * (2 + 6 + 2)
    assert cli_main(["data", "synth", "--out", str(tmp_path / "t"), "--docs", "0"]) == 2
    assert "--docs" in capsys.readouterr().err


def test_recombined_documents_are_sentences_of_several_seen_ones_in_place_and_none_of_them():
    """Each recombined document's i-th sentence is the i-th sentence of some given document (checked by a
    plain search), it draws on more than one of them, and it is none of them; a seed fixes the result."""
    sentence = re.compile(r"Person \d fact \d\.")
    documents = [" ".join(f"Person {d} fact {i}." for i in range(3 + d % 3)) for d in range(8)]
    parts = [sentence.findall(d) for d in documents]
    made = recombine(documents, 20, seed=3)
    assert made == recombine(documents, 20, seed=3) and made != recombine(documents, 20, seed=4)
    for text in made:
        found = sentence.findall(text)
        assert " ".join(found) == text
        sources = set()
        for i, one in enumerate(found):
            owners = [d for d, p in enumerate(parts) if i < len(p) and p[i] == one]
            assert owners, (i, one)
            sources.update(owners)
        assert len(sources) > 1 and text not in documents
    with pytest.raises(ValueError, match="at least 2 documents"):
        recombine(documents[:1], 1)
    by_task = recombine_by_task([(d, "Task1" if i < 4 else "Task2") for i, d in enumerate(documents)], 3)
    assert Counter(r["task"] for r in by_task) == {"Task1": 3, "Task2": 3}
    for record in by_task:  # each made only of its own task's documents (persons 0-3 are Task1's)
        people = {int(n) for n in re.findall(r"Person (\d)", record["text"])}
        assert people <= ({0, 1, 2, 3} if record["task"] == "Task1" else {4, 5, 6, 7}), record


def test_swapped_words_come_from_the_other_documents_in_the_share_asked():
    """Each word of a swapped document is its own word in place or a word of another document (the
    documents share no word, so a plain lookup tells which); the share swapped follows ``fraction``."""
    documents = [" ".join(f"d{d}w{i}" for i in range(200)) for d in range(4)]
    assert swap_words(documents, 0.0) == documents
    for fraction in (0.3, 1.0):
        made = swap_words(documents, fraction, seed=1)
        assert made == swap_words(documents, fraction, seed=1) != swap_words(documents, fraction, seed=2)
        for d, text in enumerate(made):
            words = text.split()
            assert len(words) == 200
            foreign = [w for i, w in enumerate(words) if w != f"d{d}w{i}"]
            assert all(not w.startswith(f"d{d}w") for w in foreign)
            assert abs(len(foreign) / 200 - fraction) < 0.1
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        swap_words(documents, 1.5)


def test_template_words_are_never_swapped_nor_drawn():
    """Words every document has stay where they are and never replace a particular; the particulars
    (each document's own words) are swapped among documents as without a template."""
    documents = [" ".join(f"shared{i} d{d}w{i}" for i in range(100)) for d in range(4)]
    made = swap_words(documents, 1.0, seed=0, template=0.5)
    for d, text in enumerate(made):
        words = text.split()
        assert words[0::2] == [f"shared{i}" for i in range(100)]
        assert all(w.startswith("d") and not w.startswith(f"d{d}w") for w in words[1::2])
    with pytest.raises(ValueError, match="no word to draw"):
        swap_words(["same words", "same words"], 0.5, template=0.5)


def test_with_few_documents_a_word_of_one_document_is_still_a_particular():
    """Six documents and a template share of 0.1 (0.6 documents): a word in only one document is that
    document's particular and is swapped; a word in two or more is the template (the preset's share on a
    small retain set made every word template and left nothing to draw)."""
    documents = [" ".join(["shared", "pair" if d < 2 else f"own{d}", *(f"d{d}w{i}" for i in range(50))])
                 for d in range(6)]
    made = swap_words(documents, 1.0, seed=0, template=0.1)
    for d, text in enumerate(made):
        words = text.split()
        assert words[0] == "shared" and (words[1] == "pair" if d < 2 else words[1] != f"own{d}")
        assert all(not w.startswith((f"d{d}w", "shared", "pair")) for w in words[2:])


def test_field_recombined_pii_biographies_are_seen_ones_with_other_peoples_names_and_new_numbers():
    """Each made biography is a given one word for word, but for its person's first and last name (the e-mail's
    lower-case ones too), taken from two other documents, and its numbers: every digit redrawn from the same place
    of a number as long after the same word, so a digit all the documents share there stays (the years' "19", the
    SSNs' "900") and the rest changes. A document not opening with a two-word name is never a source; fewer than
    two that do are refused."""
    people = [("Fredericka", "Amber"), ("Margarita", "Bronze"), ("Elaina", "Purple"), ("Holly-anne", "Coral"),
              ("Tobey", "Apricot")]
    streets = ["Elm Street", "Oak Lane", "Maple Road", "Cedar Court", "Pine Way"]  # each document's own
    documents = [f"{first} {last} was born on March {10 + i}, 19{60 + 7 * i}. {first}'s Social Security number is "
                 f"900-{31 + 11 * i}-{4000 + 1234 * i}. Email: [{first.lower()}\\_{last.lower()}@me.com]"
                 f"(mailto:{first.lower()}_{last.lower()}@me.com). Home: {100 + 37 * i} {street}, Salem, OR."
                 for i, ((first, last), street) in enumerate(zip(people, streets, strict=True))]
    unnamed = "Vincent \"Vinny\" Jones was born on May 1, 1980. His Social Security number is 900-11-2222."
    made = recombine_fields([*documents, unnamed], 40, seed=2)
    assert made == recombine_fields([*documents, unnamed], 40, seed=2) != recombine_fields(documents, 40, seed=3)
    digits = re.compile(r"\d")
    for text in made:
        first, last = text.split()[:2]
        masked = digits.sub("#", text)
        sources = [(f, ln) for (f, ln), d in zip(people, documents, strict=True)
                   if digits.sub("#", d.replace(f, first).replace(ln, last).replace(f.lower(), first.lower())
                                 .replace(ln.lower(), last.lower())) == masked and (f, ln) != (first, last)]
        assert len(sources) == 1, text  # one given document, its name replaced, digits aside
        source = sources[0]
        assert first in {f for f, _ in people} - {source[0]} and last in {ln for _, ln in people} - {source[1]}
        assert re.search(r", 19\d\d\.", text) and "number is 900-" in text
        assert re.findall(r"\d", text) != re.findall(r"\d", documents[people.index(source)])  # new numbers
    assert len(set(made)) > 30 and not set(made) & set(documents)
    assert {re.search(r"Home: (\d+)", t).group(1) for t in made} - {str(100 + 37 * i) for i in range(5)}
    with pytest.raises(ValueError, match=r"recombine_fields: needs at least 2 documents that open with a two-word "
                                         r"name .*got 1 of 2"):
        recombine_fields([documents[0], unnamed], 3)
