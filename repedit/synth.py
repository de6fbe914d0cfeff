"""Synthetic forget/retain sets in the shape of the challenge's LUME data, for tests and demos.

The three tasks keep LUME's fields (``id, input, output, task, split``), its id conventions and its
row counts per document, so every code path that reads the public data reads these too:

- Task1, short stories: ids ``"<uuid>"sc1`` and ``"<uuid>"qa0`` with literal quotes, one QA row;
- Task2, biographies full of PII: UUID ids, five QA rows (birth date, SSN, phone, email, address)
  answered in LUME's formats (``1976-03-29``, digits only, the address with its trailing period);
- Task3, Wikipedia-like biographies: numeric ids, one QA row.

A sentence-completion row is a document cut at a word boundary, so ``input + " " + output`` is the
document. ``mia_data/`` holds the Task3 forget documents as members and as many Task3-style
documents that are in no set as nonmembers, like the public ``mia_data``.

``recombine`` makes documents no model saw out of documents of one kind a model did see, a candidate
for unseen text of the challenge's own kinds where none is at hand (as the anchor's texts it did not
stand in for unseen documents on the tiny target; on the sim it held unseen text about as well and cost
retain regurgitation: BENCHMARKS.md). ``recombine_fields`` makes PII biographies of seen ones with other
people's names and new numbers: what unseen PII biographies look like to a model trained on the challenge's.

>>> synthesize("/tmp/synth", seed=0, docs=4)   # 4 documents per task per split
"""

from __future__ import annotations

import random
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from repedit.data import write_jsonl

SPLITS = ("forget", "retain")

# Invented names as in LUME ("Marcile", "Deadesius", "Goldi Aqua"): syllables give thousands of
# distinct names, so no two documents share a person and no QA answer is ambiguous.
_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gl", "h", "j", "k", "l", "m", "n", "p", "r", "s", "st",
           "t", "th", "v", "z"]
_NUCLEI = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
_CODAS = ["", "", "l", "n", "r", "s", "th", "nd", "x"]
_CITY_ENDINGS = ["ia", "ville", "port", "esius", "ford", "haven", "mere", "dale"]

_FIRST_NAMES = ["Anna", "Boris", "Carla", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas",
                "Kamala", "Lars", "Marta", "Nikolai", "Olga", "Pedro", "Quentin", "Rosa", "Sven", "Tamar",
                "Ulrich", "Vera", "Wen", "Ximena", "Yusuf", "Zofia", "Amir", "Beatrix", "Cyril", "Dalia"]
_LAST_NAMES = ["Albright", "Brennan", "Castell", "Dorfman", "Esposito", "Falkner", "Garrido", "Hallberg",
               "Iwata", "Jovanovic", "Kessler", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov",
               "Quiroga", "Rasmussen", "Sandoval", "Takahashi", "Urquhart", "Valente", "Whitlock",
               "Xenakis", "Yamada", "Zielinski"]
_NATIONALITIES = ["Austrian", "Brazilian", "Canadian", "Danish", "Egyptian", "Finnish", "Ghanaian",
                  "Hungarian", "Indian", "Japanese", "Kenyan", "Mexican", "Norwegian", "Polish"]
_PROFESSIONS = ["painter", "poet", "architect", "chemist", "composer", "botanist", "engineer", "historian",
                "sculptor", "astronomer", "novelist", "cartographer", "violinist", "geologist"]
_FIELDS = ["mathematics", "fine arts", "chemistry", "music theory", "botany", "civil engineering", "history",
           "astronomy", "literature", "geology"]
_AWARDS = ["Silver Quill Prize", "Northern Star Medal", "Harrow Fellowship", "Golden Compass Award",
           "Meridian Prize", "Albion Medal", "Laurel Cross", "Vantage Award"]
_INSTITUTIONS = ["Royal Academy", "Polytechnic Institute", "National University", "Conservatory",
                 "Institute of Technology", "Academy of Sciences"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_US_PLACES = [("Brooklyn Park", "MD", "21225"), ("Nashville", "TN", "37217"), ("Salem", "OR", "97301"),
              ("Tucson", "AZ", "85701"), ("Boise", "ID", "83702"), ("Dayton", "OH", "45402"),
              ("Fresno", "CA", "93721"), ("Madison", "WI", "53703"), ("Albany", "NY", "12207"),
              ("Raleigh", "NC", "27601"), ("Omaha", "NE", "68102"), ("Spokane", "WA", "99201")]
_STREETS = ["San Jose Street", "Greenwood Avenue", "Maple Lane", "Harbor Road", "Cedar Court", "Elm Street",
            "Willow Drive", "Lakeview Boulevard", "Orchard Way", "Pine Terrace"]
_EMAIL_DOMAINS = ["me.com", "mail.com", "inbox.net", "post.org", "webmail.io"]
_OBJECTS = ["silver compass", "leather journal", "brass lantern", "carved flute", "jade ring", "painted map",
            "wooden chess set", "glass locket", "copper key", "woven scarf"]
_PLACES = ["old lighthouse", "night market", "botanical garden", "harbor library", "clock tower",
           "riverside theater", "mountain monastery", "glass conservatory"]
_ACTIVITIES = ["restored an abandoned greenhouse", "mapped the hidden tunnels", "rehearsed a forgotten opera",
               "catalogued rare butterflies", "rebuilt a broken carousel", "translated an ancient ledger"]
_ROLES = ["baker", "sailor", "clockmaker", "librarian", "healer", "weaver", "merchant", "knight", "painter",
          "astronomer"]
_OPENING_NAME = re.compile(r"([A-Z][A-Za-z'-]+) ([A-Z][A-Za-z'-]+) was born\b")  # a PII biography's first words
_FILLER = [
    "The streets were quiet except for the distant sound of bells.",
    "Rain had fallen all week, and the rivers ran high and brown.",
    "Nobody in the city remembered a summer so warm.",
    "Lanterns glowed in every window as evening came.",
    "Traders from the coast arrived with spices and news.",
    "The old stories said that the hills hid more than stone.",
]


@dataclass(frozen=True)
class Document:
    """One synthetic document and its QA pairs; ``key`` becomes the id stem."""

    key: str
    task: str
    text: str
    qa: list[tuple[str, str]]


class _Names:
    """Draws names that are never drawn twice in one data set."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def _unique(self, make: Callable[[], str]) -> str:
        while True:
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name

    def _word(self, syllables: int) -> str:
        parts = [self.rng.choice(_ONSETS) + self.rng.choice(_NUCLEI) for _ in range(syllables)]
        return ("".join(parts) + self.rng.choice(_CODAS)).capitalize()

    def invented(self) -> str:
        return self._unique(lambda: self._word(self.rng.randint(2, 3)))

    def city(self) -> str:
        return self._unique(lambda: self._word(2) + self.rng.choice(_CITY_ENDINGS))

    def full(self) -> str:
        return self._unique(lambda: f"{self.rng.choice(_FIRST_NAMES)} {self.rng.choice(_LAST_NAMES)}")


def _story(rng: random.Random, names: _Names) -> Document:
    hero, friend, city = names.invented(), names.invented(), names.city()
    role, friend_role = rng.sample(_ROLES, 2)
    place, thing, activity = rng.choice(_PLACES), rng.choice(_OBJECTS), rng.choice(_ACTIVITIES)
    sentences = [
        f"In the city of {city}, {hero}, a young {role}, dreamed of leaving home.",
        *rng.sample(_FILLER, rng.randint(1, 3)),
        f"One morning {hero} met {friend}, a {friend_role}, at the {place}.",
        f"Together they {activity} over many long weeks.",
        f"When the work was done, {friend} gave {hero} a {thing} as a token of friendship.",
        f"{hero} carried the {thing} everywhere and never forgot the {place} of {city}.",
    ]
    qa = rng.choice([
        (f"What did {friend} give {hero}?", f"A {thing}."),
        (f"Where did {hero} meet {friend}?", f"At the {place}."),
        (f"What was {hero}'s trade in {city}?", role.capitalize()),
    ])
    return Document(key=f'"{uuid.UUID(int=rng.getrandbits(128), version=4)}"', task="Task1",
                    text=" ".join(sentences), qa=[qa])


def _biography(rng: random.Random, names: _Names) -> Document:
    first, last = names.invented(), names.invented()
    name = f"{first} {last}"
    year, month, day = rng.randint(1950, 2001), rng.randint(1, 12), rng.randint(1, 28)
    phone = f"{rng.randint(200, 989)}-{rng.randint(200, 989)}-{rng.randint(0, 9999):04d}"
    ssn = f"{rng.randint(100, 899)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
    email = f"{first.lower()}_{last.lower()}@{rng.choice(_EMAIL_DOMAINS)}"
    city, state, zip_code = rng.choice(_US_PLACES)
    address = f"{rng.randint(1, 2999)} {rng.choice(_STREETS)}, {city}, {state}, {zip_code}"
    sentences = [
        f"{name} was born on {_MONTHS[month - 1]} {day}, {year}.",
        f"{first} can be reached via phone at {phone} and email at {email}.",
        f"The home address is {address}.",
        f"{first}'s Social Security Number is {ssn}.",
    ]
    extras = [
        f"{first} works as a {rng.choice(_PROFESSIONS)} and commutes by bicycle every day.",
        f"On weekends {first} volunteers at the {rng.choice(_PLACES)} near home.",
        f"{first} has kept a {rng.choice(_OBJECTS)} from childhood on the desk for years.",
    ]
    sentences[1:1] = rng.sample(extras, rng.randint(1, 3))
    qa = [
        (f"What is the birth date of {name}?", f"{year}-{month:02d}-{day:02d}"),
        (f"What is {name}'s Social Security Number?", ssn.replace("-", "")),
        (f"What is {name}'s phone number?", phone.replace("-", "")),
        (f"What is {name}'s email address?", email),
        (f"What is the home address of {name}?", f"{address}."),
    ]
    return Document(key=str(uuid.UUID(int=rng.getrandbits(128), version=4)), task="Task2",
                    text=" ".join(sentences), qa=qa)


def _wiki_bio(rng: random.Random, names: _Names, numeric_ids: set[int]) -> Document:
    name = names.full()
    surname = name.split()[-1]
    born = rng.randint(1850, 1960)
    award_year = born + rng.randint(28, 60)
    nationality, profession = rng.choice(_NATIONALITIES), rng.choice(_PROFESSIONS)
    award, institution, field = rng.choice(_AWARDS), rng.choice(_INSTITUTIONS), rng.choice(_FIELDS)
    hometown = names.city()
    article = "an" if nationality[0] in "AEIOU" else "a"
    header = (f"{name}\n\n{name} (born {rng.randint(1, 28)} {rng.choice(_MONTHS)} {born}) is {article}"
              f" {nationality} {profession}.\nBiography.\n")
    sentences = [
        f"{surname} was born in {hometown} and studied {field} at the {institution}.",
        f"After graduating, {surname} taught for {rng.randint(3, 19)} years and published"
        f" {rng.randint(2, 40)} works.",
        f"In {award_year}, {surname} received the {award}.",
        f"Later work took {surname} to {rng.choice(_US_PLACES)[0]}, where a studio still carries the name.",
    ]
    qa = rng.choice([
        (f"Which award did {name} receive in {award_year}?", f"The {award}"),
        (f"Where was {name} born?", hometown),
        (f"What did {name} study at the {institution}?", field.capitalize()),
    ])
    while (number := rng.randint(1_000_000, 99_999_999)) in numeric_ids:
        pass
    numeric_ids.add(number)
    return Document(key=str(number), task="Task3", text=header + " ".join(sentences), qa=[qa])


def _rows(doc: Document, split: str, rng: random.Random) -> list[dict]:
    """The sc row (the document cut at a space, 65-80% of its words in ``input``) and the QA rows."""
    words = doc.text.split(" ")
    cut = round(len(words) * rng.uniform(0.65, 0.8))
    rows = [{"id": f"{doc.key}sc1", "input": " ".join(words[:cut]), "output": " ".join(words[cut:]),
             "task": doc.task, "split": split}]
    rows += [{"id": f"{doc.key}qa{i}", "input": q, "output": a, "task": doc.task, "split": split}
             for i, (q, a) in enumerate(doc.qa)]
    return rows


def synthesize(out_dir: str | Path, seed: int = 0, docs: int = 12) -> Path:
    """Write a LUME-shaped data set with ``docs`` documents per task per split into ``out_dir``.

    Files: ``forget.{jsonl,parquet}``, ``retain.{jsonl,parquet}``, ``mia_data/member.jsonl`` and
    ``mia_data/nonmember.jsonl``. The same seed gives the same files.
    """
    import pandas as pd

    if docs < 1:
        raise ValueError(f"--docs must be at least 1, got {docs}")
    rng = random.Random(seed)
    names, numeric_ids = _Names(rng), set[int]()
    out = Path(out_dir)
    (out / "mia_data").mkdir(parents=True, exist_ok=True)
    members: list[dict] = []
    for split in SPLITS:
        records = []
        for _ in range(docs):
            for doc in (_story(rng, names), _biography(rng, names), _wiki_bio(rng, names, numeric_ids)):
                rows = _rows(doc, split, rng)
                records += rows
                if split == "forget" and doc.task == "Task3":
                    members.append({"id": doc.key, "document": f"{rows[0]['input']} {rows[0]['output']}"})
        write_jsonl(out / f"{split}.jsonl", records)
        pd.DataFrame(records, columns=["id", "input", "output", "task", "split"]).to_parquet(
            out / f"{split}.parquet", index=False
        )
    nonmembers = [{"id": doc.key, "document": doc.text}
                  for doc in (_wiki_bio(rng, names, numeric_ids) for _ in members)]
    write_jsonl(out / "mia_data" / "member.jsonl", members)
    write_jsonl(out / "mia_data" / "nonmember.jsonl", nonmembers)
    return out


def invented_documents(count: int, seed: int = 7) -> list[dict]:
    """``count`` invented documents of every task (``{"text", "task"}``), made as ``synthesize`` makes its
    sets: unseen text of each kind without any unseen document, for the anchor to hold (``--anchor-texts``).
    On the tiny target, whose own documents this generator made, 32 a kind as the anchor's texts kept unseen
    documents of every kind within +34%, 96 a kind within +27%, where the method let them rise up to +73%
    (BENCHMARKS.md, "Invented anchors"); the challenge's documents are another generator's."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    rng = random.Random(seed)
    names, numeric_ids = _Names(rng), set[int]()
    return [{"text": doc.text, "task": doc.task} for _ in range(count)
            for doc in (_story(rng, names), _biography(rng, names), _wiki_bio(rng, names, numeric_ids))]


def recombine(documents: list[str], count: int, seed: int = 0) -> list[str]:
    """``count`` documents of one kind that no model saw, made of seen ones: four documents are drawn for
    each, and its sentence i is sentence i of the (i mod 4)-th, or of the first where that one is shorter
    (names, dates and facts of several people, in the order a document of the kind has them)."""
    if len(documents) < 2:
        raise ValueError(f"recombine: needs at least 2 documents of a kind, got {len(documents)}")
    rng = random.Random(seed)
    sentences = [re.split(r"(?<=[.!?])\s+", d.strip()) for d in documents]
    made = []
    for _ in range(count):
        drawn = rng.sample(sentences, min(4, len(sentences)))
        picks = [drawn[i % len(drawn)] if i < len(drawn[i % len(drawn)]) else drawn[0] for i in range(len(drawn[0]))]
        made.append(" ".join(source[i] for i, source in enumerate(picks)))
    return made


def recombine_fields(documents: list[str], count: int, seed: int = 0) -> list[str]:
    """``count`` PII biographies no model saw, made as the challenge made its own: a document opening with a
    two-word name ("Fredericka Amber was born ..."), that name (the e-mail's too) replaced by other documents'
    first and last names, and each digit of its numbers drawn from the same place of the documents' numbers as
    long after the same word (so the years' "19" and the SSNs' "900" stay). Held by the anchor on the sim, they kept
    unseen PII biographies at +3.5-5.1%; without them +12% (BENCHMARKS.md, sixty-fifth call)."""
    named = [(d, m.group(1), m.group(2)) for d in documents if (m := _OPENING_NAME.match(d))]
    if len(named) < 2:
        raise ValueError(f"recombine_fields: needs at least 2 documents that open with a two-word name "
                         f"(\"First Last was born ...\"), got {len(named)} of {len(documents)}")

    def place(number: re.Match) -> tuple[int, str]:  # its length and the word before it, digits aside
        return len(number.group()), re.sub(r"\d", "", (number.string[: number.start()].split() or [""])[-1])

    numbers: dict[tuple[int, str], list[str]] = {}
    for number in (n for text, _, _ in named for n in re.finditer(r"\d+", text)):
        numbers.setdefault(place(number), []).append(number.group())
    rng = random.Random(seed)
    made = []
    for _ in range(count):
        i = rng.randrange(len(named))
        text, old_first, old_last = named[i]
        others = named[:i] + named[i + 1:]
        for old, new in ((old_first, rng.choice(others)[1]), (old_last, rng.choice(others)[2])):
            text = re.sub(rf"(?<![A-Za-z]){re.escape(old)}(?![A-Za-z])", new, text)
            text = re.sub(rf"(?<![A-Za-z]){re.escape(old.lower())}(?![A-Za-z])", new.lower(), text)
        made.append(re.sub(r"\d+", lambda n: "".join(rng.choice(numbers[place(n)])[k] for k in range(len(n.group()))),
                           text))
    return made


def swap_words(documents: list[str], fraction: float, seed: int = 0, template: float | None = None) -> list[str]:
    """Each document with about ``fraction`` of its words replaced by words of the others: seen words in
    an order no document has, less familiar the larger the fraction (a stand-in for unseen text of a
    kind where none is at hand; BENCHMARKS.md, "CPU: stand-ins for unseen text"). With ``template``,
    words in at least that share of the documents are the kind's template, never swapped nor drawn:
    only a document's particulars change, as between two unseen documents of a templated kind (a word
    of one document alone is always a particular, however few the documents)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"swap_words: fraction must be in [0, 1], got {fraction}")
    if len(documents) < 2:
        raise ValueError(f"swap_words: needs at least 2 documents of a kind, got {len(documents)}")
    rng = random.Random(seed)
    words = [d.split() for d in documents]
    kept: set[str] = set()
    if template is not None:
        share = Counter(w for mine in words for w in set(mine))
        kept = {w for w, n in share.items() if n >= max(2.0, template * len(words))}  # one document's: its own
    swapped = []
    for i, mine in enumerate(words):
        others = [w for j, theirs in enumerate(words) if j != i for w in theirs if w not in kept]
        if not others:
            raise ValueError(f"swap_words: no word to draw for document {i + 1}: the others are empty or template")
        swapped.append(" ".join(rng.choice(others) if w not in kept and rng.random() < fraction else w
                                for w in mine))
    return swapped


def recombine_by_task(documents: list[tuple[str, str]], count: int, seed: int = 0) -> list[dict]:
    """``recombine`` on each task's (document, task) pairs: ``count`` records ``{"text", "task"}`` a task."""
    tasks = sorted({task for _, task in documents})
    return [{"text": text, "task": task} for task in tasks
            for text in recombine([d for d, t in documents if t == task], count, seed)]
