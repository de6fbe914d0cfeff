"""Data-parallel RMU (``repedit.distributed``): two CPU processes joined through gloo, launched with
the environment ``torchrun`` and ``accelerate launch`` set, edit what one process edits; and one process
taking each step in passes (``--micro-batch``) edits what one pass a step edits."""

import json
import sys
from pathlib import Path

import torch
from ranks import run_two_ranks

from repedit import rmu_config
from repedit.checkpoint import load_tensors, weight_map
from repedit.data import load_rows
from repedit.distributed import active, all_reduce_grads, broadcast, in_turns, is_main, share, total
from repedit.offload import to_device, to_host
from repedit.rmu import PrefixBatch, RMUConfig
from repedit.unlearn import unlearn

# Five rows a set per batch: the two processes hold 3 and 2 of each, so the shares are unequal.
PLAIN = {"layers": [2, 3, 4], "steps": 4, "batch_size": 5, "max_length": 64, "adaptive": 5.0, "loss.alpha": 100.0,
         "lr": 1e-3}
# Every whole-model term, and calibration's checks (tolerance 0: all of them run) on the main process.
CALIBRATED = {**PLAIN, "max_length": 128, "loss.retain_nll": 1.0, "loss.forget_ascent": 0.1, "loss.anchor": 1.0,
              "calibration.every": 2, "calibration.tolerance": 0.0}
# What each process runs: the process group joined first, as ``accelerate launch`` does, then the CLI
# once per config, as ``torchrun -m repedit.cli unlearn`` would.
DRIVER = """
import json, sys
import torch.distributed as dist
from repedit.cli import main
dist.init_process_group("gloo")
sys.exit(max(main(arguments) for arguments in json.loads(sys.argv[1])))
"""


def launch(runs: list[list[str]]) -> list[str]:
    """Two processes, each running the CLI with each argument list of ``runs``; their outputs."""
    return run_two_ranks([sys.executable, "-c", DRIVER, json.dumps(runs)])


def assert_same_run(two: Path, one, terms: tuple[str, ...], model_dir: Path, steps: int = 4,
                    plot: bool = True) -> None:
    """The two-process (or passes') output ``two`` against the one-process result ``one``: files, logged
    losses (every term over the whole batch), calibration checks and weights. ``plot``: ``two`` is the CLI's."""
    written = sorted(p.name for p in one.output_dir.iterdir())
    assert sorted(p.name for p in two.iterdir()) == sorted([*written, *["unlearn_curves.png"] * plot])
    logged = [json.loads(line) for line in (two / "unlearn_log.jsonl").read_text().splitlines()]
    assert len(logged) == len(one.losses) == steps
    for mine, theirs in zip(logged, one.losses, strict=True):
        for term in terms:
            assert abs(mine[term] - theirs[term]) <= 1e-5 * (1 + abs(theirs[term])), (term, mine, theirs)
    checks = json.loads((two / "unlearn.json").read_text())["calibration"]
    assert [c["calibrated_documents"] for c in checks] == [c["calibrated_documents"] for c in one.calibration]
    for mine, theirs in zip(checks, one.calibration, strict=True):
        assert abs(mine["forget_nll"] - theirs["forget_nll"]) <= 1e-5 * theirs["forget_nll"]
    for name, shard in weight_map(model_dir).items():
        torch.testing.assert_close(load_tensors(two / shard, {name})[name],
                                   load_tensors(one.output_dir / shard, {name})[name], rtol=1e-5, atol=1e-5)


def test_without_a_process_group_every_helper_is_the_identity():
    batch = {"input_ids": torch.arange(12).view(4, 3), "documents": torch.tensor([7, 8])}
    assert not active() and is_main() and broadcast("stop") == "stop"
    assert share(batch, 2) == (batch, 2)
    assert [t.item() for t in in_turns([3, 1, 2], lambda x: torch.tensor(10 * x))] == [30, 10, 20]
    count = torch.tensor(3.0)
    assert total(count) is count
    weight = torch.nn.Parameter(torch.ones(2))
    weight.grad = torch.tensor([1.0, 2.0])
    all_reduce_grads([weight])
    assert weight.grad.tolist() == [1.0, 2.0]


def test_each_rank_works_its_turns_and_every_rank_gets_every_result_in_order():
    """``in_turns`` over two ranks: five items, rank 0 working items 0, 2 and 4 and rank 1 items 1 and 3 (so a
    check's scoring is split, not repeated), every rank holding all five results in the items' order."""
    driver = """
import json, torch, torch.distributed as dist
from repedit.distributed import in_turns
dist.init_process_group("gloo")
results = in_turns([10, 11, 12, 13, 14], lambda item: torch.tensor([item, dist.get_rank()]))
print(json.dumps([r.tolist() for r in results]))
dist.destroy_process_group()
"""
    outputs = run_two_ranks([sys.executable, "-c", driver])
    expected = [[10, 0], [11, 1], [12, 0], [13, 1], [14, 0]]
    assert [json.loads(output.strip().splitlines()[-1]) for output in outputs] == [expected, expected]


def test_two_processes_edit_what_one_edits_and_write_it_once(tiny_model_dir, synth_dir, tmp_path):
    """Plain RMU; calibration against one level re-measured at each check; against rising per-task levels,
    which every rank's forget ascent then reads; with the checks scoring the weights averaged over 3 steps and
    the written check's edit scaled; and with each kind's kept share chosen by its goal's margin: each rank scores
    its share of a check's (and the goals') documents, and every rank reaches the one process's decisions."""
    tasked = tmp_path / "tasked.jsonl"
    tasked.write_text("".join(json.dumps({"text": r.document, "task": r.task}) + "\n"
                              for r in load_rows(synth_dir, "retain") if r.kind == "sc"))
    configs = {"plain": PLAIN,
               "calibrated": {**CALIBRATED, "calibration.unseen": str(synth_dir / "mia_data" / "nonmember.jsonl")},
               "rising": {**CALIBRATED, "calibration.unseen": str(tasked), "calibration.level": "rising", "lr": 0.02},
               "averaged": {**CALIBRATED, "calibration.unseen": str(synth_dir / "mia_data" / "nonmember.jsonl"),
                            "calibration.average": 3, "calibration.edit_scales": [0.9, 1.1]},
               # a margin this random model's goals straddle: the PII biographies and Wikipedia biographies keep
               # directions (0.5 / 0.45), the stories none
               "kept": {**CALIBRATED, "calibration.unseen": str(tasked), "loss.destination": "unseen",
                        "loss.destination_keep_margin": 0.005},
               # each rank's retain rows read by their place in the retain set, as one process reads them
               "strided": {**CALIBRATED, "calibration.unseen": str(synth_dir / "mia_data" / "nonmember.jsonl"),
                           "loss.retain_nll_stride": 2}}
    runs = []
    for name, config in configs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
        runs.append(["unlearn", "--model", str(tiny_model_dir), "--forget", str(synth_dir), "--retain",
                     str(synth_dir), "--out", str(tmp_path / name), "--config", str(tmp_path / f"{name}.json"),
                     "--device", "cpu"])
    outputs = launch(runs)
    assert outputs[0].count("wrote") == len(configs) and "wrote" not in outputs[1]  # only the main process reports
    one = {name: unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / f"one-{name}",
                         RMUConfig.from_dict(config), device="cpu", progress=False)
           for name, config in configs.items()}
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(
        [*configs, *(f"one-{name}" for name in configs)])  # no scratch left behind
    assert_same_run(tmp_path / "plain", one["plain"], ("loss", "forget", "retain"), tiny_model_dir)
    levels = [c["target_nll"] for c in one["rising"].calibration]
    assert abs(levels[1] - levels[0]) > 1e-3  # the levels rank 0 re-measured moved: stale ones would show
    assert len(one["averaged"].calibration) == 2 + 2  # the checks, then the two scaled edits
    for name in ("calibrated", "rising", "averaged", "kept", "strided"):
        assert len(one[name].calibration) >= 2
        assert_same_run(tmp_path / name, one[name],
                        ("loss", "forget", "retain", "anchor", "retain_nll", "forget_ascent"), tiny_model_dir)
    kept = json.loads((tmp_path / "kept" / "unlearn.json").read_text())["kept_shares"]  # the goals' NLLs dealt out
    assert kept["shares"] == one["kept"].kept_shares["shares"] == {"Task1": 0.0, "Task2": 0.5, "Task3": 0.45}
    for task, past in kept["goal_past_level"].items():
        assert past.keys() == one["kept"].kept_shares["goal_past_level"][task].keys()
        for kept_share, value in past.items():
            assert abs(value - one["kept"].kept_shares["goal_past_level"][task][kept_share]) <= 1e-5 * (1 + abs(value))


def test_a_step_in_passes_edits_what_one_pass_edits(tiny_model_dir, synth_dir):
    """``--micro-batch``: 6 rows a set a step in 3 passes of 2, and in 6 of 1, against one pass, with every
    term and the checks on; the seventh step's batch (4 rows a set of the 40) leaves two of the six passes
    empty and gives the others the anchor's six texts unevenly. With ``--retain-nll-stride 2`` too: a pass of one
    row reads its row when one pass would. And in passes of one with the retain NLL's top run ahead in passes of 200
    tokens (``--retain-nll-tokens 200``: rows of several passes, cut to different lengths, padded together); in one
    pass the budget changes nothing, bit for bit (the preset sets it, and the sim's reports ran without it)."""
    config = {**CALIBRATED, "steps": 7, "batch_size": 6, "max_length": 96, "calibration.every": 3,
              "calibration.unseen": str(synth_dir / "mia_data" / "nonmember.jsonl")}
    passes = {"ahead": 1, "one-ahead": 6}
    for stride in (1, 2):
        runs = {micro: unlearn(tiny_model_dir, synth_dir, synth_dir, synth_dir.parent / f"passes-{micro}-{stride}",
                               RMUConfig.from_dict({**config, "micro_batch": passes.get(micro, micro),
                                                    "loss.retain_nll_stride": stride,
                                                    "loss.retain_nll_tokens": 200 if "ahead" in str(micro) else 0}),
                               device="cpu", progress=False)
                for micro in (6, 2, 1, "ahead", *("one-ahead",) * (stride == 1))}
        assert len(runs[6].calibration) == 3 and runs[6].losses[-1]["anchor"] > 0
        if stride == 1:
            for name, shard in weight_map(tiny_model_dir).items():
                assert torch.equal(load_tensors(runs["one-ahead"].output_dir / shard, {name})[name],
                                   load_tensors(runs[6].output_dir / shard, {name})[name])
        for micro in (2, 1, "ahead"):
            assert_same_run(runs[micro].output_dir, runs[6],
                            ("loss", "forget", "retain", "anchor", "retain_nll", "forget_ascent"), tiny_model_dir,
                            steps=7, plot=False)


def test_offloaded_caches_reach_every_tensor_and_edit_what_the_card_held_edits(tiny_model_dir, synth_dir):
    """``--offload``: a cached batch moved keeps its structure, each tensor of it moved (the layer kwargs'
    nested masks and position embeddings too, others untouched); a run with its caches in host memory edits
    what the run holding them on the device edits, with passes, the checks and the preset's terms on (no ascent:
    the retain rows alone run the layers above L)."""
    config = {**CALIBRATED, "steps": 5, "batch_size": 4, "micro_batch": 2, "max_length": 96, "calibration.every": 2,
              "loss.forget_ascent": 0.0, "calibration.unseen": str(synth_dir / "mia_data" / "nonmember.jsonl")}
    runs = {offload: unlearn(tiny_model_dir, synth_dir, synth_dir, synth_dir.parent / f"offload-{offload}",
                             RMUConfig.from_dict({**config, "offload": offload}), device="cpu", progress=False)
            for offload in (False, True)}
    assert len(runs[False].calibration) == 3 and runs[False].losses[-1]["anchor"] > 0
    assert_same_run(runs[True].output_dir, runs[False],
                    ("loss", "forget", "retain", "anchor", "retain_nll"), tiny_model_dir, steps=5, plot=False)
    batch = PrefixBatch(torch.ones(2, 3, 4), {"attention_mask": torch.ones(2, 1, 3, 3, dtype=torch.bool),
                                              "position_embeddings": (torch.ones(1, 3, 2), torch.zeros(1, 3, 2)),
                                              "use_cache": False, "cache": None}, torch.ones(2, 3), torch.ones(2, 3))
    kept = to_host([(batch, torch.ones(1, 3, 4))])
    assert torch.equal(kept[0][0].layer_kwargs["position_embeddings"][1], torch.zeros(1, 3, 2))
    assert torch.equal(kept[0][0].hidden, batch.hidden) and kept[0][0].hidden is not batch.hidden  # a copy
    [(moved, frozen)] = to_device(kept, torch.device("meta"))
    tensors = [moved.hidden, moved.mask, moved.labels, frozen, moved.layer_kwargs["attention_mask"],
               *moved.layer_kwargs["position_embeddings"]]
    assert {t.device.type for t in tensors} == {"meta"} and moved.documents is None
    assert type(moved.layer_kwargs["position_embeddings"]) is tuple and moved.layer_kwargs["use_cache"] is False
    assert moved.layer_kwargs["attention_mask"].shape == (2, 1, 3, 3) and moved.forget_rows == 0


def test_without_micro_batch_a_step_takes_the_passes_that_fit_and_the_run_records_them(tiny_model_dir, synth_dir,
                                                                                       monkeypatch):
    """No ``--micro-batch``: a pass takes the most rows (a divisor of the batch) whose rows x tokens x hidden size
    stays within OLMo-7B's 8 x 512 x 4096, measured to fit a 40 GB card: 8 of the preset's 64 at 7B, 16 at 1B, the
    whole batch on the sim, as before. A run with that bound lowered to 2 of the tiny model's rows edits what
    ``--micro-batch 2`` edits and records the passes it took."""
    preset = RMUConfig.from_dict({"batch_size": 64, "max_length": 512})
    assert preset.fitted(4096).micro_batch == 8 and preset.fitted(2048).micro_batch == 16
    assert preset.fitted(160) == preset  # the sim's hidden size: one pass
    assert RMUConfig.from_dict({"batch_size": 12, "max_length": 512}).fitted(4096).micro_batch == 6
    assert RMUConfig.from_dict({"batch_size": 64, "micro_batch": 32}).fitted(4096).micro_batch == 32  # as given
    config = {**CALIBRATED, "steps": 3, "batch_size": 6, "max_length": 96, "calibration.every": 3,
              "calibration.unseen": str(synth_dir / "mia_data" / "nonmember.jsonl")}
    given = unlearn(tiny_model_dir, synth_dir, synth_dir, synth_dir.parent / "given-2",
                    RMUConfig.from_dict({**config, "micro_batch": 2}), device="cpu", progress=False)
    hidden = json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"]
    monkeypatch.setattr(rmu_config, "PASS_ELEMENTS", 2 * 96 * hidden)
    fitted = unlearn(tiny_model_dir, synth_dir, synth_dir, synth_dir.parent / "fitted-2", RMUConfig.from_dict(config),
                     device="cpu", progress=False)
    assert json.loads((fitted.output_dir / "unlearn.json").read_text())["config"]["micro_batch"] == 2
    assert_same_run(fitted.output_dir, given, ("loss", "forget", "retain", "anchor", "retain_nll", "forget_ascent"),
                    tiny_model_dir, steps=3, plot=False)
