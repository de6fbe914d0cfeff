"""Build the ``sim`` target on one GPU: the public train + validation sets after a general warm-up.

The target must reach ROUGE-L recall and QA exact match >= 0.9 on every task and split, and an MIA
AUC >= 0.95 (members: the Task3 train-forget documents), within one 10-minute remote command. This
prints the training progress, the card table, the wall time and the largest file written (each must
pass a 16 MiB per-file transfer limit), and copies the card to ``--card``.

Usage (one H100, from the repository root):
    python bench/build_sim.py --out /tmp/sim --card $OUT/sim_card.json
Smoke test on a CPU (two documents per task and split, a few passages, one epoch each):
    python bench/build_sim.py --out /tmp/sim --device cpu --subset 2 --general-limit 40 --epochs 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from repedit.assets import shared_path
from repedit.card import format_card
from repedit.checkpoint import CARD_FILE
from repedit.data import TASKS, load_rows
from repedit.presets import PRESETS
from repedit.target import build_target

FILE_LIMIT = 16 * 2**20


def subset_sets(dirs: list[Path], mia: Path | None, per_task: int,
                out: Path) -> tuple[list[Path], Path | None]:
    """The first ``per_task`` documents (sc row and QA rows) of each task, split and directory, and as
    many MIA members and nonmembers: a CPU-sized copy for smoke tests."""
    copies = []
    for number, directory in enumerate(dirs):
        copy = out / f"set{number}"
        copy.mkdir(parents=True)
        for split in ("forget", "retain"):
            rows = load_rows(directory, split)
            stems: set[str] = set()
            for task in TASKS:
                sc = [row.id[:-3] for row in rows if row.task == task and row.kind == "sc"]
                stems.update(sc[:per_task])
            with open(copy / f"{split}.jsonl", "w") as handle:
                for row in rows:
                    if row.id[:-3] in stems:
                        record = {"id": row.id, "input": row.input, "output": row.output, "task": row.task}
                        handle.write(json.dumps(record) + "\n")
        copies.append(copy)
    if mia is None:
        return copies, None
    (out / "mia").mkdir()
    for name in ("member.jsonl", "nonmember.jsonl"):
        lines = (mia / name).read_text().splitlines()[: 3 * per_task]
        (out / "mia" / name).write_text("\n".join(lines) + "\n")
    return copies, out / "mia"


def main() -> int:
    semeval = shared_path("semeval25")
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--card", type=Path, help="also copy the card JSON here")
    parser.add_argument("--data", type=Path, nargs="+",
                        default=[semeval / "train", semeval / "validation"] if semeval else None)
    parser.add_argument("--general", type=Path, default=shared_path("general", "passages.jsonl"))
    parser.add_argument("--mia", type=Path, default=semeval / "mia_data" if semeval else None)
    parser.add_argument("--device", help="default: cuda when present")
    parser.add_argument("--seed", type=int, default=0)
    recipe = PRESETS["sim"].recipe
    parser.add_argument("--epochs", type=int, default=recipe.epochs, help="most epochs over the rows")
    parser.add_argument("--general-epochs", type=int, default=recipe.general_epochs)
    parser.add_argument("--lr", type=float, default=recipe.lr)
    parser.add_argument("--time-budget", type=float, default=recipe.time_budget_s,
                        help="seconds of row training at most")
    parser.add_argument("--subset", type=int, help="smoke test: only N documents per task, split and set")
    parser.add_argument("--general-limit", type=int, help="smoke test: only the first N general passages")
    args = parser.parse_args()
    if args.data is None:
        parser.error("--data: ../shared/data/semeval25 not found; give the set directories")

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # the few fp32 matmuls outside bf16 autocast
        torch.backends.cudnn.allow_tf32 = True
    recipe = dataclasses.replace(recipe, epochs=args.epochs, general_epochs=args.general_epochs, lr=args.lr,
                                 time_budget_s=args.time_budget)
    preset = dataclasses.replace(PRESETS["sim"], recipe=recipe)
    with tempfile.TemporaryDirectory() as scratch:
        data, mia, general = args.data, args.mia, args.general
        if args.subset:
            data, mia = subset_sets(data, mia, args.subset, Path(scratch))
        if args.general_limit and general:
            lines = general.read_text().splitlines()[: args.general_limit]
            general = Path(scratch) / "general.jsonl"
            general.write_text("\n".join(lines) + "\n")
        card = build_target(preset, data, args.out, general=general, seed=args.seed, device=args.device,
                            mia=mia)
    print(format_card(card))
    largest = max((p for p in args.out.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    size = largest.stat().st_size
    verdict = "within" if size < FILE_LIMIT else "OVER"
    print(f"largest file: {largest.name}, {size / 2**20:.2f} MiB ({verdict} the 16 MiB limit)")
    if args.card:
        args.card.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.out / CARD_FILE, args.card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
