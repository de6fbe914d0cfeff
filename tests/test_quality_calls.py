"""bench/quality_calls.sh: the GPU stages as one background pipeline that calls shorter than the whole carry,
run here with a stand-in for Python that records each stage's command."""

import gzip
import io
import json
import lzma
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from repedit.data import TASKS, load_rows
from repedit.synth import invented_documents, recombine_fields, synthesize

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "quality_calls.sh"
STAND_IN = """#!/usr/bin/env bash
if [ "$1" = -c ]; then [ -z "${MISSING:-}" ]; exit; fi  # the wheels' import check
echo "$PWD | $REPEDIT_DATA | $*" >> "$CALLS"
if [ "$2" = build ]; then  # a target larger than one part, and the files the build writes beside it
  mkdir -p "$WORK/sim" "$WORK/sets/validation" && head -c 300000 /dev/urandom > "$WORK/sim/model.safetensors"
  echo '{"text": "x"}' > "$WORK/reference-public-tasks.jsonl" && echo '{}' > "$WORK/oracle_nll.json"
  echo '{"id": 1}' > "$WORK/sets/validation/retain.jsonl"
  mkdir -p "$WORK/oracle" "$WORK/rows" && echo oracle > "$WORK/oracle/model.safetensors"
  echo '{"name": "oracle (retrain)"}' > "$WORK/rows/oracle--retrain.json"
fi
if [ "$2" = report ]; then  # what it found of an earlier call's report, then its runs
  [ ! -d "$WORK/report/runs" ] || ls "$WORK/report/runs" > "$WORK/report-found.txt"
  printf '%s\n' "$@" > "$WORK/report-args.txt"  # one argument a line: run names hold spaces and commas
  for name in rmu-published rmu-standins "rmu-standins seed 1" "rmu-standins - no misdirection" \\
      "rmu-standins - forget tokens: particulars" ${EXTRA:+"$EXTRA"}; do
    mkdir -p "$WORK/report/runs/$name" && echo weights > "$WORK/report/runs/$name/model.safetensors"
    echo '{"calibration": []}' > "$WORK/report/runs/$name/unlearn.json"
    echo '{"step": 1}' > "$WORK/report/runs/$name.steps.jsonl"  # its steps, beside it: no run of its own
  done
  mkdir -p "$WORK/rows" && echo '{"name": "rmu-standins"}' > "$WORK/rows/rmu-standins.json"
  sleep "${SLOW:-0}"
fi
if [ "$2" = train-oracle ] || { [ "$2" = build ] && [[ " $* " == *" --train-oracle "* ]]; }; then
  echo '{}' > "$WORK/oracle_nll_train.json"
fi
if [ "$2" = tune ]; then  # the sweep's rows so far, which a later call's sweep writes over
  mkdir -p "$WORK/tune" && printf 'name,status\nrmu-standins.c1,ok\n' > "$WORK/tune/results.csv"
  if [ -n "${TUNE_SLOW:-}" ]; then  # each run's steps as it takes them: c1 finished, c10 three steps in
    mkdir -p "$WORK/tune/runs" && printf '{"step": 1}\n' > "$WORK/tune/runs/rmu-standins.c1.steps.jsonl"
    printf '{"step": %d}\n' 1 2 3 > "$WORK/tune/runs/rmu-standins.c10.steps.jsonl"
    sleep "$TUNE_SLOW"
  fi
fi
if [ "$2" = train-weights ]; then  # the tune's kept run of each candidate named, and one made again
  printf '%s\n' "rmu-standins.c20=$WORK/tune/runs/rmu-standins.c20" \
    "rmu-standins.c22=$WORK/train-runs/runs/rmu-standins.c22" > "$WORK/train-runs.txt"
fi
if [ "$2" = remake ]; then  # --work W --names N... --workers K
  shift 5; while [ "$1" != --workers ]; do mkdir -p "$WORK/remade/runs/$1"; shift; done
fi
[ "$2" != "${FAIL:-}" ]
"""


def environment(tmp_path: Path, **env: str) -> dict[str, str]:
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    (tmp_path / "data" / "semeval25").mkdir(parents=True, exist_ok=True)
    (tmp_path / "out").mkdir(exist_ok=True)
    return {**os.environ, "PY": str(python), "WORK": str(tmp_path / "work"), "STATE": str(tmp_path / "state"),
            "CALLS": str(tmp_path / "calls.txt"), "REPEDIT_DATA": str(tmp_path / "data"), "PART_SIZE": "200k",
            "POLL": "0.1", **env}  # the stand-in's stages end at once: a call need not wait 2 s to see it


def call(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "30", str(tmp_path / "out")], env=environment(tmp_path, **env),
                          capture_output=True, text=True, timeout=60)


def quality_with_sets(monkeypatch, tmp_path: Path, tiny_model_dir: Path, synth_dir: Path, split: str):
    """bench/quality.py imported, and its work directory holding the tiny target and the synthetic sets as ``split``
    (train or validation): (the module, the work directory, the split's sets)."""
    import shutil

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    quality = pytest.importorskip("quality")
    work = tmp_path / "work"
    p = quality.paths(work)
    shutil.copytree(tiny_model_dir, p["target"])
    sets = p["sets"] / split
    sets.mkdir(parents=True)
    for name in ("forget", "retain"):
        rows = [{"id": r.id, "input": r.input, "output": r.output, "task": r.task} for r in load_rows(synth_dir, name)]
        (sets / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return quality, work, sets


def test_every_stage_runs_once_in_order_from_a_snapshot_and_attacks_the_forgetting_runs(tmp_path):
    first = call(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "all stages done" in first.stdout
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert [c.split(" | ")[2].split()[:2] for c in calls] == [
        ["bench/quality.py", "build"], ["bench/standin_levels.py", "--target"], ["bench/quality.py", "tune"],
        ["bench/quality.py", "report"], ["bench/goal_reach.py", "--target"], ["bench/goal_reach.py", "--target"],
        ["bench/attack.py", "--runs"],
        ["bench/anchor_hold.py", "--target"], ["bench/particulars_cpu.py", "--target"],
        ["bench/stragglers.py", "--target"], ["bench/relearn_attackers.py", "--reference"]]
    state = tmp_path / "state"
    assert {tuple(c.split(" | ")[:2]) for c in calls} == {(str(state / "code"), str(state / "data"))}
    levels, (attack, hold, split, behind, routes) = calls[1], calls[-5:]
    runs = tmp_path / "work" / "report" / "runs"
    goal = calls[4]  # the chosen run's settings, on the validation sets its runs used
    assert f"--run {runs / 'rmu-standins'} " in goal
    assert f"--standins {tmp_path / 'work' / 'sets' / 'validation'} " in goal
    assert f"--out {state / 'goal_reach.json'}" in goal
    on_train = calls[5]  # the same on train, as the preset's run would read it there: no run of its own
    assert f"--forget {tmp_path / 'work' / 'sets' / 'train'} " in on_train and "--preset standins" in on_train
    assert f"--standins {tmp_path / 'work' / 'sets' / 'train'} " in on_train and "--run" not in on_train
    assert f"--out {state / 'goal_reach_train.json'}" in on_train
    assert f"rmu-standins={runs / 'rmu-standins'} " in attack
    assert f"rmu-standins - forget tokens: particulars={runs / 'rmu-standins - forget tokens: particulars'} " in attack
    assert "seed 1" not in attack and "no misdirection" not in attack and "rmu-published" not in attack
    assert "--jobs 2" in attack
    assert f"--edited rmu-standins={runs / 'rmu-standins'} rmu-standins - forget tokens: particulars=" in hold
    assert "--device cuda" in hold
    assert f"--retain {tmp_path / 'work' / 'sets' / 'validation' / 'retain.jsonl'} " in hold  # the report runs' set
    particulars = "rmu-standins - forget tokens: particulars"
    assert split.endswith(f"--edited rmu-standins={runs / 'rmu-standins'} {particulars}={runs / particulars} "
                          f"oracle={tmp_path / 'work' / 'oracle'}")  # the forget documents' split the edits aim at
    assert behind.endswith(f"--runs rmu-standins={runs / 'rmu-standins'} {particulars}={runs / particulars}")
    assert f"--oracle {tmp_path / 'work' / 'oracle'} " in behind
    assert f"--runs rmu-standins={runs / 'rmu-standins'} {particulars}={runs / particulars} oracle=" in routes
    assert f"--forget {tmp_path / 'work' / 'sets' / 'validation'} " in routes and "--device cuda" in routes
    sets = tmp_path / "work" / "sets"  # the stop level from the retain set each stage's runs used
    train, validation = sets / "train" / "retain.jsonl", sets / "validation" / "retain.jsonl"
    assert f"--retain train={train} validation={validation} " in levels
    assert (tmp_path / "out" / "quality-calls.tgz").is_file()
    parts = sorted((tmp_path / "out").glob("target.tgz.*"))  # the target in parts of PART_SIZE, whole again
    assert [p.name for p in parts] == ["target.tgz.aa", "target.tgz.ab"]
    assert not list((tmp_path / "out").glob(".target*")) and not list((tmp_path / "out").glob(".oracle*"))
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as target:
        model = target.extractfile("sim/model.safetensors")
        assert model is not None and model.read() == (tmp_path / "work" / "sim" / "model.safetensors").read_bytes()
        assert {"sets/validation/retain.jsonl", "./reference-public-tasks.jsonl", "oracle_nll.json",
                "rows/oracle--retrain.json"} <= set(target.getnames())
        assert "rows/rmu-standins.json" not in target.getnames()  # a report's rows stay out of a carried build
        assert not any(name.startswith("oracle/") for name in target.getnames())  # its weights travel apart
    with tarfile.open(tmp_path / "out" / "oracle.tgz.aa") as oracle:
        assert oracle.getnames() == ["oracle", "oracle/model.safetensors"]
    with tarfile.open(tmp_path / "out" / "work.tgz") as work:  # the runs' records come back
        assert "report/runs/rmu-standins seed 1/unlearn.json" in work.getnames()
    again = call(tmp_path)  # a later call finds it done and runs nothing
    assert "all stages done" in again.stdout
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 11


def test_candidates_named_for_it_are_attacked_by_relearning_on_train_after_the_tune(tmp_path):
    """TRAIN_ATTACK: the relearning the proxy does not read, measured on train for the candidates named, between the
    tune and the report: their weights listed by quality.py train-weights, attacked on train's forget set and
    withheld documents, relearning alone; with REPORT=0 the call ends there."""
    result = call(tmp_path, TRAIN_ATTACK="c20,c22", TUNE_WORKERS="3", RUN_SECONDS="500")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [c.split(" | ")[2] for c in (tmp_path / "calls.txt").read_text().splitlines()]
    assert [c.split()[:2] for c in calls[2:6]] == [["bench/quality.py", "tune"], ["bench/quality.py", "train-weights"],
                                                   ["bench/attack.py", "--runs"], ["bench/quality.py", "report"]]
    weights, attack = calls[3], calls[4]
    work, state = tmp_path / "work", tmp_path / "state"
    assert weights.endswith(f"--work {work} --methods rmu-standins --candidates c20,c22 --workers 3 --run-seconds 500")
    assert attack.startswith(f"bench/attack.py --runs rmu-standins.c20={work / 'tune' / 'runs' / 'rmu-standins.c20'} "
                             f"rmu-standins.c22={work / 'train-runs' / 'runs' / 'rmu-standins.c22'} ")
    assert f"--forget {work / 'sets' / 'train'} " in attack and "--attacks relearn --relearn-known 8 " in attack
    assert f"--unseen {work / 'sim' / 'withheld' / 'train' / 'nonmember.jsonl'} " in attack
    assert attack.endswith(f"--out {state / 'attack-train'} --jobs 2")
    (tmp_path / "alone").mkdir()  # REPORT=0: the tune and the relearning on train, nothing after them
    alone = call(tmp_path / "alone", TRAIN_ATTACK="c20,c22", REPORT="0")
    assert alone.returncode == 0 and "all stages done" in alone.stdout, alone.stdout + alone.stderr
    assert [c.split(" | ")[2].split()[:2] for c in (tmp_path / "alone" / "calls.txt").read_text().splitlines()] == [
        ["bench/quality.py", "build"], ["bench/quality.py", "tune"], ["bench/quality.py", "train-weights"],
        ["bench/attack.py", "--runs"]]  # a call for the tune alone: no stop levels, the report's diagnostic
    (tmp_path / "plain").mkdir()  # unnamed, neither runs
    assert call(tmp_path / "plain").returncode == 0
    assert "train-weights" not in (tmp_path / "plain" / "calls.txt").read_text()


def test_train_weights_lists_the_tunes_kept_run_and_makes_again_one_it_did_not_keep(tiny_model_dir, synth_dir,
                                                                                    tmp_path, monkeypatch):
    """bench/quality.py train-weights: each run named, on train, with its weights: the run the tune kept where it is
    (not made again), a candidate whose row came from an earlier call made again, deterministic as the tune's, a
    seed the tune did not run (``c1.s1``) made on its own data order, and a name the grid lacks refused, naming it."""
    import shutil
    import sys

    from safetensors.torch import load_file

    from repedit.proxy import ProxyConfig
    from repedit.sweep import Candidate, sweep

    quality, work, train = quality_with_sets(monkeypatch, tmp_path, tiny_model_dir, synth_dir, "train")
    p = quality.paths(work)
    base = {"layers": [2, 3], "adaptive": 5.0, "lr": 1e-2, "steps": 3, "batch_size": 4, "max_length": 48,
            "deterministic": True}
    grid = [Candidate("rmu-standins.c1", "c1", base), Candidate("rmu-standins.c2", "c2", {**base, "lr": 3e-2})]
    monkeypatch.setattr(quality, "read_grid", lambda method, work, run_seconds=0: (grid, {}))
    monkeypatch.setattr(quality, "proxy_reference", lambda work, candidates: [
        {"text": r.document, "task": r.task} for r in load_rows(synth_dir, "retain")])
    monkeypatch.setattr(quality, "ProxyConfig", lambda: ProxyConfig(max_rows=2, sc_tokens=8, qa_tokens=4))
    tuned = sweep(p["target"], train / "forget.jsonl", train / "retain.jsonl", grid, work / "tune",
                  ProxyConfig(max_rows=2, sc_tokens=8, qa_tokens=4), workers=0, keep="all")
    kept = work / "tune" / "runs" / "rmu-standins.c2"
    made = {f.name: load_file(f) for f in kept.glob("*.safetensors")}
    shutil.rmtree(kept)  # c2's row came from an earlier call: this machine has no weights of it
    assert tuned.results[1]["status"] == "ok" and made
    quality.train_weights(work, ["rmu-standins"], ["c1", "c2"], workers=0)
    listed = dict(line.split("=", 1) for line in (work / "train-runs.txt").read_text().splitlines())
    again = work / "train-runs" / "runs" / "rmu-standins.c2"
    assert listed == {"rmu-standins.c1": str(work / "tune" / "runs" / "rmu-standins.c1"),
                      "rmu-standins.c2": str(again)}
    assert not (work / "train-runs" / "runs" / "rmu-standins.c1").exists()  # the tune's kept run, not made again
    for name, tensors in made.items():  # the remade c2 is the tune's, to the digit
        remade = load_file(again / name)
        assert all(torch.equal(tensors[key], remade[key]) for key in tensors)
    quality.train_weights(work, ["rmu-standins"], ["c1", "c1.s1"], workers=0)
    listed = dict(line.split("=", 1) for line in (work / "train-runs.txt").read_text().splitlines())
    seeded = work / "train-runs" / "runs" / "rmu-standins.c1.s1"
    assert listed == {"rmu-standins.c1": str(work / "tune" / "runs" / "rmu-standins.c1"),
                      "rmu-standins.c1.s1": str(seeded)}
    assert json.loads((seeded / "unlearn.json").read_text())["config"]["seed"] == 1
    first = {f.name: load_file(f) for f in (work / "tune" / "runs" / "rmu-standins.c1").glob("*.safetensors")}
    assert not all(torch.equal(t, load_file(seeded / name)[k]) for name, ts in first.items() for k, t in ts.items())
    with pytest.raises(SystemExit, match=r"train-weights: \['c9'\] are none of the grids' candidates"):
        quality.train_weights(work, ["rmu-standins"], ["c1", "c9"], workers=0)
    del sys.modules["quality"]


def test_the_attack_bench_runs_only_the_attacks_named_and_refuses_an_unknown_one(tiny_target, synth_dir, tmp_path,
                                                                               monkeypatch, capsys):
    """bench/attack.py --attacks relearn: on train's 1,112 forget rows every attack takes four times validation's,
    and the choice there reads relearning alone (the target itself attacked: which attacks run, not what they find);
    --relearn-known: the attacker knows that many documents, as on validation, and a count past the set is refused."""
    import runpy

    out = tmp_path / "attack"
    argv = ["attack.py", "--runs", f"edited={tiny_target}", "--reference", str(tiny_target), "--forget",
            str(synth_dir), "--unseen", str(synth_dir / "mia_data" / "nonmember.jsonl"), "--attacks", "relearn",
            "--steps", "3", "--max-new-tokens", "16", "--relearn-known", "3", "--device", "cpu", "--out", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    runpy.run_path(str(SCRIPT.parent / "attack.py"), run_name="__main__")
    report = json.loads((out / "attack.json").read_text())["edited"]
    assert set(report["attacks"]) == {"relearn"} and len(report["attacks"]["relearn"]["losses"]) == 3
    documents = {row.document_id for row in load_rows(synth_dir, "forget")}
    assert len(report["documents"]["known"]) == 3
    assert len(report["documents"]["probed"]) == len(documents) - 3
    monkeypatch.setattr("sys.argv", [*argv[:-2], "--relearn-known", str(len(documents)), "--out", str(tmp_path / "no")])
    with pytest.raises(SystemExit) as refused:
        runpy.run_path(str(SCRIPT.parent / "attack.py"), run_name="__main__")
    assert refused.value.code == 2
    refusal = capsys.readouterr().err
    assert (f"--forget {synth_dir}: --relearn-known: {len(documents)}, and the forget set holds {len(documents)}"
            in refusal)
    monkeypatch.setattr("sys.argv", [*argv[:-2], "--attacks", "relearn,prune", "--out", str(tmp_path / "no")])
    with pytest.raises(SystemExit) as refused:
        runpy.run_path(str(SCRIPT.parent / "attack.py"), run_name="__main__")
    assert refused.value.code == 2 and "--attacks: ['prune']" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_a_call_of_the_baselines_alone_goes_without_the_stop_levels_and_the_anchors_hold(tmp_path):
    """The baselines tuned in a pipeline of their own: the stages that read an RMU grid's stand-in scales, an RMU
    run's anchor or its edited layers are not run, and the rest are."""
    done = call(tmp_path, METHODS="graddiff,npo,sugd")
    assert done.returncode == 0, done.stderr
    assert "all stages done" in done.stdout
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert [c.split(" | ")[2].split()[:2] for c in calls] == [
        ["bench/quality.py", "build"], ["bench/quality.py", "tune"], ["bench/quality.py", "report"],
        ["bench/attack.py", "--runs"], ["bench/particulars_cpu.py", "--target"], ["bench/stragglers.py", "--target"]]
    assert "--methods graddiff,npo,sugd " in calls[1]


@pytest.mark.parametrize(("oracle", "xz"), [(True, False), (False, False), (True, True)])
def test_a_carried_build_takes_the_builds_place_and_its_parts_are_not_sent_back(tmp_path, oracle, xz):
    """BUILT: the parts a first call sent back, carried to a fresh machine, are the work directory; nothing builds or
    comes back in parts. The target's parts without the oracle's (carried alone to fit the device's tree): the
    relearning attack runs without its control, the particulars' split without the oracle, the stragglers not at
    all. Made again with xz (NAME.txz.*, a sixth smaller), the parts unpack the same."""
    first = tmp_path / "first"
    first.mkdir()
    assert call(first).returncode == 0
    built = tmp_path / "built"
    built.mkdir()
    for name in ("target", "oracle") if oracle else ("target",):
        parts = sorted((first / "out").glob(f"{name}.tgz.*"))
        if xz:  # as `cat NAME.tgz.* | gunzip | xz | split -b 200k - NAME.txz.` makes them
            whole = lzma.compress(gzip.decompress(b"".join(p.read_bytes() for p in parts)))
            for i in range(0, len(whole), 200_000):
                (built / f"{name}.txz.a{'abcdefgh'[i // 200_000]}").write_bytes(whole[i:i + 200_000])
        for part in () if xz else parts:
            (built / part.name).write_bytes(part.read_bytes())
    second = tmp_path / "second"
    second.mkdir()
    result = call(second, BUILT=str(built))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all stages done" in result.stdout
    work = second / "work"
    assert (work / "sim" / "model.safetensors").read_bytes() == (first / "work" / "sim" / "model.safetensors"
                                                                  ).read_bytes()
    assert (work / "rows" / "oracle--retrain.json").is_file()
    calls = (second / "calls.txt").read_text().splitlines()
    scripts = [c.split(" | ")[2].split()[0] for c in calls]
    assert scripts[:3] == ["bench/standin_levels.py", "bench/quality.py", "bench/quality.py"]  # no build: tune, report
    assert [c.split(" | ")[2].split()[1] for c in calls[1:3]] == ["tune", "report"]
    attack, split = (next(c for c in calls if s in c) for s in ("bench/attack.py", "bench/particulars_cpu.py"))
    assert ("--oracle" in attack) == oracle and ("oracle=" in split) == oracle
    assert ("bench/stragglers.py" in scripts) == oracle
    routes = next(c for c in calls if "bench/relearn_attackers.py" in c)  # the edits' routes, without their control
    assert ("oracle=" in routes) == oracle
    assert not list((second / "out").glob("target.tgz.*")) and not list((second / "out").glob("oracle.tgz.*"))
    assert (work / "oracle" / "model.safetensors").is_file() == oracle
    (tmp_path / "third").mkdir()
    missing = call(tmp_path / "third", BUILT=str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "BUILT=" in missing.stdout and "target.tgz.aa" in missing.stdout


@pytest.mark.parametrize(("card", "workers"), [("143771", 5), ("81559", 3), ("40960", 1), (None, 5)])
def test_the_tune_and_the_report_run_as_many_at_once_as_the_card_holds(tmp_path, card, workers):
    """REPORT_WORKERS and TUNE_WORKERS by default: one run per 26,000 MiB of the card (five on an H100 ran fifteen of
    the seventy-sixth call's nineteen report runs out of memory; a repaired tune run peaks at 27 GiB), an H200's five
    where nvidia-smi reads nothing."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text("#!/usr/bin/env bash\n" + (f"echo {card}\n" if card else "exit 9\n"))
    (tools / "nvidia-smi").chmod(0o755)
    done = call(tmp_path, PATH=f"{tools}:{os.environ['PATH']}")
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    for stage in ("tune", "report"):
        assert f" --workers {workers} " in next(c for c in calls if f"bench/quality.py {stage}" in c)


def test_train_oracle_is_trained_beside_the_target_and_its_nlls_go_back_with_the_work(tmp_path):
    """TRAIN_ORACLE=1: the train forget set's oracle is trained by the build, beside the target, and no train-oracle
    stage follows; its NLLs are sent back in work.tgz for a later call to carry. Without it, neither. A carried build
    without the NLLs makes them in their own stage, before the tune; one carried with them makes none."""
    import tarfile

    assert call(tmp_path, TRAIN_ORACLE="1").returncode == 0
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    stages = [c.split(" | ")[2].split()[:2] for c in calls]
    assert stages[:3] == [["bench/quality.py", "build"], ["bench/standin_levels.py", "--target"],
                          ["bench/quality.py", "tune"]]
    assert calls[0].endswith(" --train-oracle") and "train-oracle" not in " ".join(calls[1:])
    with tarfile.open(tmp_path / "out" / "work.tgz") as sent:
        assert "oracle_nll_train.json" in sent.getnames()
    (tmp_path / "plain").mkdir()
    assert call(tmp_path / "plain").returncode == 0
    assert "train-oracle" not in (tmp_path / "plain" / "calls.txt").read_text()
    built = tmp_path / "built"  # the build's parts alone: the train oracle in its own stage, before the tune
    built.mkdir()
    for part in (tmp_path / "out").glob("*.tgz.*"):
        (built / part.name).write_bytes(part.read_bytes())
    (tmp_path / "alone").mkdir()
    assert call(tmp_path / "alone", TRAIN_ORACLE="1", BUILT=str(built)).returncode == 0
    stages = [c.split(" | ")[2].split()[:2] for c in (tmp_path / "alone" / "calls.txt").read_text().splitlines()]
    assert stages[1:3] == [["bench/quality.py", "train-oracle"], ["bench/quality.py", "tune"]]
    (built / "oracle_nll_train.json").write_text('{"a forget document": 7.5}')  # carried beside them: read as made
    (tmp_path / "carried").mkdir()
    assert call(tmp_path / "carried", TRAIN_ORACLE="1", BUILT=str(built)).returncode == 0
    assert "train-oracle" not in (tmp_path / "carried" / "calls.txt").read_text()
    carried = json.loads((tmp_path / "carried" / "work" / "oracle_nll_train.json").read_text())
    assert carried == {"a forget document": 7.5}


def test_report_only_hands_the_report_each_run_name_whole(tmp_path):
    """REPORT_ONLY names the report's runs with '|' between them, for a name holds spaces and commas: each reaches
    ``quality.py report --only`` as one argument, and without it no ``--only`` is passed (the whole report)."""
    names = ["rmu-standins", "rmu-ascent", "rmu-standins - a latent adversary at 0.05 and the anchor in a ball of "
             "0.05 too, one step"]
    assert call(tmp_path, REPORT_ONLY="|".join(names)).returncode == 0
    args = (tmp_path / "work" / "report-args.txt").read_text().splitlines()
    assert args[args.index("--only") + 1:] == names
    (tmp_path / "whole").mkdir()
    assert call(tmp_path / "whole").returncode == 0
    assert "--only" not in (tmp_path / "whole" / "work" / "report-args.txt").read_text().splitlines()


def test_report_only_on_a_finished_call_carried_makes_the_report_and_its_later_stages_again(tmp_path):
    """RESUME of a call that finished every stage, with REPORT_ONLY naming a new run: the report runs again for the
    runs named and every stage after it reads them; the tune does not run again (before, the carried marks ended the
    call at once, and the eighty-second session unmarked them by hand)."""
    first = tmp_path / "first"
    first.mkdir()
    assert "all stages done" in call(first).stdout
    carried = tmp_path / "carried"
    carried.mkdir()
    for part in (first / "out").iterdir():
        (carried / part.name).write_bytes(part.read_bytes())
    second = tmp_path / "second"
    second.mkdir()
    result = call(second, BUILT=str(carried), RESUME=str(carried), REPORT_ONLY="rmu-standins|rmu-standins - new")
    assert result.returncode == 0 and "all stages done" in result.stdout, result.stdout + result.stderr
    stages = [c.split(" | ")[2].split()[:2] for c in (second / "calls.txt").read_text().splitlines()]
    assert stages[0] == ["bench/quality.py", "report"] and ["bench/quality.py", "tune"] not in stages
    assert ["bench/attack.py", "--runs"] in stages and ["bench/relearn_attackers.py", "--reference"] in stages
    args = (second / "work" / "report-args.txt").read_text().splitlines()
    assert args[args.index("--only") + 1:] == ["rmu-standins", "rmu-standins - new"]
    (tmp_path / "plain").mkdir()  # without REPORT_ONLY the report and the stages after it stay finished
    plain = call(tmp_path / "plain", BUILT=str(carried), RESUME=str(carried))
    assert "all stages done" in plain.stdout
    assert not {"report", "--runs"} & {c.split(" | ")[2].split()[1]
                                       for c in (tmp_path / "plain" / "calls.txt").read_text().splitlines()}


def test_a_call_that_stopped_before_the_report_goes_on_to_it_on_the_same_machine_or_a_fresh_one(tmp_path):
    """REPORT=0 ends a pipeline after the tune and the relearning on train; a later call without it runs the report
    and the stages after it, the tune and the relearning not again: on the machine still warm, or on a fresh one from
    what the first call sent back (whose finished mark would otherwise end the call at once, the report never run)."""
    first = tmp_path / "first"
    first.mkdir()
    assert "all stages done" in call(first, TRAIN_ATTACK="c20", REPORT="0").stdout
    carried = tmp_path / "carried"
    carried.mkdir()
    for part in (first / "out").iterdir():
        (carried / part.name).write_bytes(part.read_bytes())
    warm = call(first, TRAIN_ATTACK="c20")
    assert warm.returncode == 0 and "all stages done" in warm.stdout, warm.stdout + warm.stderr
    second = tmp_path / "second"
    second.mkdir()
    fresh = call(second, TRAIN_ATTACK="c20", BUILT=str(carried), RESUME=str(carried))
    assert fresh.returncode == 0 and "all stages done" in fresh.stdout, fresh.stdout + fresh.stderr
    after = [["bench/quality.py", "report"], ["bench/goal_reach.py", "--target"], ["bench/goal_reach.py", "--target"],
             ["bench/attack.py", "--runs"], ["bench/anchor_hold.py", "--target"],
             ["bench/particulars_cpu.py", "--target"], ["bench/stragglers.py", "--target"],
             ["bench/relearn_attackers.py", "--reference"]]
    levels = [["bench/standin_levels.py", "--target"]]  # the report's diagnostic, which the tune's call left out
    stages = [c.split(" | ")[2].split()[:2] for c in (first / "calls.txt").read_text().splitlines()]
    assert stages[1:4] == [["bench/quality.py", "tune"], ["bench/quality.py", "train-weights"],
                           ["bench/attack.py", "--runs"]]
    assert stages[4:] == levels + after
    assert [c.split(" | ")[2].split()[:2] for c in (second / "calls.txt").read_text().splitlines()] == levels + after


def test_a_call_on_a_fresh_machine_resumes_from_the_stages_an_earlier_call_sent_back(tmp_path):
    """RESUME: a call whose machine was given back between calls (the forty-fourth's second and third) goes on from
    what the earlier call sent back. The tune and report it finished do not run again; the report runs whose weights
    the later stages read are made again, and those stages read the remade ones; a stage that had failed runs again."""
    first = tmp_path / "first"
    first.mkdir()
    assert call(first, FAIL="--runs").returncode == 1  # the attack fails after the report
    carried = tmp_path / "carried"  # what the device sent back, and the build's parts
    carried.mkdir()
    for part in (first / "out").iterdir():
        (carried / part.name).write_bytes(part.read_bytes())
    second = tmp_path / "second"
    second.mkdir()
    result = call(second, BUILT=str(carried), RESUME=str(carried))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all stages done" in result.stdout and "=== resumed from" in result.stdout
    stages = [c.split(" | ")[2].split() for c in (second / "calls.txt").read_text().splitlines()]
    assert [s[:2] for s in stages] == [["bench/quality.py", "remake"], ["bench/attack.py", "--runs"],
                                       ["bench/anchor_hold.py", "--target"], ["bench/particulars_cpu.py", "--target"],
                                       ["bench/stragglers.py", "--target"],
                                       ["bench/relearn_attackers.py", "--reference"]]
    remade = second / "work" / "remade" / "runs"
    remake, attack = (" ".join(s) for s in stages[:2])
    assert remake.endswith("--names rmu-standins rmu-standins - forget tokens: particulars --workers 2")
    assert f"rmu-standins={remade / 'rmu-standins'} " in attack and str(second / "work" / "report") not in attack
    assert (second / "work" / "rows" / "rmu-standins.json").is_file()  # the report's rows, from the first call
    fewer = tmp_path / "fewer"  # as many at once as the report runs, on a card that holds fewer
    fewer.mkdir()
    assert call(fewer, BUILT=str(carried), RESUME=str(carried), REPORT_WORKERS="1").returncode == 0
    assert (fewer / "calls.txt").read_text().splitlines()[0].endswith("particulars --workers 1")
    (tmp_path / "third").mkdir()
    unbuilt = call(tmp_path / "third", RESUME=str(carried))
    assert unbuilt.returncode == 1 and "needs BUILT" in unbuilt.stdout
    assert not (tmp_path / "third" / "calls.txt").exists()


def test_a_report_resumed_unfinished_finds_the_records_of_the_runs_an_earlier_call_finished(tmp_path):
    """A call resumed before its report finished carries the rows and records of the runs it finished: they are left
    where the report finds them, for ``quality.py report`` keeps those made on this card and removes the others
    (``finished_runs``, tests/test_quality_grids.py); before, every run was made again, and a report longer than one
    session's device time never finished. The later stages read the runs the report leaves."""
    first = tmp_path / "first"
    first.mkdir()
    assert call(first, FAIL="report", EXTRA="rmu-standins - an old name").returncode == 1
    carried = tmp_path / "carried"
    carried.mkdir()
    for part in (first / "out").iterdir():
        (carried / part.name).write_bytes(part.read_bytes())
    with tarfile.open(carried / "work.tgz") as archive:
        assert "report/runs/rmu-standins - an old name/unlearn.json" in archive.getnames()
    second = tmp_path / "second"
    second.mkdir()
    result = call(second, BUILT=str(carried), RESUME=str(carried))
    assert result.returncode == 0, result.stdout + result.stderr
    found = (second / "work" / "report-found.txt").read_text().splitlines()
    assert "rmu-standins - an old name" in found and "rmu-standins" in found
    stages = [c.split(" | ")[2] for c in (second / "calls.txt").read_text().splitlines()]
    assert stages[0].startswith("bench/quality.py report")
    attack = next(s for s in stages if s.startswith("bench/attack.py"))
    assert "rmu-standins - forget tokens: particulars=" in attack


def test_a_call_killed_before_its_wait_ends_still_returns_the_rows_written_by_then(tmp_path):
    """The lent machine kills a command at the budget left, which can come before the wait asked for: the results so
    far are in OUT all the same, each archive whole."""
    import signal
    import time

    waiting = subprocess.Popen(["bash", str(SCRIPT), "60", str(tmp_path / "out")],
                               env=environment(tmp_path, SLOW="6", COPY_EVERY="1"), stdout=subprocess.DEVNULL)
    row, done = tmp_path / "work" / "rows" / "rmu-standins.json", tmp_path / "state" / "all.done"
    for _ in range(150):  # until the report has written its row
        if row.exists():
            break
        time.sleep(0.2)
    time.sleep(3)  # two copies at least (one a second, the wait looking every 0.1 s); the report runs on
    waiting.send_signal(signal.SIGKILL)
    waiting.wait()
    assert not done.exists()
    with tarfile.open(tmp_path / "out" / "work.tgz") as work:
        assert "rows/rmu-standins.json" in work.getnames()
    with tarfile.open(tmp_path / "out" / "quality-calls.tgz") as state:
        assert "./report.log" in state.getnames()
    for _ in range(100):  # the pipeline, a session of its own, ends before the folder goes
        if done.exists():
            break
        time.sleep(0.2)


def test_a_call_that_ends_before_the_tune_says_how_far_each_unfinished_run_got(tmp_path):
    """The ninety-seventh session's call returned "still running" with three runs unfinished and no word of how far
    they had got: each run not yet in the sweep's rows is named with its steps so far."""
    import time

    result = subprocess.run(["bash", str(SCRIPT), "2", str(tmp_path / "out")],
                            env=environment(tmp_path, TUNE_SLOW="4"), capture_output=True, text=True, timeout=60)
    assert "still running: call again" in result.stdout, result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("unfinished ")]
    assert line.startswith("unfinished rmu-standins.c10: 3 steps, the last ") and line.endswith('{"step": 3}')
    for _ in range(100):  # the pipeline, a session of its own, ends before the folder goes
        if (tmp_path / "state" / "all.done").exists():
            break
        time.sleep(0.2)


def test_the_results_reach_a_folder_the_call_names_that_does_not_exist_yet(tmp_path):
    """`$OUT/rmu`: the device makes $OUT only, and the fifty-seventh call's first call sent nothing back."""
    out = tmp_path / "out" / "rmu"
    result = subprocess.run(["bash", str(SCRIPT), "30", str(out)], env=environment(tmp_path), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "all stages done" in result.stdout, result.stderr
    assert "cannot stat" not in result.stderr
    with tarfile.open(out / "quality-calls.tgz") as state:
        assert "./all.done" in state.getnames()
    assert (out / "work.tgz").exists() and (out / "target.tgz.aa").exists()


def test_a_failed_stage_stops_the_pipeline_and_the_call_says_so(tmp_path):
    result = call(tmp_path, FAIL="tune")
    assert result.returncode == 1
    assert "a stage failed" in result.stdout and "=== tune exit 1" in result.stdout
    stages = [c.split(" | ")[2].split()[:2] for c in (tmp_path / "calls.txt").read_text().splitlines()]
    assert stages == [["bench/quality.py", "build"], ["bench/standin_levels.py", "--target"],
                      ["bench/quality.py", "tune"]]


def test_a_retried_call_starts_the_failed_stage_again_on_its_own_code_and_keeps_the_finished_ones(tmp_path):
    """RETRY=1 on the machine whose pipeline failed at the attack: the attack and every stage after it run, from a
    fresh snapshot of the code, and nothing before it runs again; without RETRY the failure stands."""
    assert call(tmp_path, FAIL="--runs").returncode == 1
    stale = tmp_path / "state" / "code" / "bench" / "stale"
    stale.write_text("the first call's snapshot")
    again = call(tmp_path)
    assert again.returncode == 1 and "call again with RETRY=1" in again.stdout
    before = len((tmp_path / "calls.txt").read_text().splitlines())
    retried = call(tmp_path, RETRY="1")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "=== retried" in retried.stdout and "all stages done" in retried.stdout
    assert not stale.exists()
    calls = (tmp_path / "calls.txt").read_text().splitlines()[before:]
    assert [c.split(" | ")[2].split()[0] for c in calls] == [
        "bench/attack.py", "bench/anchor_hold.py", "bench/particulars_cpu.py", "bench/stragglers.py",
        "bench/relearn_attackers.py"]
    assert all(c.split(" | ")[0] == str(tmp_path / "state" / "code") for c in calls)


def test_an_earlier_tunes_rows_reach_the_tune_on_their_build_and_are_refused_on_a_fresh_one(tmp_path):
    """PREVIOUS with its build carried: the tune is given the earlier rows' files, in order, by their absolute paths
    (the pipeline runs elsewhere). Refused before the pipeline starts: a file that is not there, and rows beside a
    fresh build, whose target is not the one they ran on (the sixty-first call's checkout had lost the carried
    build)."""
    rows, later = tmp_path / "rows.csv", tmp_path / "later.csv"
    for file in (rows, later):
        file.write_text("name,status\n")
    built = tmp_path / "built"
    built.mkdir()
    with tarfile.open(built / "target.tgz.aa", "w:gz") as part:
        part.addfile(tarfile.TarInfo("sim"), io.BytesIO())
    result = call(tmp_path, BUILT=str(built), PREVIOUS=f"{os.path.relpath(rows)} {later}")  # carried over two calls
    assert result.returncode == 0, result.stdout + result.stderr
    [tune] = [c for c in (tmp_path / "calls.txt").read_text().splitlines() if "bench/quality.py tune" in c]
    assert tune.endswith(f"--previous {rows} {later}")
    for refused, env in (("missing", {"BUILT": str(built), "PREVIOUS": str(tmp_path / "none.csv")}),
                         ("fresh", {"PREVIOUS": str(rows)})):
        again = tmp_path / refused
        again.mkdir()
        result = call(again, **env)
        assert result.returncode == 1 and "PREVIOUS=" in result.stdout and not (again / "state").exists(), refused
    assert "builds afresh" in result.stdout


def test_a_tune_cut_short_goes_on_on_a_fresh_machine_from_the_runs_it_finished(tmp_path):
    """RESUME before the tune finished (the sixtieth call's second call found a fresh machine and ran the first's
    finished runs again): the sweep's rows carried back are given to the tune after PREVIOUS's, from a copy the
    new sweep cannot write over, and sent back again for a third call; the named candidates reach the tune."""
    first = tmp_path / "first"
    first.mkdir()
    assert call(first, FAIL="tune").returncode == 1  # cut short: its rows so far in work.tgz
    carried = tmp_path / "carried"
    carried.mkdir()
    for part in (first / "out").iterdir():
        (carried / part.name).write_bytes(part.read_bytes())
    earlier = tmp_path / "earlier.csv"
    earlier.write_text("name,status\n")
    second = tmp_path / "second"
    second.mkdir()
    result = call(second, BUILT=str(carried), RESUME=str(carried), PREVIOUS=str(earlier), CANDIDATES="c1,c2")
    assert result.returncode == 0, result.stdout + result.stderr
    [tune] = [c for c in (second / "calls.txt").read_text().splitlines() if "bench/quality.py tune" in c]
    [resumed] = (second / "state").glob("tune-resumed-*.csv")
    assert tune.endswith(f"--previous {earlier} {resumed} --candidates c1,c2")
    assert resumed.read_text() == "name,status\nrmu-standins.c1,ok\n"
    with tarfile.open(second / "out" / "quality-calls.tgz") as sent:
        assert f"./{resumed.name}" in sent.getnames()


def test_the_stop_levels_failing_before_the_tune_stop_nothing(tmp_path):
    """The stand-in levels, a diagnostic, run before the tune, and the goal reach on both splits, after the report:
    their failures are in the progress and the stages after them run all the same; a stage after the report that
    fails (the anchor hold, as FAIL names all four) still stops."""
    result = call(tmp_path, FAIL="--target")
    assert result.returncode == 1
    assert "=== standin-levels exit 1" in result.stdout and "=== anchor-hold exit 1" in result.stdout
    assert "=== goal-reach exit 1" in result.stdout and "=== goal-reach-train exit 1" in result.stdout
    stages = [c.split(" | ")[2].split()[:2] for c in (tmp_path / "calls.txt").read_text().splitlines()]
    assert [s[1] for s in stages] == ["build", "--target", "tune", "report", "--target", "--target", "--runs",
                                      "--target"]


def test_a_machine_without_the_wheels_starts_nothing_and_says_what_to_install(tmp_path):
    result = call(tmp_path, MISSING="1")
    assert result.returncode == 1
    assert "install the wheels first (rouge_score, nltk)" in result.stdout
    assert not (tmp_path / "calls.txt").exists() and not (tmp_path / "state").exists()


def test_a_state_folder_made_by_hand_is_refused_not_waited_on(tmp_path):
    (tmp_path / "state" / "data").mkdir(parents=True)
    result = call(tmp_path)
    assert result.returncode == 1
    assert "holds no pipeline" in result.stdout and "STATE=" in result.stdout
    assert not (tmp_path / "calls.txt").exists() and not (tmp_path / "state" / "progress").exists()


def test_reproducibility_repeats_an_edited_run_and_finds_a_cpu_run_exact(tiny_model_dir, synth_dir, tmp_path):
    """bench/reproducibility.py reruns an edited run's configuration (read from its unlearn.json) twice as it
    ran and twice deterministically; on CPU each pair's weights are equal, though the runs changed the model."""
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    import reproducibility

    from repedit.rmu import RMUConfig
    from repedit.unlearn import unlearn

    config = RMUConfig.from_dict({"layers": (2, 3, 4), "steps": 3, "batch_size": 4, "max_length": 64,
                                  "adaptive": 5.0, "lr": 1e-3})
    unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "edited", config, progress=False)
    found = reproducibility.repeat(tiny_model_dir, tmp_path / "edited", synth_dir, synth_dir, tmp_path / "work", "cpu")
    assert set(found) == {"as it ran", "deterministic"}
    for row in found.values():
        assert [r["steps"] for r in row["runs"]] == [3, 3]
        assert row["largest_difference"] == 0.0
    assert reproducibility.largest_difference(tiny_model_dir, tmp_path / "work" / "as-it-ran-0") > 0


def test_reproducibility_answers_with_the_error_of_a_kernel_that_has_no_deterministic_form(tmp_path, monkeypatch):
    """Strict deterministic algorithms (the library's ``--deterministic``): where a kernel has no deterministic
    form, the mode's answer is the run's error, not a crash; any other error still ends the script."""
    import json
    import sys

    import pytest
    import torch

    sys.path.insert(0, str(SCRIPT.parent))
    import reproducibility

    from repedit.runtime import deterministic_algorithms

    (tmp_path / "edited").mkdir()
    (tmp_path / "edited" / "unlearn.json").write_text(json.dumps({"config": {"method": "rmu"}}))

    def strict_gpu(target, forget, retain, out, config, device, progress):
        with deterministic_algorithms(config.deterministic):
            if torch.are_deterministic_algorithms_enabled():
                raise RuntimeError("index_put_ does not have a deterministic implementation\nmore")
            raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(reproducibility, "unlearn", strict_gpu)
    with pytest.raises(RuntimeError, match="out of memory"):
        reproducibility.repeat(tmp_path, tmp_path / "edited", tmp_path, tmp_path, tmp_path / "work", "cpu")

    monkeypatch.setattr(reproducibility, "MODES", (("deterministic", True),))
    found = reproducibility.repeat(tmp_path, tmp_path / "edited", tmp_path, tmp_path, tmp_path / "work", "cpu")
    assert found == {"deterministic": {"runs": [], "error": "--deterministic: index_put_ does not have a "
                                       "deterministic implementation (run without --deterministic)"}}
    assert not torch.are_deterministic_algorithms_enabled()


def test_anchor_hold_splits_the_texts_as_the_run_did_and_adds_the_anchors_own(tmp_path):
    """bench/anchor_hold.py's groups: of each task's calibration texts every other one anchored (by hand), the
    rest the stop rule's, the withheld file's, the run's ``anchor_texts.jsonl`` texts that ``--invented-anchors``
    invented, per kind, the PII biographies ``--recombined-pii-anchors`` made of the retain set with the run's seed,
    and its others that are not calibration texts (its stand-ins' and ``--anchor-texts``') as one group."""
    import json
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    import anchor_hold

    texts = [(f"Calibration {task} {i}.", task) for i in range(2) for task in ("Task1", "Task3")]
    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text("".join(json.dumps({"text": t, "task": k}) + "\n" for t, k in texts))
    withheld = tmp_path / "withheld.jsonl"
    withheld.write_text(json.dumps({"text": "Withheld.", "task": "Task1"}) + "\n")
    edited = tmp_path / "edited"
    edited.mkdir()
    config = {"config": {"calibration": {"unseen": str(unseen), "anchor_share": 0.5}, "seed": 3,
                         "loss": {"invented_anchors": 2, "recombined_pii_anchors": 2}}}
    (edited / "unlearn.json").write_text(json.dumps(config))
    own = ["A stand-in.", "A general passage."]
    invented = invented_documents(2)  # what the run's --invented-anchors 2 held, by kind
    retain = synthesize(tmp_path / "sets", seed=1, docs=4)
    biographies = [r.document for r in load_rows(retain, "retain") if r.task == "Task2" and r.kind == "sc"]
    recombined = recombine_fields(list(dict.fromkeys(biographies)), 2, seed=3)  # and --recombined-pii-anchors 2's
    (edited / "anchor_texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in [
        own[0], *recombined, *(d["text"] for d in invented), own[1], "Calibration Task1 1.", "Calibration Task3 1."]))
    found = anchor_hold.groups(edited, withheld, retain)
    assert found["recombined anchors"] == {"Task2": recombined}
    assert found["anchored"] == {"Task1": ["Calibration Task1 1."], "Task3": ["Calibration Task3 1."]}
    assert found["stop rule"] == {"Task1": ["Calibration Task1 0."], "Task3": ["Calibration Task3 0."]}
    assert found["withheld"] == {"Task1": ["Withheld."]}
    assert found["invented anchors"] == {task: [d["text"] for d in invented if d["task"] == task] for task in TASKS}
    assert all(len(texts) == 2 for texts in found["invented anchors"].values())
    assert found["own anchors"] == {"all": own}
    assert "stand-ins" not in found  # the run made none


def test_anchor_hold_rebuilds_the_stand_ins_the_runs_stop_rule_scored(tiny_model_dir, synth_dir, tmp_path,
                                                                     monkeypatch):
    """A short run calibrated on Task3 texts alone, with stand-ins scaled differently per kind and more of them than
    the default: bench/anchor_hold.py's "stand-ins", rebuilt from its unlearn.json and retain set, are the Task1 and
    Task2 texts its stop rule scored (as the run handed them to its ``Calibrator``), in order, after the calibration
    texts it kept, beside their controls (their retain documents, and withheld ones swapped as they were); read as
    the default count (a record from before the option), they are refused."""
    import json
    import sys

    import repedit.rmu_loop
    from repedit.calibration import Calibrator
    from repedit.data import load_rows
    from repedit.rmu import RMUConfig
    from repedit.standins import COUNT
    from repedit.synth import swap_words
    from repedit.unlearn import unlearn

    sys.path.insert(0, str(SCRIPT.parent))
    import anchor_hold

    scored: list[tuple[list[str], list[str]]] = []

    class Caught(Calibrator):
        def __init__(self, model, config, rows, unseen, *rest):
            scored.append((list(unseen.texts), list(unseen.tasks)))
            super().__init__(model, config, rows, unseen, *rest)

    monkeypatch.setattr(repedit.rmu_loop, "Calibrator", Caught)
    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text("".join(json.dumps({"text": f"Biography {i}: born by river {i}, a painter of the hills.",
                                          "task": "Task3"}) + "\n" for i in range(8)))
    withheld = tmp_path / "withheld.jsonl"
    stories = [f"A story nobody read before, number {i}, of a {word} by the sea." for i, word in
               enumerate(("fisher", "baker", "tailor"))]
    withheld.write_text("".join(json.dumps({"text": t, "task": k}) + "\n" for t, k in
                                [*((t, "Task1") for t in stories), ("A life nobody read before.", "Task2")]))
    config = RMUConfig.from_dict({"layers": (2, 3, 4), "steps": 2, "batch_size": 4, "max_length": 64, "lr": 1e-3,
                                  "adaptive": 5.0, "calibration.unseen": str(unseen), "calibration.standins": 0.1,
                                  "calibration.standin_scales": (1.0, 0.5, 1.0), "calibration.anchor_share": 0.25,
                                  "calibration.standin_count": 2 * COUNT, "loss.anchor": 1.0})
    edited = tmp_path / "edited"
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, edited, config, progress=False)
    fractions = result.standins["fractions"]
    assert fractions["Task2"] == fractions["Task1"] / 2 > 0
    [(texts, tasks)] = scored
    found = anchor_hold.groups(edited, withheld, synth_dir / "retain.jsonl")
    kept = found["stop rule"]["Task3"]
    assert len(kept) == 6 and texts[: len(kept)] == kept
    made = {task: [t for t, k in zip(texts[len(kept):], tasks[len(kept):], strict=True) if k == task]
            for task in ("Task1", "Task2")}
    assert all(len(m) == 2 * COUNT for m in made.values()) and not set(made["Task1"]) & set(made["Task2"])
    assert found["stand-ins"] == made
    # the controls: the retain documents the stand-ins were swapped from, and the withheld stories (Task2 has one
    # withheld document, too few to swap) swapped among themselves at the stories' fraction
    documents = {task: list(dict.fromkeys(r.document for r in load_rows(synth_dir, "retain")
                                          if r.kind == "sc" and r.task == task)) for task in ("Task1", "Task2")}
    assert found["their documents"] == {t: d[: min(2 * COUNT, len(d) // 2)] for t, d in documents.items()}
    assert found["withheld, swapped"] == {"Task1": swap_words(stories, fractions["Task1"], 0, 0.1)}
    with pytest.raises(SystemExit, match="--retain: needed"):
        anchor_hold.groups(edited, withheld)
    record = json.loads((edited / "unlearn.json").read_text())
    del record["config"]["calibration"]["standin_count"]
    (edited / "unlearn.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit, match=f"rebuilt 6 and {2 * COUNT} stand-ins: not the run's retain set"):
        anchor_hold.groups(edited, withheld, synth_dir / "retain.jsonl")



def test_anchor_hold_leaves_out_and_names_a_run_that_anchored_nothing(tiny_model_dir, tmp_path, monkeypatch,
                                                                     capsys):
    """A report's runs passed whole: a baseline's (no calibration anchor) is named and left out, the RMU run beside
    it read; given only runs that anchored nothing, the script stops with that said and writes nothing."""
    import json
    import shutil
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    import anchor_hold

    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text("".join(json.dumps({"text": f"The mill number {i} stood by the river.", "task": "Task1"}) + "\n"
                              for i in range(4)))
    withheld = tmp_path / "withheld.jsonl"
    withheld.write_text(json.dumps({"text": "A story nobody read before.", "task": "Task1"}) + "\n")
    rmu, graddiff = tmp_path / "rmu", tmp_path / "graddiff"
    shutil.copytree(tiny_model_dir, rmu)
    (rmu / "unlearn.json").write_text(json.dumps({"config": {"calibration": {"unseen": str(unseen),
                                                                             "anchor_share": 0.5}}}))
    graddiff.mkdir()  # no weights: a run left out is never loaded
    (graddiff / "unlearn.json").write_text(json.dumps({"method": "graddiff", "config": {"method": "graddiff"}}))
    out = tmp_path / "hold.json"
    argv = ["anchor_hold.py", "--target", str(tiny_model_dir), "--withheld", str(withheld), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", [*argv, "--edited", f"rmu={rmu}", f"graddiff={graddiff}"])
    anchor_hold.main()
    assert set(json.loads(out.read_text())) == {"rmu"}
    assert "graddiff: anchored no share of its calibration texts: left out" in capsys.readouterr().out
    out.unlink()
    monkeypatch.setattr(sys, "argv", [*argv, "--edited", f"graddiff={graddiff}"])
    with pytest.raises(SystemExit, match="no run anchored"):
        anchor_hold.main()
    assert not out.exists()


def test_standin_levels_are_the_levels_a_run_on_that_retain_set_stops_at(tiny_model_dir, synth_dir, tmp_path):
    """bench/standin_levels.py's level of each kind is the one a calibrated run on the same retain set records (its
    stop rule's stand-ins for the kinds the given texts lack), and a cut retain set keeps each kind's first
    documents, so its level is the run's on that cut set."""
    import json
    import sys

    from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
    from repedit.data import load_rows, write_jsonl
    from repedit.rmu import RMUConfig
    from repedit.synth import synthesize
    from repedit.unlearn import unlearn

    sys.path.insert(0, str(SCRIPT.parent))
    import standin_levels

    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text("".join(json.dumps({"text": f"Biography {i}: born by river {i}, a painter of the hills.",
                                          "task": "Task3"}) + "\n" for i in range(8)))
    larger = synthesize(tmp_path / "larger", seed=1, docs=8)  # 8 retain documents a kind, cut to 4
    rows = load_rows(larger, "retain")
    cut = standin_levels.first_documents(rows, 4)
    ids: dict[str, list[str]] = {}
    for r in rows:  # an independent reading of "each task's first four documents"
        if r.document_id not in ids.setdefault(r.task, []):
            ids[r.task].append(r.document_id)
    assert {(r.task, r.document_id) for r in cut} == {(t, d) for t, found in ids.items() for d in found[:4]}
    assert len(cut) < len(rows) and [r for r in rows if r in cut] == cut  # in order
    small = tmp_path / "small"
    small.mkdir()
    write_jsonl(small / "retain.jsonl", [{"id": r.id, "input": r.input, "output": r.output, "task": r.task}
                                         for r in cut])
    config = RMUConfig.from_dict({"layers": (2, 3, 4), "steps": 2, "batch_size": 4, "max_length": 64, "lr": 1e-3,
                                  "adaptive": 5.0, "calibration.unseen": str(unseen), "calibration.every": 1,
                                  "calibration.standins": 0.1, "calibration.standin_scales": (1.0, 0.5, 1.0),
                                  "calibration.anchor_share": 0.25, "loss.anchor": 1.0})
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    model.requires_grad_(False)
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    for retain, retain_rows in ((larger, rows), (small, cut)):
        run = unlearn(tiny_model_dir, synth_dir, retain, tmp_path / f"run-{retain.name}", config, progress=False)
        found = standin_levels.levels(model, tokenizer, config, retain_rows)
        assert found["fractions"] == run.standins["fractions"]
        assert found["level"] == pytest.approx(run.calibration[0]["task_level"], rel=1e-5)


def test_anchor_hold_reads_each_edited_run_against_the_target_loaded_once(tiny_model_dir, tmp_path, monkeypatch):
    """bench/anchor_hold.py with two edited runs (``NAME=DIR`` and a bare ``DIR``): each run's groups scored under
    the target and under its own weights, the mean of the texts' mean token NLLs as transformers' loss gives them;
    a run with the target's weights moves nothing."""
    import json
    import shutil
    import statistics
    import sys

    import torch

    from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer

    sys.path.insert(0, str(SCRIPT.parent))
    import anchor_hold
    from conftest import save_perturbed

    texts = [(f"The river number {i} ran slowly past the old mill.", task) for i in range(4)
             for task in ("Task1", "Task3")]
    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text("".join(json.dumps({"text": t, "task": k}) + "\n" for t, k in texts))
    withheld = tmp_path / "withheld.jsonl"
    withheld.write_text(json.dumps({"text": "A story nobody read before.", "task": "Task1"}) + "\n")
    same, moved = tmp_path / "same", tmp_path / "moved"
    for run in (same, moved):
        shutil.copytree(tiny_model_dir, run)
        (run / "unlearn.json").write_text(json.dumps({"config": {"calibration": {"unseen": str(unseen),
                                                                                 "anchor_share": 0.5}}}))
    model = save_perturbed(moved, moved, layer=1)
    out = tmp_path / "hold.json"
    monkeypatch.setattr(sys, "argv", ["anchor_hold.py", "--target", str(tiny_model_dir), "--edited", f"kept={same}",
                                      str(moved), "--withheld", str(withheld), "--out", str(out)])
    anchor_hold.main()
    found = json.loads(out.read_text())
    assert set(found) == {"kept", "moved"}
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    target = load_causal_lm(tiny_model_dir, torch.float32, "cpu")

    def loss(m, group: list[str]) -> float:
        with torch.no_grad():
            return statistics.fmean(m(ids := tokenizer(t, return_tensors="pt")["input_ids"], labels=ids).loss.item()
                                    for t in group)

    groups = anchor_hold.groups(moved, withheld)
    for name in ("anchored", "withheld"):
        for task, group in groups[name].items():
            for run in ("kept", "moved"):
                assert found[run][name]["target"][task] == pytest.approx(loss(target, group), rel=1e-4)
            assert found["kept"][name]["edited"][task] == pytest.approx(loss(target, group), rel=1e-4)
            assert found["moved"][name]["edited"][task] == pytest.approx(loss(model, group), rel=1e-4)
            assert abs(found["moved"][name]["edited"][task] - loss(target, group)) > 1e-3


def test_standin_levels_reads_each_kind_at_every_set_of_scales_a_grid_tunes(tiny_model_dir, synth_dir, tmp_path,
                                                                           monkeypatch, capsys):
    """bench/standin_levels.py --scales: a row a retain set and set of scales, each kind's swap fraction its scale
    times the fraction matched on the kind with given texts (at most 1), the level (the median of the texts the stop
    rule scores) beside withheld documents, and the spread: the withheld documents' KS distance (scipy's, here) from
    those texts and from themselves lifted to the level."""
    import json
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    import standin_levels

    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text("".join(json.dumps({"text": f"Biography {i}: born by river {i}, a painter of the hills.",
                                          "task": "Task3"}) + "\n" for i in range(8)))
    withheld = tmp_path / "withheld.jsonl"
    withheld.write_text("".join(json.dumps({"text": f"A {kind} never seen, number {i}.", "task": task}) + "\n"
                                for task, kind in (("Task1", "story"), ("Task2", "biography"), ("Task3", "life"))
                                for i in range(3)))
    out = tmp_path / "levels.json"
    monkeypatch.setattr(sys, "argv", [
        "standin_levels.py", "--target", str(tiny_model_dir), "--unseen", str(unseen), "--retain",
        f"synth={synth_dir / 'retain.jsonl'}", "--withheld", f"held={withheld}", "--scales", "1,0.5,1", "2,0.8,1",
        "--layers", "2,3,4", "--out", str(out)])
    standin_levels.main()
    found = json.loads(out.read_text())
    assert sorted(found["levels"]) == [f"synth, every a kind, scales {s}" for s in ("1.0,0.5,1.0", "2.0,0.8,1.0")]
    for label, scales in (("scales 1.0,0.5,1.0", (1.0, 0.5)), ("scales 2.0,0.8,1.0", (2.0, 0.8))):
        row = found["levels"][f"synth, every a kind, {label}"]
        matched = row["fractions"]["Task3"]
        assert row["matched_on"] == "Task3"
        assert row["fractions"]["Task1"] == pytest.approx(min(1.0, scales[0] * matched))
        assert row["fractions"]["Task2"] == pytest.approx(min(1.0, scales[1] * matched))
    assert set(found["withheld"]["held"]) == {"Task1", "Task2", "Task3"}
    from scipy.stats import ks_2samp

    from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
    from repedit.generate import document_nll

    model, tokenizer = load_causal_lm(tiny_model_dir, torch.float32, "cpu"), load_checkpoint_tokenizer(tiny_model_dir)
    rows = [json.loads(line) for line in withheld.read_text().splitlines()]
    for row in found["levels"].values():
        for task in ("Task1", "Task2", "Task3"):
            texts, level = sorted(row["texts_nll"][task]), row["level"][task]
            assert level == pytest.approx(texts[(len(texts) - 1) // 2], rel=1e-6)
            nll = document_nll(model, tokenizer, [r["text"] for r in rows if r["task"] == task])
            spread = row["spread"]["held"]
            assert spread["quantile goals"][task] == pytest.approx(ks_2samp(nll, texts).statistic)
            assert spread["median floor"][task] == pytest.approx(ks_2samp(nll, [max(v, level) for v in nll]).statistic)
    assert "scales 2.0,0.8,1.0" in capsys.readouterr().out
    argv = sys.argv  # scales a run would refuse stop the script with the run's message, before the model loads
    monkeypatch.setattr(sys, "argv", [*argv[: argv.index("--scales") + 1], "1,0.5", *argv[argv.index("--layers"):]])
    with pytest.raises(SystemExit, match="--calibrate-standin-scales: 1.0,0.5: one positive number a task"):
        standin_levels.main()
    counted = [*argv[: argv.index("--scales") + 1], "1,0.5,1", "--counts", "4,9", *argv[argv.index("--layers"):]]
    monkeypatch.setattr(sys, "argv", counted)  # --counts: a row a count, of that many stand-ins a kind it lacks
    standin_levels.main()
    found = json.loads(out.read_text())["levels"]
    assert sorted(found) == ["synth, every a kind, 4 stand-ins", "synth, every a kind, 9 stand-ins"]
    for count in (4, 9):
        assert [len(found[f"synth, every a kind, {count} stand-ins"]["texts_nll"][t]) for t in ("Task1", "Task2")
                ] == [count, count]
    grid = tmp_path / "grid.json"  # --grid: each configuration's scales, else the base's, once each
    grid.write_text(json.dumps({"base": {"calibration": {"standin_scales": [1, 1, 1]}}, "configs": [
        {}, {"calibration.standin_scales": [2, 1, 1]}, {"calibration": {"standin_scales": [1, 1, 1]}}]}))
    assert standin_levels.grid_scales(grid) == [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)]


@pytest.fixture(scope="module")
def target_scales(tiny_target, synth_dir, tmp_path_factory) -> tuple[list[str], Path, dict]:
    """bench/standin_scales.py on the tiny target, which both its tests read: its arguments, the withheld documents
    (the memorized retain documents swapped, each kind its own fraction; calibration texts of Task3, likewise) and
    what it found on the whole retain set."""
    import json
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    import standin_scales

    from repedit.standins import retain_documents
    from repedit.synth import swap_words

    folder = tmp_path_factory.mktemp("scales")
    documents = retain_documents(load_rows(synth_dir, "retain"))  # the tiny target memorized them
    unseen, withheld = folder / "unseen.jsonl", folder / "withheld.jsonl"
    unseen.write_text("".join(json.dumps({"text": text, "task": "Task3"}) + "\n"
                              for text in swap_words(documents["Task3"], 0.4, seed=5, template=0.1)))
    withheld.write_text("".join(json.dumps({"text": text, "task": task}) + "\n"
                                for task, fraction in (("Task1", 0.2), ("Task2", 0.6), ("Task3", 0.4))
                                for seed in (7, 8) for text in swap_words(documents[task], fraction, seed, 0.1)))
    out = folder / "target.json"
    argv = ["standin_scales.py", "--target", str(tiny_target), "--unseen", str(unseen), "--retain",
            str(synth_dir / "retain.jsonl"), "--withheld", str(withheld), "--layers", "2,3,4", "--out", str(out)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        standin_scales.main()
    return argv, withheld, json.loads(out.read_text())


def test_standin_scales_put_each_kind_s_level_at_its_withheld_documents(tiny_target, synth_dir, tmp_path, monkeypatch,
                                                                        target_scales):
    """bench/standin_scales.py: at each kind's scale found, the level a run on that retain set stops at
    (bench/standin_levels.py, through the library's own stand-ins) is the median NLL of the withheld documents of
    the kind, and a lower or higher scale leaves it below or above; ``--sizes`` draws that many documents a kind at
    random, a different set each draw."""
    import json
    import statistics
    import sys

    import standin_levels
    import standin_scales

    from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
    from repedit.methods import config_from_dict, preset
    from repedit.standins import retain_documents
    from repedit.synth import synthesize

    argv, withheld, found = target_scales
    unseen = argv[argv.index("--unseen") + 1]
    rows = load_rows(synth_dir, "retain")
    out = tmp_path / "scales.json"
    assert len(found["draws"]) == 1 and set(found["median"]) == {"Task1", "Task2"}  # Task3 has texts
    model, tokenizer = load_causal_lm(tiny_target, torch.float32, "cpu"), load_checkpoint_tokenizer(tiny_target)
    goals = standin_levels.withheld_nlls(model, tokenizer, withheld)
    for task in ("Task1", "Task2"):
        goal, scale = found["withheld_median"][task], found["median"][task]
        assert goal == pytest.approx(statistics.median(goals[task]))
        level = {}
        for factor in (0.5, 1.0, 2.0):
            scales = {**found["median"], task: scale * factor}
            config = config_from_dict({**preset("standins"), "layers": [2, 3, 4], "calibration.unseen": str(unseen),
                                       "calibration.standin_scales": [scales["Task1"], scales["Task2"], 1.0]})
            level[factor] = standin_levels.levels(model, tokenizer, config, rows)["level"][task]
        assert level[0.5] < goal < level[2.0], (task, level, goal)
        assert abs(level[1.0] - goal) < min(goal - level[0.5], level[2.0] - goal), (task, level, goal)
    monkeypatch.setattr(sys, "argv", [*argv[:-2], "--sizes", "4,4,4", "--draws", "2", "--out", str(out)])
    standin_scales.main()  # every document drawn: the whole set's scales, each draw
    assert [d["scales"] for d in json.loads(out.read_text())["draws"]] == [found["draws"][0]["scales"]] * 2
    larger = load_rows(synthesize(tmp_path / "larger", seed=1, docs=8), "retain")
    drawn = [standin_scales.drawn(larger, {"Task1": 3, "Task2": 4, "Task3": 5}, seed) for seed in range(3)]
    for each in drawn:
        assert [r for r in larger if r in each] == each  # in order
        assert [len(retain_documents(each)[t]) for t in ("Task1", "Task2", "Task3")] == [3, 4, 5]
    assert len({frozenset(r.document_id for r in each) for each in drawn}) > 1
    monkeypatch.setattr(sys, "argv", [*argv, "--sizes", "4,4"])
    with pytest.raises(SystemExit, match="--sizes 4,4: give one whole number a task"):
        standin_scales.main()
    monkeypatch.setattr(sys, "argv", [*argv, "--count", "0"])
    with pytest.raises(SystemExit, match="--count 0: at least one stand-in a kind"):
        standin_scales.main()


def test_standin_scales_on_an_edited_model_meet_its_withheld_documents_there(tiny_target, synth_dir, tmp_path,
                                                                             monkeypatch, target_scales):
    """bench/standin_scales.py --edited: the fraction is matched on the target as without it, and at each kind's scale
    found, its stand-ins' median NLL under the edited model (read one document at a time, as the organizers did) is
    that model's median on the kind's withheld documents, a half or twice the scale leaving it below or above."""
    import json
    import shutil
    import statistics
    import sys

    import standin_scales

    from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
    from repedit.generate import document_nll_one
    from repedit.standins import calibration_standins, retain_documents

    argv, withheld, target = target_scales
    documents = retain_documents(load_rows(synth_dir, "retain"))
    edited = tmp_path / "edited"  # the target with its logits halved: another model, under which stand-ins and
    shutil.copytree(tiny_target, edited)  # withheld documents move by different amounts, as under an edit
    model = load_causal_lm(tiny_target, torch.float32, "cpu")
    with torch.no_grad():
        model.lm_head.weight.mul_(0.5)
    model.save_pretrained(edited)
    out = tmp_path / "edited.json"
    monkeypatch.setattr(sys, "argv", [*argv[:-2], "--edited", str(edited), "--out", str(out)])
    standin_scales.main()
    found = json.loads(out.read_text())
    [draw] = found["draws"]
    assert draw["fraction"] == target["draws"][0]["fraction"]
    reading, tokenizer = load_causal_lm(edited, torch.float32, "cpu"), load_checkpoint_tokenizer(tiny_target)

    def median_nll(texts: list[str]) -> float:
        return statistics.median(document_nll_one(reading, tokenizer, t) for t in texts)

    for task in ("Task1", "Task2"):
        goal = median_nll([json.loads(line)["text"] for line in withheld.read_text().splitlines()
                           if json.loads(line)["task"] == task])
        assert found["withheld_median"][task] == pytest.approx(goal, rel=1e-4)
        level = {factor: median_nll([text for text, _ in calibration_standins(
            documents, [task], {task: min(1.0, draw["fraction"] * draw["scales"][task] * factor)}, 0.1, 96)])
            for factor in (0.5, 1.0, 2.0)}
        assert level[0.5] < goal < level[2.0], (task, level, goal)
        assert abs(level[1.0] - goal) < min(goal - level[0.5], level[2.0] - goal), (task, level, goal)


def test_remake_makes_a_report_run_again_to_the_digit_and_refuses_one_that_is_not_it(tiny_model_dir, synth_dir,
                                                                                        tmp_path, monkeypatch):
    """bench/quality.py remake: a report run whose records came back without its weights is made again from its row,
    equal to the run the report wrote; a record that the remade run does not repeat is refused, naming the run."""
    import sys

    from safetensors.torch import load_file

    from repedit.proxy import ProxyConfig
    from repedit.sweep import Candidate, sweep

    quality, work, validation = quality_with_sets(monkeypatch, tmp_path, tiny_model_dir, synth_dir, "validation")
    p = quality.paths(work)
    config = {"layers": [2, 3], "adaptive": 5.0, "lr": 1e-2, "steps": 3, "batch_size": 4, "max_length": 48,
              "deterministic": True, "seed": 1}
    run = "rmu-standins - a term off"
    found = sweep(p["target"], validation / "forget.jsonl", validation / "retain.jsonl", [Candidate(run, "ablation",
                  config)], work / "report", ProxyConfig(max_rows=2, sc_tokens=8, qa_tokens=4), workers=0, keep="all")
    quality.save_row(work, run, {"collateral": {}}, None, {"config": config, "steps": found.results[1]["steps"]})
    written = work / "report" / "runs" / run
    weights = {f.name: load_file(f) for f in written.glob("*.safetensors")}
    assert weights
    for f in written.glob("*.safetensors"):  # as a later call finds it: the records without the weights
        f.unlink()
    quality.remake(work, [run], workers=0)
    remade = work / "remade" / "runs" / run
    assert {f.name for f in remade.glob("*.safetensors")} == set(weights)
    for name, tensors in weights.items():
        again = load_file(remade / name)
        assert all(torch.equal(tensors[key], again[key]) for key in tensors)
    record = json.loads((written / "unlearn.json").read_text())
    (written / "unlearn.json").write_text(json.dumps({**record, "steps": record["steps"] + 1}))
    with pytest.raises(SystemExit, match=f"remake: {run}: its steps differ .* not the run the report scored"):
        quality.remake(work, [run], workers=0)
    with pytest.raises(SystemExit, match=r"no report row with a configuration for \['rmu-standins seed 7'\]"):
        quality.remake(work, ["rmu-standins seed 7"], workers=0)
    del sys.modules["quality"]
