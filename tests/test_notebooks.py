"""The analysis notebooks run and draw their plots, from the tiny target (calibration.ipynb: from the
stored H200 results), and print what they drew from; committed, they are bare."""

import asyncio
import json
import os
import re
from pathlib import Path

import nbformat
import pytest

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
# notebook -> the plots it must draw (display_data or execute_result with image/png)
PLOTS = {"calibration.ipynb": 18, "heldout.ipynb": 59, "layer_probing.ipynb": 3, "relearning.ipynb": 6,
         "rmu_effect.ipynb": 5, "steering.ipynb": 1}


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_every_notebook_is_listed():
    assert sorted(path.name for path in ANALYSIS.glob("*.ipynb")) == sorted(PLOTS)


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_committed_notebook_has_no_outputs(name):
    notebook = nbformat.read(ANALYSIS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in _code_cells(notebook):
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip outputs before committing"


@pytest.fixture(scope="module")
def executed(request, tiny_target, synth_dir, tmp_path_factory) -> dict:
    """The notebooks this session tests, run two at a time (a kernel is one single-threaded process; CI has
    two cores): each one's folder and executed notebook, or the error it raised."""
    from nbclient import NotebookClient

    root = ANALYSIS.parent
    names = {item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", None) == "test_notebook_runs_and_plots"}
    kernels = asyncio.Semaphore(2)

    async def execute(name: str) -> tuple[str, tuple[Path, object]]:
        folder = tmp_path_factory.mktemp(name.removesuffix(".ipynb"))
        env = {**os.environ, "REPEDIT_TARGET": str(tiny_target), "REPEDIT_DATA_DIR": str(synth_dir),
               "REPEDIT_CACHE": str(folder / "cache"),  # nothing may be built outside the test
               # the kernel imports this checkout, whatever is installed
               "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        notebook = nbformat.read(ANALYSIS / name, as_version=4)
        async with kernels:
            try:
                await NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}}).async_execute(env=env)
            except Exception as error:  # raised by that notebook's own test
                return name, (folder, error)
        return name, (folder, notebook)

    async def execute_all() -> dict:
        return dict(await asyncio.gather(*map(execute, sorted(names))))

    return asyncio.run(execute_all())


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_notebook_runs_and_plots(name, executed, tiny_target, synth_dir):
    folder, notebook = executed[name]
    if isinstance(notebook, Exception):
        raise notebook
    images = [output for cell in _code_cells(notebook) for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) >= PLOTS[name]
    text = "\n".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                     for cell in _code_cells(notebook) for output in cell.outputs)
    for line in _printed(name, tiny_target, synth_dir):  # what it drew from: this run, or the stored results
        assert re.search(line, text), (name, line, text[-3000:])
    assert not (folder / "cache").exists()


def _printed(name: str, target: Path, data: Path) -> list[str]:
    """Patterns the notebook's text must hold: numbers of the tiny target and the synthetic set it ran
    on, or, for the notebooks that read only stored H200 results, each stored run."""
    from repedit.checkpoint import read_config
    from repedit.data import load_rows

    if name == "calibration.ipynb":
        patterns = []
        for number in (5, 6):
            report = json.loads((ANALYSIS.parent / "bench" / "results" / f"quality-h200-run{number}.json").read_text())
            patterns += [rf"run {number}, {run['name']}\s" for run in report["sweep"]["results"]
                         if run.get("calibration")]
        return patterns + [r"gap per \+10% level +gap at level 0",  # the level-against-gap fit's table
                           r"r +gap per \+10% level +held-out AUC per \+10% level",  # the same within each call
                           r"validation, every a kind +-2\.2 +-1\.6 +-14\.2 +2\.8",  # stand-ins: 24 against 96
                           r"stories at 1\.0 +520 +0\.57",  # one level moved alone: the written check's step
                           r"train +6 +0\.06 +1 +0\.78 +6",  # the swing check to check, on train
                           r"checks every 5 +0\.06 +0\.64",  # the forget set's cycle against the anchor's
                           r"written: step 5940, .*stopped: patience at 6090",  # c23's kinds out of phase
                           r"distance from chance: \[0\.199, 0\.206, 0\.211, 0\.221\]",
                           # the seventy-second call's c20 and c25: where the attack first misses a document
                           r"c20: 181 checks, the first not telling every document apart at step 820, stopped: "
                           r"patience at 1810",
                           r"c25: 489 checks, the first not telling every document apart at step 2220, stopped: "
                           r"patience at 4890",
                           # the seventy-fifth's c26: its written check, and no sparse checks on that build
                           r"seventyfifth call, c26: 255 checks, the first not telling every document apart at step "
                           r"10, stopped: patience at 2550, written: step 2400",
                           # the ninety-fifth session's written checks against the proxy, and the levels' gaps
                           r"stop level less withheld median, train: -4\.7% / -7\.4% / -1\.2% \(-0\.35 / -0\.26 / "
                           r"-0\.10 nats\)",
                           r"c41 +0\.20 +0\.12 +0\.09",
                           # the ninety-sixth session's three seeds of each candidate
                           r"c41: KS against own levels 0\.208 / 0\.276 / 0\.208, mean 0\.231"]
    if name == "heldout.ipynb":  # every stored row, with its unseen NLLs as the results file has them
        results = ANALYSIS.parent / "bench" / "results"
        printed = []
        for file in ("quality-h200x2-anchored.json", "quality-h200x2-withheld.json", "quality-h200x2-fourth.json",
                     "quality-h100-eightieth.json"):
            report = json.loads((results / file).read_text())
            rows = [r for r in report["rows"] if not r["name"].startswith(("oracle", "target"))]
            printed += [f"{file} {report['device']} - {len(report['rows'])} rows"]
            printed += [f"{r['name']} " + str({t: round(v, 2) for t, v in r["collateral"]["unseen_nll"].items()})
                        for r in rows]
        relearned = []
        for call in ("attack-h200x2-heldout", "attack-h200x2-fourth", "attack-h200x2-eleventh",
                     "attack-h200x2-fourteenth", "attack-h200x2-nineteenth", "attack-h200-twentyfirst"):
            attacks = json.loads((results / call / "attack.json").read_text())
            relearned += [f"{name}: forget NLL {a['unlearned']['nll']:.2f} -> "
                          f"{a['attacks']['relearn']['measures']['nll']:.2f}" for name, a in attacks.items()]
        fourth = json.loads((results / "attack-h200x2-fourth" / "attack.json").read_text())
        oracle = next(iter(fourth.values()))["attacks"]["relearn"]["oracle"]  # the one call that ran the control
        relearned.append(f"oracle: forget NLL {oracle['before']['nll']:.2f} -> {oracle['after']['nll']:.2f}")

        def finals(call: str) -> dict[str, float]:  # a stored report's final score of each row
            rows = json.loads((results / f"quality-h200x2-{call}.json").read_text())["rows"]
            return {r["name"]: r["scores"]["aggregate-score"] for r in rows}

        sixth = finals("sixth")
        seeds = [f"no anneal: final {sixth['rmu-withheld - no anneal']:.3f} / "
                 f"{sixth['rmu-withheld no anneal seed 1']:.3f} / {sixth['rmu-withheld no anneal seed 2']:.3f}"]
        for label, call, name in (("lr 3e-4", "tenth", "rmu-withheld"),
                                  ("lr 3e-4, eleventh call", "eleventh", "rmu-withheld"),
                                  ("lr 3e-4, no misdirection, eleventh", "eleventh", "rmu-withheld - no misdirection"),
                                  ("rmu-public (Wikipedia texts only)", "twelfth", "rmu-public"),
                                  ("rmu-standins (stand-ins of every kind)", "thirteenth", "rmu-standins"),
                                  ("rmu-standins, particulars, tuned (lr 1e-3)", "fourteenth", "rmu-standins"),
                                  ("rmu-standins, particulars, tuned, no misdirection", "fourteenth",
                                   "rmu-standins - no misdirection"),
                                  ("rmu-standins, particulars, runner-up (lr 3e-4)", "fifteenth", "rmu-standins")):
            scores = finals(call)
            seeds.append(f"{label}: final " + " / ".join(f"{scores[name + s]:.3f}" for s in ("", " seed 1", " seed 2")))
        hold = json.loads((results / "anchor-hold-h200-thirtythird.json").read_text())
        anchored = {run: 100 * (h["anchored"]["edited"]["Task3"] / h["anchored"]["target"]["Task3"] - 1)
                    for run, h in hold.items()}  # the thirty-third call's panel: the anchored texts' rise per run
        seeds += [f"anchored Task3 {rise:+.1f}%" for rise in anchored.values()]
        for call in ("thirtyfourth", "thirtyfifth"):  # those calls' panels: the rise on the template
            split = json.loads((results / f"particulars-h200-{call}.json").read_text())
            seeds += [f"withheld template {100 * split['Task1']['edited'][run]['template_rise']:+.1f}%"
                      for run in split["Task1"]["edited"]]
        tiny = json.loads((results / "particulars-tinyreal-oracle.json").read_text())
        seeds += [f"{run}: forget template " + " / ".join(f"{tiny[t]['edited'][run]['forget']['template_nll']:.2f}"
                                                          for t in ("Task1", "Task2", "Task3"))
                  for run in tiny["Task1"]["edited"]]  # the oracle's split beside the edits'
        rows69 = {r["name"]: r for r in json.loads((results / "quality-h200-sixtyninth.json").read_text())["rows"]}
        base69 = rows69["target (not unlearned)"]["collateral"]
        back69 = json.loads((results / "attack-h200-sixtyninth" / "attack.json").read_text())
        seeds += [f"{name}: final {run['scores']['aggregate-score']:.3f}, general "
                  f"{100 * (run['collateral']['general_nll'] / base69['general_nll'] - 1):+.2f}%"
                  + (f", relearning gives back {back69[name]['attacks']['relearn']['recovered']['nll']:.2f}"
                     if name in back69 else "")
                  for name, run in rows69.items()
                  if not name.startswith(("target", "rmu-published")) and "no misdirection" not in name]
        return [re.escape(text) for text in [*printed, *relearned, *seeds]]
    if name == "relearning.ipynb":  # every stored relearning attack on the tiny target of real documents, once
        results = ANALYSIS.parent / "bench" / "results"
        target = json.loads((results / "method-cpu-tinyreal-latent.json").read_text())["target"]["scores"]
        withheld = sum(target[t]["unseen_nll"] for t in ("Task1", "Task2", "Task3")) / 3
        points = {}
        for file in sorted(results.glob("attack-cpu-tinyreal-*/**/*.json")):
            for report in json.loads(file.read_text()).values():
                relearn = report["attacks"]["relearn"]
                key = (round(report["unlearned"]["nll"], 6), round(relearn["measures"]["nll"], 6))
                points.setdefault(key, (str(file.relative_to(results)).removesuffix(".json").removesuffix("/attack"),
                                        100 * (relearn["unseen_nll"]["before"] / withheld - 1),
                                        relearn["recovered"]["nll"]))
        sim = json.loads((results / "relearn-attackers-h200-sixtyninth.json").read_text())["runs"]["rmu-standins"]
        shares = " +".join(f"{route['recovered']:.2f}" for route in sim["routes"].values())  # the preset on the sim
        build26 = json.loads((results / "relearn-attackers-h100-eightyfirst.json").read_text())["runs"]
        shares26 = " +".join(f"{route['recovered']:.2f}" for route in build26["rmu-standins"]["routes"].values())
        train = json.loads((results / "attack-train-h100-seventieth" / "attack.json").read_text())
        relearned = [f"{run}: probed NLL {r['unlearned']['nll']:.2f} -> {a['measures']['nll']:.2f} (original "
                     f"{r['original']['nll']:.2f}), relearning gives back {a['recovered']['nll']:.2f}"
                     for run, r in train.items() if (a := r["attacks"]["relearn"])]
        beside = json.loads((results / "attack-h100-seventysixth" / "attack.json").read_text())  # the ascent's call
        levels = [f"{label}: probed {r['unlearned']['nll']:.2f} -> {a['measures']['nll']:.2f} nats, its unseen "
                  f"documents {a['unseen_nll']['before']:.2f} -> {a['unseen_nll']['after']:.2f}, gives back "
                  f"{a['recovered']['nll']:.2f}"
                  for label, r in (("the bounded ascent", beside["rmu-ascent"]),
                                   ("c20 (the preset)", beside["rmu-standins"])) if (a := r["attacks"]["relearn"])]
        return [re.escape(f"{name}: withheld {rise:+.1f}%, relearning gives back {back:.2f}")
                for name, rise, back in points.values()] + [r"oracle: withheld -1\.2%, relearning gives back 0\.03",
                                                             r"edit \(layers 2-4\) +0\.77 +0\.61 +0\.53 +0\.34 +0\.08",
                                                             r"rmu-standins \(layers 5-7\) +" + shares,
                                                             r"rmu-standins \(layers 5-7\) +" + shares26,
                                                             *map(re.escape, [*relearned, *levels])]
    if name == "layer_probing.ipynb":
        config = read_config(target)
        forget, retain = load_rows(data, "forget"), load_rows(data, "retain")
        return [re.escape(f"{target}: {config.num_hidden_layers} layers, d_model {config.hidden_size}"),
                re.escape(f"{data}: {len(forget)} forget rows, {len(retain)} retain rows")]
    if name == "rmu_effect.ipynb":
        return [r"c = \d+\.\d\d; 80 steps \(steps\)"]
    return [r"layer \d+: probe accuracy [01]\.\d\d", r"prompt: \.\.\."]
