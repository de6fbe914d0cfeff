"""A document's particulars: the tokens no other document shares (``--forget-tokens particulars``).

Documents of one kind share a template ("was born on", "can be reached via phone at", the questions
asked of every biography) and differ where each is its own: names, dates, numbers, addresses, a story's
events. Misdirecting the template moves every document of the kind with the forget set (BENCHMARKS.md:
unseen PII biographies +17-20% under ``--forget-tokens document``). A token is a particular of its document
when the bigram ending at it occurs in no other document of the forget and retain sets. The particulars hold
most of what tells a memorized document from an unseen one, not all: a memorizing model predicts its own
documents' template more surely too (``bench/particulars_cpu.py``: a quarter to a third of the NLL gap on the
sim). Misdirecting the template at a weight between 0 and 1 (``--template-weight``, the twenty-second call)
measured as ``document`` at 0.75 and tuned lowest at 0.25 and 0.5, and was removed (BENCHMARKS.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from repedit.data import IGNORE_INDEX, Example

Bigram = tuple[int, int]


def shared_bigrams(examples: Sequence[Example], documents: Sequence[str]) -> set[Bigram]:
    """The token bigrams of ``examples`` that occur in at least two documents (``documents[i]`` is
    example i's document: a document's rows count once)."""
    if len(examples) != len(documents):
        raise ValueError(f"{len(examples)} examples for {len(documents)} document ids")
    by_document: dict[str, set[Bigram]] = {}
    for example, document in zip(examples, documents, strict=True):
        ids = example.input_ids
        by_document.setdefault(document, set()).update(zip(ids, ids[1:], strict=False))
    counts = Counter(bigram for bigrams in by_document.values() for bigram in bigrams)
    return {bigram for bigram, count in counts.items() if count > 1}


def particular_weights(example: Example, shared: set[Bigram]) -> Example:
    """``example`` with a misdirection weight for each label: 1 for a particular (a labelled token whose bigram
    with the token before it is not ``shared``), 0 for its other tokens. A sequence's first token has no bigram
    and is not a particular."""
    ids, labels = example.input_ids, example.labels
    weights = [1.0 if label != IGNORE_INDEX and i > 0 and (ids[i - 1], ids[i]) not in shared else 0.0
               for i, label in enumerate(labels)]
    return Example(input_ids=list(ids), labels=list(labels), weights=weights)
