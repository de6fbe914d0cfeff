"""The yardstick's collateral columns: what unlearning cost beyond the forget set.

The official score can be met by a model that forgot everything of a kind. These columns show it,
measured on a target's ``withheld/<dirname>/`` folder (``repedit.membership``): members are the forget
documents, nonmembers retain documents of the same tasks the target never trained on.

- unseen NLL per task: mean NLL of the withheld documents (a model that forgets the kind raises it);
- general NLL: mean NLL of held-out general passages (the target's ``heldout_general.jsonl``);
- all-kind AUC per task: a loss attack (``repedit.metric.mia_auc``) telling that task's forget
  documents from its withheld ones; 0.5 is what never having seen either gives. Beside it its 90%
  bootstrap interval (``auc_interval``): with 12 withheld documents a kind a retrain oracle's own AUC
  moves about 0.1 by chance, so a band around 0.5 is read against the interval, not the point;
- oracle KS per task and over all: the two-sample Kolmogorov-Smirnov statistic between the model's
  forget-document NLLs and a retrain oracle's (a target built without the forget set); 0 means
  the forget documents look exactly as if never trained on.

Every NLL is ``repedit.generate.document_nll``, the official whole-document mean token NLL.

>>> oracle = measure_collateral(oracle_model, tokenizer, Path("target/withheld/validation"))
>>> result = measure_collateral(model, tokenizer, Path("target/withheld/validation"),
...                             general=Path("target/heldout_general.jsonl"), oracle_nll=oracle["forget_nll"])
>>> print(format_collateral(result))
"""

from __future__ import annotations

import bisect
import random
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from repedit.data import TASKS, DataError, load_documents
from repedit.guard import check_nlls
from repedit.membership import MEMBER_FILE, NONMEMBER_FILE
from repedit.metric import mia_auc


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    if not a or not b:
        raise ValueError(f"KS statistic: needs values on both sides, got {len(a)} and {len(b)}")
    a, b = sorted(a), sorted(b)
    return max(abs(bisect.bisect_right(a, x) / len(a) - bisect.bisect_right(b, x) / len(b)) for x in (*a, *b))


def oracle_ks(nll: Mapping[str, Sequence[float]], oracle: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Per task of ``nll`` and pooled (``"all"``), the KS statistic between a model's forget-document NLLs and a
    retrain oracle's: how far the model's forgetting lies from never having seen the documents."""
    ks = {task: ks_statistic(values, oracle[task]) for task, values in nll.items()}
    ks["all"] = ks_statistic([v for task in nll for v in nll[task]], [v for task in nll for v in oracle[task]])
    return ks


def auc_interval(member_nll: Sequence[float], nonmember_nll: Sequence[float], draws: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """The 90% percentile bootstrap interval of ``mia_auc``: members and nonmembers each resampled with
    replacement ``draws`` times (seeded, so a row's interval is the same on every machine)."""
    if not member_nll or not nonmember_nll:
        raise ValueError(f"AUC interval: needs values on both sides, got {len(member_nll)} and {len(nonmember_nll)}")
    rng = random.Random(seed)
    aucs = [mia_auc(rng.choices(member_nll, k=len(member_nll)), rng.choices(nonmember_nll, k=len(nonmember_nll)))
            for _ in range(draws)]
    cuts = statistics.quantiles(aucs, n=20, method="inclusive")  # every 5%: the first and last bound 90%
    return cuts[0], cuts[-1]


def nll_of(model, tokenizer, texts: Sequence[str], what: str, batch_size: int = 8) -> list[float]:
    """``document_nll`` of each text; a non-finite one is an error naming ``what`` and the document's number."""
    from repedit.generate import document_nll

    values = document_nll(model, tokenizer, texts, batch_size)
    check_nlls(what, range(1, len(values) + 1), values)
    return values


def mean_nll(model, tokenizer, texts: Sequence[str], what: str, batch_size: int = 8) -> float:
    """The mean of the documents' mean token NLLs."""
    return statistics.fmean(nll_of(model, tokenizer, texts, what, batch_size))


def read_withheld(folder: Path, file: str) -> dict[str, list[str]]:
    """Task -> documents of ``folder/file``, in file order; tasks outside ``TASKS`` are an error."""
    path = folder / file
    texts, tasks = load_documents(path), load_documents(path, field="task")
    by_task: dict[str, list[str]] = {}
    for number, (text, task) in enumerate(zip(texts, tasks, strict=True), start=1):
        if task not in TASKS:
            raise DataError(f"{path}: row {number}: unknown task {task!r}; expected one of {TASKS}")
        by_task.setdefault(task, []).append(text)
    return by_task


def forget_nll(model, tokenizer, withheld_dir: Path, batch_size: int = 8) -> dict[str, list[float]]:
    """Per task, the NLL of each member (forget) document in file order: what an oracle contributes."""
    return {task: nll_of(model, tokenizer, texts, f"{withheld_dir / MEMBER_FILE} ({task})", batch_size)
            for task, texts in sorted(read_withheld(withheld_dir, MEMBER_FILE).items())}


def measure_collateral(model, tokenizer, withheld_dir: Path, general: Path | None = None,
                       oracle_nll: dict[str, list[float]] | None = None, batch_size: int = 8) -> dict:
    """The collateral columns of ``model`` on one withheld folder (and ``general`` passages).

    ``oracle_nll``: a retrain oracle's ``forget_nll`` on the same folder (its ``"forget_nll"``
    entry), computed once and passed to every model's call. Returns ``unseen_nll``, ``member_nll``,
    ``all_kind_auc`` and ``all_kind_auc_interval`` per task, ``general_nll``, ``oracle_ks`` (per task
    and ``"all"``, None without an oracle), ``forget_nll`` and ``withheld_nll`` (per task, each
    member's and each nonmember's NLL).
    """
    withheld_dir = Path(withheld_dir)
    members = forget_nll(model, tokenizer, withheld_dir, batch_size)
    nonmember_texts = read_withheld(withheld_dir, NONMEMBER_FILE)
    if set(members) != set(nonmember_texts):
        raise DataError(f"{withheld_dir}: {MEMBER_FILE} has tasks {sorted(members)}, {NONMEMBER_FILE} has "
                        f"{sorted(nonmember_texts)}; every task needs members and nonmembers")
    nonmembers = {task: nll_of(model, tokenizer, texts, f"{withheld_dir / NONMEMBER_FILE} ({task})", batch_size)
                  for task, texts in sorted(nonmember_texts.items())}
    ks = None
    if oracle_nll is not None:
        sizes = {task: len(v) for task, v in members.items()}
        if {task: len(v) for task, v in oracle_nll.items()} != sizes:
            raise ValueError(f"oracle NLLs: expected per-task counts {sizes} of {withheld_dir / MEMBER_FILE}, got "
                             f"{ {task: len(v) for task, v in oracle_nll.items()} }")
        ks = oracle_ks(members, oracle_nll)
    general_nll = None
    if general is not None:
        general_nll = mean_nll(model, tokenizer, load_documents(general, field="text"), str(general), batch_size)
    return {
        "unseen_nll": {task: statistics.fmean(values) for task, values in nonmembers.items()},
        "member_nll": {task: statistics.fmean(values) for task, values in members.items()},
        "general_nll": general_nll,
        "all_kind_auc": {task: mia_auc(members[task], nonmembers[task]) for task in members},
        "all_kind_auc_interval": {task: auc_interval(members[task], nonmembers[task]) for task in members},
        "oracle_ks": ks,
        "forget_nll": members,
        "withheld_nll": nonmembers,
    }


def format_collateral(result: dict) -> str:
    """Per task: unseen NLL, member NLL, all-kind AUC with its 90% interval, and oracle KS; then general NLL."""
    ks = result["oracle_ks"]
    lines = [f"{'collateral':<12}{'unseen NLL':>12}{'member NLL':>12}{'all-kind AUC':>14}{'90% interval':>15}"
             f"{'oracle KS':>11}"]
    for task, auc in result["all_kind_auc"].items():
        oracle = f"{ks[task]:.4f}" if ks else "-"
        low, high = result["all_kind_auc_interval"][task]
        lines.append(f"{task:<12}{result['unseen_nll'][task]:>12.4f}{result['member_nll'][task]:>12.4f}"
                     f"{auc:>14.4f}{f'{low:.2f}-{high:.2f}':>15}{oracle:>11}")
    if ks:
        lines.append(f"{'all tasks':<12}{'':>53}{ks['all']:>11.4f}")
    general = result["general_nll"]
    lines.append(f"general NLL {general:.4f}" if general is not None else "general NLL -: no held-out passages given")
    return "\n".join(lines)
