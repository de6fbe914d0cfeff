"""A document's particulars: the tokens no other document shares (``--forget-tokens particulars``).

Documents of one kind share a template ("was born on", "can be reached via phone at", the questions
asked of every biography) and differ where each is its own: names, dates, numbers, addresses, a story's
events. Misdirecting the template moves every document of the kind with the forget set (BENCHMARKS.md:
unseen PII biographies +17-20% under ``--forget-tokens document``). A token is a particular of its document
when the n-gram ending at it (``--particulars-ngram``, a bigram by default) occurs in no other document of the
forget and retain sets: by 4-gram a phone number's digits count too, which by bigram each follow the same
token in some other document. The particulars hold most of what tells a memorized document from an unseen
one, not all: a memorizing model predicts its own documents' template more surely too
(``bench/particulars_cpu.py``: a quarter to a third of the NLL gap on the sim). Misdirecting the template
at a weight between 0 and 1 (``--template-weight``, the twenty-second call) measured as ``document`` at 0.75
and tuned lowest at 0.25 and 0.5, and was removed (BENCHMARKS.md), as was a stop rule per class. ``TokenClasses``
also splits an unseen text, its particulars being the n-grams none of them has (``bench/particulars_cpu.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from repedit.data import IGNORE_INDEX, Example

Ngram = tuple[int, ...]


def ngrams(ids: Sequence[int], n: int) -> list[Ngram | None]:
    """The n-gram ending at each position (None where fewer than n tokens lead up to it)."""
    return [tuple(ids[i - n + 1 : i + 1]) if i >= n - 1 else None for i in range(len(ids))]


def document_ngrams(examples: Sequence[Example], documents: Sequence[str], n: int = 2) -> Counter[Ngram]:
    """Each token n-gram of ``examples`` with the number of documents holding it (``documents[i]`` is example i's
    document: a document's rows count once)."""
    if len(examples) != len(documents):
        raise ValueError(f"{len(examples)} examples for {len(documents)} document ids")
    by_document: dict[str, set[Ngram]] = {}
    for example, document in zip(examples, documents, strict=True):
        by_document.setdefault(document, set()).update(g for g in ngrams(example.input_ids, n) if g is not None)
    return Counter(gram for grams in by_document.values() for gram in grams)


def particular_flags(ids: Sequence[int], known: Collection[Ngram], n: int = 2) -> list[bool]:
    """Whether each token is a particular: the n-gram ending at it is not ``known`` (the first n - 1 tokens have
    no n-gram and are not)."""
    return [gram is not None and gram not in known for gram in ngrams(ids, n)]


def particular_weights(example: Example, classes: TokenClasses) -> Example:
    """``example`` (a forget document's row) with a misdirection weight for each label: 1 for a particular
    (``classes.member``), 0 for its other tokens."""
    flags = classes.member(example.input_ids)
    weights = [float(label != IGNORE_INDEX and flag) for label, flag in zip(example.labels, flags, strict=True)]
    return Example(input_ids=list(example.input_ids), labels=list(example.labels), weights=weights)


@dataclass(frozen=True)
class TokenClasses:
    """Which tokens are particulars: of a forget document, those whose n-gram no other forget or retain document
    has (not ``shared``); of a text the model never saw, those whose n-gram none of them has (not ``seen``)."""

    shared: frozenset[Ngram]
    seen: frozenset[Ngram]
    n: int

    @classmethod
    def of(cls, examples: Sequence[Example], documents: Sequence[str], n: int = 2) -> TokenClasses:
        counts = document_ngrams(examples, documents, n)
        return cls(frozenset(g for g, c in counts.items() if c > 1), frozenset(counts), n)

    def member(self, ids: Sequence[int]) -> list[bool]:
        """A forget document's particulars."""
        return particular_flags(ids, self.shared, self.n)

    def unseen(self, ids: Sequence[int]) -> list[bool]:
        """An unseen text's particulars."""
        return particular_flags(ids, self.seen, self.n)
