"""bench/quality.py's grids: every candidate and every ablation of every method is a configuration the
library accepts, and reads texts that exist, before a GPU call is spent on it."""

import json
import re
import sys
import types
from pathlib import Path

import pytest

from repedit.config_fields import nest
from repedit.data import load_rows
from repedit.methods import config_from_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
quality = pytest.importorskip("quality")


PASSAGES = [f"A general passage, number {i}, about something else." for i in range(300)]


@pytest.fixture
def work(tmp_path, synth_dir, monkeypatch):
    """A work directory as ``quality.py build`` leaves it, as far as the grids read it, and a data root with the
    general passages the sim trained on but its held-out ones (every fifth)."""
    (tmp_path / "data" / "general").mkdir(parents=True)
    (tmp_path / "data" / "general" / "passages.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                                          for t in PASSAGES))
    monkeypatch.setenv("REPEDIT_DATA", str(tmp_path / "data"))
    paths = quality.paths(tmp_path)
    paths["target"].mkdir()
    (paths["target"] / "heldout_general.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                                   for t in PASSAGES[::5]))
    (paths["sets"] / quality.TUNE).mkdir(parents=True)
    retain = [{"id": r.id, "input": r.input, "output": r.output, "task": r.task}
              for r in load_rows(synth_dir, "retain")]
    (paths["sets"] / quality.TUNE / "retain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in retain))
    unseen = [{"text": f"An unseen document of {task}, number {i}.", "task": task}
              for task in ("Task1", "Task2", "Task3") for i in range(3)]
    for name in ("reference", "withheld-anchors", "public", "public-tasks", "standins", "particulars",
                 "standin-anchors", "particulars-scaled", "standin-anchors-scaled"):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in unseen))
    return tmp_path


@pytest.fixture
def incumbent_c0(monkeypatch):
    """The tune's rules read with c0 as the grid's incumbent, the preset they were first measured on (the
    stored figures below are its); they are the same rules whichever candidate the grid ships."""
    monkeypatch.setattr(quality, "incumbent", lambda method: "c0")


@pytest.mark.parametrize("method", sorted(quality.GRIDS_BY_METHOD))
def test_every_candidate_and_ablation_is_a_valid_configuration_reading_existing_texts(method, work):
    candidates, ablations = quality.read_grid(method, work)
    assert candidates
    for candidate in candidates:
        for label, change in {"": {}, **ablations}.items():
            config = nest({**candidate.config, **change})
            config_from_dict(config)  # raises on an unknown key or a bad value
            named = [config.get("calibration", {}).get("unseen"), config.get("loss", {}).get("anchor_texts")]
            for file in filter(None, named):
                assert Path(file).is_file(), (method, candidate.name, label, file)
    for label, change in ablations.items():  # an ablation that changes nothing would report a term as worthless
        # (``report`` skips one that is the chosen configuration already, as "document" is for c0)
        assert any(quality.changes(c.config, change) for c in candidates), (method, label)


@pytest.mark.parametrize("method", sorted(quality.GRIDS_BY_METHOD))
def test_every_run_a_grid_makes_repeats_exactly_so_a_later_call_can_remake_it(method, work):
    """The stages after the report read its runs' weights, which a fresh machine makes again (``quality.py
    remake``) and refuses where they do not repeat the report's: the ascent's grid ran without torch's
    deterministic kernels and its report run could not be made again (seventy-eighth session)."""
    candidates, ablations = quality.read_grid(method, work)
    for candidate in candidates:
        for label, change in {"": {}, **ablations}.items():
            assert config_from_dict(nest({**candidate.config, **change})).deterministic, (candidate.name, label)


def test_general_anchors_are_trained_passages_never_the_measured_ones(work):
    """``general-anchors``: the first 256 passages the sim trained on, in their order; none of the held-out ones its
    general NLL reads, which would otherwise be held by the anchor they measure."""
    file = quality.anchor_file(work, "general-anchors", "rmu-standins")
    anchored = [json.loads(line)["text"] for line in Path(file).read_text().splitlines()]
    assert anchored == [t for i, t in enumerate(PASSAGES) if i % 5][:256]


def test_an_ablation_that_sets_what_the_chosen_run_has_already_is_no_other_run(work):
    """``report`` skips such an ablation (its row would say the term is worth nothing): a value equal to the
    configuration's, or to the default it leaves unset; any other value is another run."""
    candidates, ablations = quality.read_grid("rmu-standins", work)
    config = next(c.config for c in candidates if c.name == "rmu-standins.c0")
    assert not quality.changes(config, {"loss.anchor_texts": None})  # the default, unset in c0
    assert not quality.changes(config, {"loss.anchor": config["loss"]["anchor"]})
    assert quality.changes(config, {"loss.anchor": 2 * config["loss"]["anchor"]})
    assert quality.changes(config, ablations["no misdirection"])


def test_the_standins_preset_is_the_configuration_tuning_chose(work):
    """``--preset standins`` is rmu-standins' choice on train, as the sixty-sixth call's tune recorded it (c20; ahead
    of the former preset on every validation seed in the sixty-eighth call: BENCHMARKS.md), less the texts a user
    gives (the calibration's unseen texts and the general passages the anchor holds, ``--anchor-texts``) and the
    tune's time budget (the export's hour applies), with its cached batches in host memory (``offload``: the same
    edit, tests/test_distributed.py; BENCHMARKS.md, "Fifty-sixth call"); its stand-in scales are those
    ``bench/standins_cpu.py --fit-scales`` fitted on train, its patience 150 steps; and it is the grid's incumbent,
    which the next tune keeps unless beaten."""
    from repedit.methods import preset

    results = Path(quality.__file__).parent / "results"
    tuned = json.loads((results / "tuned-h200-sixtysixth.json").read_text())["rmu-standins"]
    assert tuned["candidate"] == "rmu-standins.c20" == "rmu-standins." + str(quality.incumbent("rmu-standins"))
    candidates, _ = quality.read_grid("rmu-standins", work)
    incumbent = nest(next(c.config for c in candidates if c.name == tuned["candidate"]))
    chosen = nest(tuned["config"])
    for config in (chosen, incumbent):
        config.pop("time_budget")  # the tune's budget, texts and kernels, not the preset's
        config["calibration"].pop("unseen")
        assert Path(config["loss"].pop("anchor_texts")).name == "general-anchors.jsonl"
        assert config.pop("deterministic")  # the grid's runs repeat exactly; a user's choice of kernels is theirs
    assert incumbent == chosen
    assert chosen["calibration"]["patience"] == 150
    chosen["offload"] = True  # the preset's memory and speed settings: the same edit (tests/test_distributed.py)
    chosen["loss"]["retain_nll_tokens"] = 2048
    standins = preset("standins")
    assert chosen == standins
    fitted = json.loads((results / "standins-cpu-scaled.json").read_text())
    assert standins["calibration"]["standins"] == fitted["template"]
    assert standins["calibration"]["standin_scales"] == fitted["scales"]


def write_rows(file: Path, rows: list[dict]) -> Path:
    """``rows`` written to ``file`` as a ``results.csv`` (the first row's columns)."""
    import csv

    with open(file, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return file


def recording_on_train(made: list[str], proxy: dict):
    """A stand-in for ``quality.on_train``: each run's name added to ``made``, each scored ``proxy`` and calibrated."""
    def on_train(work, runs, out, reference, workers):
        made.extend(c.name for c in runs)
        return [{"name": c.name, "status": "ok", "config": c.config, "stopped": "calibrated", "proxy": dict(proxy)}
                for c in runs]
    return on_train


def stored_runs(work: Path, finals: dict[str, tuple[float, ...]], calibrated: tuple[str, ...] = (),
                utilities: dict[str, tuple[float, ...]] | None = None, file: str = "previous.csv",
                bars: dict[str, tuple[tuple[float, float, float, float], ...]] | None = None,
                rises: dict[str, tuple[tuple[float, float, float], ...]] | None = None) -> Path:
    """A ``results.csv`` as a tune call leaves it: each candidate's proxy final (and utility, 0.8 where not
    given) on seeds 0.., every run ok; the grid's other candidates at 0.5 on as many seeds, so that the tune
    runs nothing. ``bars``: a candidate's runs' worst retain term and attack AUC on each task, as columns;
    ``rises``: its runs' reference rise on each task."""
    import csv

    seeds = len(next(iter(finals.values())))
    candidates = quality.read_grid("rmu-standins", work)[0]
    finals = {c.name.split(".")[-1]: (0.5,) * seeds for c in candidates} | finals
    utilities = utilities or {}

    configs = {c.name: c.config for c in quality.with_seeds(candidates, seeds, ".s{}")}
    rows = [{"name": (name := f"rmu-standins.{c}" + (f".s{s}" if s else "")), "status": "ok",
             "config": json.dumps(configs[name]),
             "proxy_final": value, "proxy_mean": 0.5, "proxy_utility": utilities.get(c, (0.8,) * seeds)[s],
             "stopped": "calibrated" if c in calibrated else "time budget",
             **bar_columns((bars or {}).get(c, ())[s:s + 1]),
             **{f"proxy_reference_rise Task{i}": r for i, r in enumerate(((rises or {}).get(c) or [()] * seeds)[s], 1)}}
            for c, values in finals.items() for s, value in enumerate(values)]
    previous = work / file
    with open(previous, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    return previous


def bar_columns(bars: tuple[tuple[float, float, float, float], ...]) -> dict:
    """A run's ``results.csv`` columns for its worst retain term (``retain Task2 qa``, the others 1.0) and each
    task's attack AUC; none for no bars."""
    if not bars:
        return {}
    retain, *aucs = bars[0]
    terms = {f"retain {t} {k}": 1.0 for t in ("Task1", "Task2", "Task3") for k in ("sc", "qa")}
    return {**terms, "retain Task2 qa": retain, **{f"proxy_task_mia_auc Task{i}": a for i, a in enumerate(aucs, 1)}}


def test_the_bar_shortfall_sums_how_far_each_bar_is_missed():
    """Worked by hand: retain 0.95 (0.03 under 0.98); utility 0.8, the worst kind's NLL up 25% (0.15 past +10%);
    AUCs 0.9 / 0.52 / 0.30 (0.35, 0, 0.15 outside [0.45, 0.55]): 0.68. Every bar met, edges included: 0."""
    proxy = {"terms": {"retain Task1 sc": 1.0, "retain Task1 qa": 0.95, "forget Task1 sc": 0.1}, "utility": 0.8,
             "task_mia_auc": {"Task1": 0.9, "Task2": 0.52, "Task3": 0.30}}
    assert quality.bar_shortfall(proxy) == pytest.approx(0.03 + 0.15 + 0.35 + 0.15)
    met = {"terms": {"retain Task1 sc": 0.99}, "utility": 0.95, "task_mia_auc": {"Task1": 0.46, "Task2": 0.55}}
    assert quality.bar_shortfall(met) == 0.0
    assert quality.bar_shortfall({"terms": {"retain Task1 sc": 0.99}, "final": 0.7}) is None  # no reference texts
    # the train split's oracle read: the pooled KS 0.26, 0.06 past 0.2; per kind, not a bar
    assert quality.bar_shortfall({**met, "oracle_ks": {"Task1": 0.5, "all": 0.26}}) == pytest.approx(0.06)
    assert quality.bar_shortfall({**met, "oracle_ks": {"Task1": 0.5, "all": 0.2}}) == 0.0


@pytest.mark.usefixtures("incumbent_c0")
def test_a_tune_that_reads_the_train_oracle_makes_again_the_stored_rows_scored_without_it(work, monkeypatch, capsys):
    """With the train split's oracle in the work directory, a stored row scored without it carries no KS bar, so
    ranked beside runs that read it the row would gain: it is made again. A row that read it is kept, and
    ``results.csv``'s columns bring its KS back (``proxy_oracle_ks all``) for the shortfall; without the oracle
    every stored row stands."""
    import csv

    stored = stored_runs(work, {"c0": (0.70,), "c1": (0.71,)})
    rows = [r | ({"proxy_oracle_ks Task1": 0.3, "proxy_oracle_ks all": 0.25} if r["name"] != "rmu-standins.c1"
                 else {"proxy_oracle_ks Task1": "", "proxy_oracle_ks all": ""})
            for r in csv.DictReader(stored.open())]
    write_rows(stored, rows)
    assert quality._csv_results(stored)[0]["proxy"]["oracle_ks"] == {"Task1": 0.3, "all": 0.25}
    made = []

    monkeypatch.setattr(quality, "on_train", recording_on_train(
        made, {"final": 0.60, "mean": 0.5, "utility": 0.8, "terms": {}, "oracle_ks": {"all": 0.3}}))
    quality.tune(work, ["rmu-standins"], None, [stored], seeds=1, candidates=["c1"])
    assert made == []  # no train oracle: every stored row stands
    quality.paths(work)["oracle_nll_train"].write_text("{}")
    quality.tune(work, ["rmu-standins"], None, [stored], seeds=1, candidates=["c1"])
    assert made == ["rmu-standins.c1"]
    out = capsys.readouterr().out
    assert "1 row(s) scored without the train split's oracle: made again (rmu-standins.c1)" in out
    assert re.search(r"bar shortfall +oracle KS +reference rise", out)  # absolute NLLs: no own level read
    assert re.search(r"rmu-standins\.c0 +1 +0\.700 +0\.800 +- +- +0\.250 +- +- +0\.30\n", out)  # its KS, from the file
    assert re.search(r"rmu-standins\.c1 +1 +0\.600 +0\.800 +- +- +0\.300 +- +- +-\n", out)  # made again: read here


@pytest.mark.usefixtures("incumbent_c0")
def test_a_tune_whose_train_oracle_read_the_reference_texts_ranks_by_the_ks_against_own_levels(work, monkeypatch,
                                                                                                capsys):
    """With train's oracle NLLs of every reference text too, the tune reads the oracle KS against each model's own
    unseen level (``oracle_ks_relative``): a stored row that has only the absolute KS is made again, one that has the
    relative KS is kept and its table shows that KS, pooled and per kind, not the absolute one, and under the rows the
    attack AUC the oracle itself reads (the scorer's ``oracle_task_mia_auc``, the same in every row)."""
    import csv

    stored = stored_runs(work, {"c0": (0.70,), "c1": (0.71,)})
    oracle_aucs = {f"proxy_oracle_task_mia_auc Task{i}": auc for i, auc in enumerate((0.38, 0.68, 0.58), 1)}
    absolute = {"proxy_oracle_ks all": 0.25, "proxy_oracle_ks Task1": 0.9, "proxy_oracle_ks Task2": 0.8,
                "proxy_oracle_ks Task3": 0.7}
    relative = {"proxy_oracle_ks_relative all": 0.125, "proxy_oracle_ks_relative Task1": 0.5,
                "proxy_oracle_ks_relative Task2": 0.25, "proxy_oracle_ks_relative Task3": 0.4}
    rows = [r | oracle_aucs | absolute | (relative if r["name"] != "rmu-standins.c1" else dict.fromkeys(relative, ""))
            for r in csv.DictReader(stored.open())]
    write_rows(stored, rows)
    made = []

    monkeypatch.setattr(quality, "on_train", recording_on_train(
        made, {"final": 0.60, "mean": 0.5, "utility": 0.8, "terms": {}, "oracle_ks": {"all": 0.3},
               "oracle_ks_relative": {"all": 0.0625, "Task1": 0.3, "Task2": 0.2, "Task3": 0.1}}))
    texts = [r["text"] for r in quality.proxy_reference(work, [])]
    quality.paths(work)["oracle_nll_train"].write_text(json.dumps(dict.fromkeys(texts, 7.0)))
    quality.tune(work, ["rmu-standins"], None, [stored], seeds=1, candidates=["c1"])
    assert made == ["rmu-standins.c1"]
    out = capsys.readouterr().out
    assert "1 row(s) scored without the train split's oracle levels: made again (rmu-standins.c1)" in out
    assert re.search(r"bar shortfall +KS, own level +reference rise", out)  # which KS the column holds
    assert re.search(r"rmu-standins\.c0 +1 +0\.700 +0\.800 +- +- +0\.125 +- +- +0\.50 / 0\.25 / 0\.40\n", out)
    assert re.search(r"rmu-standins\.c1 +1 +0\.600 +0\.800 +- +- +0\.062 +- +- +0\.30 / 0\.20 / 0\.10\n", out)
    assert "\ntrain's retrain oracle, the same attack: AUC 0.38 / 0.68 / 0.58\n" in out


@pytest.mark.parametrize(("c17", "chosen"), [
    # the twenty-third build's train rows (sixty-third call): c17 ties c0 on proxy final (0.672 against 0.678, one
    # standard error 0.036) and falls short of the bars by 0.57 against 0.71 (one standard error 0.10)
    (((0.985, 0.852, 0.734, 0.526), (0.967, 0.905, 0.739, 0.432)), "c17"),
    (((0.770, 0.907, 0.446, 0.308), (0.730, 0.804, 0.568, 0.577)), "c0"),  # c0's bars: nothing to prefer
])
@pytest.mark.usefixtures("incumbent_c0")
def test_tune_prefers_a_candidate_tied_on_final_that_falls_less_short_of_23s_bars(work, capsys, c17, chosen):
    finals = {"c0": (0.644, 0.712), "c17": (0.683, 0.660)}
    utilities = {"c0": (0.840, 0.856), "c17": (0.879, 0.878)}
    bars = {"c0": ((0.770, 0.907, 0.446, 0.308), (0.730, 0.804, 0.568, 0.577)), "c17": c17}
    rises = {"c17": ((0.10, 0.02, 0.04), (0.12, 0.04, 0.06))}  # read beside the choice, not by it
    stored = stored_runs(work, finals, calibrated=("c0", "c17"), utilities=utilities, bars=bars, rises=rises)
    quality.tune(work, ["rmu-standins"], None, [stored], seeds=2, candidates=["c17"])
    assert json.loads(quality.paths(work)["tuned"].read_text())["rmu-standins"]["candidate"] == f"rmu-standins.{chosen}"
    out = capsys.readouterr().out
    assert ("falls less short of #23's bars on train (0.569 against 0.710)" in out) == (chosen == "c17")
    assert re.search(r"rmu-standins\.c0 +2 +0\.678 +0\.848 +- +0\.710 +- +- +0\.86 / 0\.51 / 0\.44 +-\n",
                     out)  # as read
    shortfall = "0.569" if chosen == "c17" else "0.669"  # c0's retain terms and AUCs at c17's utility: 0.04 less
    aucs = "0.88 / 0.74 / 0.48" if chosen == "c17" else "0.86 / 0.51 / 0.44"  # each kind's mean over the seeds
    assert re.search(rf"rmu-standins\.c17 +2 +0\.671 +0\.87[89] +- +{shortfall} +- +\+11\.0 / \+3\.0 / \+5\.0% +{aucs} "
                     r"+-\n", out)
    assert "retrain oracle" not in out  # scored without train's oracle: no line of it


@pytest.mark.usefixtures("incumbent_c0")
def test_tune_keeps_the_incumbent_over_a_candidate_nearer_the_bars_but_clearly_behind_on_final(work):
    """The final is #23's bar too: c17 nearer every other bar but 0.08 behind c0 (one standard error 0.01) stays out."""
    finals = {"c0": (0.700, 0.690), "c17": (0.620, 0.610)}
    bars = {"c0": ((0.770, 0.907, 0.446, 0.308), (0.730, 0.804, 0.568, 0.577)),
            "c17": ((0.985, 0.852, 0.734, 0.526), (0.967, 0.905, 0.739, 0.432))}
    stored = stored_runs(work, finals, calibrated=("c0", "c17"), bars=bars)
    quality.tune(work, ["rmu-standins"], None, [stored], seeds=2, candidates=["c17"])
    assert json.loads(quality.paths(work)["tuned"].read_text())["rmu-standins"]["candidate"] == "rmu-standins.c0"


@pytest.mark.usefixtures("incumbent_c0")
def test_tune_chooses_again_from_stored_runs_by_the_mean_over_seeds(work, capsys):
    """A tune whose runs all ran before (``--previous``) runs nothing and re-makes the choice: the candidate
    with the best mean proxy final over its seeds (one seed's high score does not decide), with how its runs stopped."""
    finals = {"c0": (0.78, 0.77, 0.73), "c1": (0.95, 0.60, 0.60)}  # means .76 and .72; the rest .5
    quality.tune(work, ["rmu-standins"], None, [stored_runs(work, finals, calibrated=("c1",))], seeds=3)
    chosen = json.loads(quality.paths(work)["tuned"].read_text())["rmu-standins"]
    assert chosen["candidate"] == "rmu-standins.c0"
    assert chosen["proxy_finals"] == [0.78, 0.77, 0.73]
    assert chosen["stopped"] == ["time budget"] * 3
    runs = 3 * len(quality.read_grid("rmu-standins", work)[0])
    out = capsys.readouterr().out
    assert f"{runs} of {runs} ran; {runs - 3} stopped at the 120 s budget" in out
    assert re.search(r"rmu-standins\.c1 +3 +0\.717 +0\.800 +- +- +- +- +- +-\n", out)  # no AUC, bars, rises, KS
    assert not (work / "tune").exists()  # nothing swept


@pytest.mark.usefixtures("incumbent_c0")
def test_tune_takes_the_rows_of_several_calls_a_later_files_row_replacing_an_earlier_ones(work):
    """A tune carried over two calls, each cut short: the first call's file holds c0 and c1, the second's c1 made
    again and the rest. Nothing is run again, and c1 is ranked by its later row (0.60, under c0's 0.70), not its
    earlier one (0.90, which would have won)."""
    import csv

    def keep(file: Path, names: set[str]) -> Path:
        rows = [r for r in csv.DictReader(file.open()) if r["name"].split(".")[1] in names]
        write_rows(file, rows)
        return file

    first = keep(stored_runs(work, {"c0": (0.70, 0.70), "c1": (0.90, 0.90)}, file="first.csv"), {"c0", "c1"})
    later = stored_runs(work, {"c1": (0.60, 0.60)}, file="later.csv")
    others = {c.name.split(".")[1] for c in quality.read_grid("rmu-standins", work)[0]} - {"c0"}
    quality.tune(work, ["rmu-standins"], None, [first, keep(later, others)], seeds=2)
    chosen = json.loads(quality.paths(work)["tuned"].read_text())["rmu-standins"]
    assert chosen["candidate"] == "rmu-standins.c0" and chosen["proxy_finals"] == [0.70, 0.70]
    assert not (work / "tune").exists()  # every run stored in one file or the other


@pytest.mark.usefixtures("incumbent_c0")
def test_tune_refuses_a_stored_row_whose_configuration_is_not_its_candidates(work):
    """``--previous`` rows are matched to the grid's candidates by name: a row renamed onto another candidate (the
    forty-fifth call's c4, 0.949 / 0.734, is not the forty-sixth grid's c1) would be ranked as a run never made, so
    the tune refuses it and names the row; a row at another time budget is the same run, and so is one recorded
    before ``--latent-anchor`` took a radius (the anchor in the forget rows' ball by a switch: c22 at 0.1)."""
    import csv

    stored = stored_runs(work, {"c0": (0.7, 0.7)})
    rows = list(csv.DictReader(stored.open()))

    def store() -> None:
        write_rows(stored, rows)

    rows[0]["config"] = json.dumps({**json.loads(rows[0]["config"]), "time_budget": 330.0})  # c0, at another budget
    [c22] = [r for r in rows if r["name"] == "rmu-standins.c22"]
    assert json.loads(c22["config"])["loss.latent_anchor"] == 0.1
    c22["config"] = json.dumps({**json.loads(c22["config"]), "loss.latent_anchor": True})
    store()
    quality.tune(work, ["rmu-standins"], None, [stored], seeds=2)  # nothing run again: all stored, all the grid's
    rows[1]["config"], rows[2]["config"] = rows[2]["config"], rows[1]["config"]  # c0's second seed and c1 swapped
    store()
    with pytest.raises(SystemExit, match=f"--previous: {stored}: row {rows[1]['name']} ran another configuration"):
        quality.tune(work, ["rmu-standins"], None, [stored], seeds=2)
    rows[1]["config"], rows[2]["config"] = rows[2]["config"], rows[1]["config"]
    moved = {**json.loads(rows[0]["config"]), "loss.anchor_texts": "/tmp/another-work/general-anchors.jsonl"}
    rows[0]["config"] = json.dumps(moved)  # made in another work directory: the refusal names the setting
    store()
    with pytest.raises(SystemExit, match=r"\(loss\.anchor_texts '/tmp/another-work/general-anchors\.jsonl' in the "
                                         r"row, None in the grid\).*another work directory"):
        quality.tune(work, ["rmu-standins"], None, [stored], seeds=2)
    grouped = json.loads(rows[0]["config"])  # one field of a group apart: named alone, not the whole group
    grouped.pop("loss.anchor_texts")
    grouped["calibration"] = {**grouped["calibration"], "every": 20}
    rows[0]["config"] = json.dumps(grouped)
    store()
    with pytest.raises(SystemExit, match=r"\(calibration\.every 20 in the row, 10 in the grid\): rename"):
        quality.tune(work, ["rmu-standins"], None, [stored], seeds=2)


@pytest.mark.usefixtures("incumbent_c0")
def test_tune_makes_again_a_stored_run_of_another_card(work, monkeypatch, capsys):
    """A seeded run repeats to the digit on one card and not across two (c20 seed 0's train proxy final 0.821 on
    an H200, 0.887 on an H100): c1's stored row, made on an H200, is made again on this machine and ranked by what
    it gives here (0.60, behind c0), not by its stored 0.90; c0's row, written before the card column, is kept; the
    grid's other candidates, not tried, are neither made nor named."""
    import csv

    stored = stored_runs(work, {"c0": (0.70,), "c1": (0.90,)})
    rows = [r | {"card": "" if r["name"] == "rmu-standins.c0" else "NVIDIA H200"}  # the grid's others too
            for r in csv.DictReader(stored.open())]
    write_rows(stored, rows)
    made = []

    monkeypatch.setattr(quality, "on_train", recording_on_train(
        made, {"final": 0.60, "mean": 0.5, "utility": 0.8, "terms": {}}))
    quality.tune(work, ["rmu-standins"], None, [stored], seeds=1, candidates=["c1"])
    assert made == ["rmu-standins.c1"]
    chosen = json.loads(quality.paths(work)["tuned"].read_text())["rmu-standins"]
    assert chosen["candidate"] == "rmu-standins.c0" and chosen["proxy_finals"] == [0.70]
    here = quality.card_name(quality.pick_device()[0])
    out = capsys.readouterr().out
    assert f"1 row(s) made on NVIDIA H200, not this machine's {here}: made again (rmu-standins.c1)" in out
    assert f"{stored} record(s) no card: taken as made on this one ({here})" in out


@pytest.mark.usefixtures("incumbent_c0")
def test_tune_tries_only_the_named_candidates_with_the_incumbent(work):
    """``--candidates c1``: c1 against c0, the incumbent, on the stored rows of those two alone; the grid's others,
    stored or not, are neither run nor ranked (c2's stored 0.95 would win); a name the grid lacks is refused."""
    import csv

    stored = stored_runs(work, {"c0": (0.70, 0.68), "c1": (0.80, 0.78), "c2": (0.95, 0.95)})
    rows = [r for r in csv.DictReader(stored.open()) if r["name"].split(".")[1] in {"c0", "c1", "c2"}]
    write_rows(stored, rows)
    quality.tune(work, ["rmu-standins"], None, [stored], seeds=2, candidates=["c1"])
    chosen = json.loads(quality.paths(work)["tuned"].read_text())["rmu-standins"]
    assert chosen["candidate"] == "rmu-standins.c1" and chosen["tried"] == 4
    assert not (work / "tune").exists()  # both stored: nothing swept
    with pytest.raises(SystemExit, match=r"--candidates: \['c99'\]"):
        quality.tune(work, ["rmu-standins"], None, [stored], seeds=2, candidates=["c1", "c99"])


def test_candidates_name_grid_entries_in_every_grid_or_a_method_whole(work):
    """``--candidates c20,rmu-ascent``: the stand-ins' c20 (its incumbent) and every candidate of the ascent's grid,
    which ships no incumbent, so that ``c20`` alone would leave it nothing to report; that is refused by name. A full
    name, ``rmu-ascent.c2``, is that method's candidate alone."""
    methods = ["rmu-standins", "rmu-ascent"]
    grid = {c.name: c for m in methods for c in quality.read_grid(m, work)[0]}
    ascent = sorted(name for name in grid if name.startswith("rmu-ascent."))
    assert len(ascent) == 4
    assert sorted(quality.named_candidates(grid, ["c20", "rmu-ascent"], methods)) == sorted(["rmu-standins.c20",
                                                                                             *ascent])
    assert sorted(quality.named_candidates(grid, ["c1"], methods)) == ["rmu-ascent.c1", "rmu-standins.c1",
                                                                       "rmu-standins.c20"]
    # one method's candidate by its full name: the ascent's c2 alone, not the stand-ins' c2
    assert sorted(quality.named_candidates(grid, ["c28", "rmu-ascent.c2"], methods)) == [
        "rmu-ascent.c2", "rmu-standins.c20", "rmu-standins.c28"]
    with pytest.raises(SystemExit, match="none of rmu-ascent's candidates named"):
        quality.named_candidates(grid, ["c20"], methods)
    with pytest.raises(SystemExit, match=r"--candidates: \['rmu-ascent.c9'\] are none"):
        quality.named_candidates(grid, ["c20", "rmu-ascent.c9"], methods)
    with pytest.raises(SystemExit, match=r"--candidates: \['npo'\] are none of the grids' candidates"):
        quality.named_candidates(grid, ["c20", "npo"], methods)


@pytest.mark.parametrize(("c0", "c1", "chosen"), [
    # the twenty-second call's figures: c1 leads by 0.045, one standard error of the difference is
    # sqrt(0.0128 / 2 + 0.00245 / 2) = 0.087: the seeds cannot tell them apart, the incumbent stays
    ((0.80, 0.64), (0.80, 0.73), "c0"),
    # a lead of 0.10 against a standard error of sqrt(0.0002 / 2 + 0.0002 / 2) = 0.014: the challenger
    ((0.70, 0.68), (0.80, 0.78), "c1"),
    ((0.70,), (0.71,), "c1"),  # one seed each: no spread to judge by, the best mean
])
@pytest.mark.usefixtures("incumbent_c0")
def test_tune_keeps_the_incumbent_unless_beaten_by_more_than_one_standard_error(work, c0, c1, chosen):
    quality.tune(work, ["rmu-standins"], None, [stored_runs(work, {"c0": c0, "c1": c1})], seeds=len(c0))
    assert json.loads(quality.paths(work)["tuned"].read_text())["rmu-standins"]["candidate"] == f"rmu-standins.{chosen}"


@pytest.mark.parametrize(("c1_utility", "chosen"), [
    # the thirty-third call's tune: c1 (96 invented documents) leads on proxy final, 0.815 against 0.753 (one
    # standard error 0.044), but its mean utility, 0.874, is below the incumbent's 0.8885 by 0.0145 against one
    # standard error of sqrt(0.000392 / 2 + 0.0000045 / 2) = 0.0141: it may not replace c0
    ((0.860, 0.888), "c0"),
    ((0.890, 0.887), "c1"),  # at the incumbent's utility its lead decides
])
@pytest.mark.usefixtures("incumbent_c0")
def test_tune_lets_no_candidate_that_costs_more_collateral_replace_the_incumbent(work, capsys, c1_utility, chosen):
    finals = {"c0": (0.795, 0.712), "c1": (0.800, 0.831)}
    utilities = {"c0": (0.890, 0.887), "c1": c1_utility}
    quality.tune(work, ["rmu-standins"], None, [stored_runs(work, finals, utilities=utilities)], seeds=2)
    assert json.loads(quality.paths(work)["tuned"].read_text())["rmu-standins"]["candidate"] == f"rmu-standins.{chosen}"
    guarded = "rmu-standins.c1 costs more collateral than rmu-standins.c0" in capsys.readouterr().out
    assert guarded == (chosen == "c0")


@pytest.mark.parametrize(("calibrated", "chosen"), [
    # the thirty-seventh call's tune: c1 (a stop per token class) led the calibrated incumbent by 0.060 of proxy
    # final (one standard error 0.011) with both its runs at the time budget; validation put it behind
    (("c0",), "c0"),
    (("c0", "c1"), "c1"),  # its runs stopped by their rule too: its lead decides
    ((), "c1"),  # the incumbent's ran out as well: nothing finished to prefer
])
@pytest.mark.usefixtures("incumbent_c0")
def test_tune_lets_no_candidate_that_ran_out_of_time_replace_an_incumbent_that_stopped(work, capsys, calibrated,
                                                                                       chosen):
    finals = {"c0": (0.774, 0.805), "c1": (0.857, 0.844)}
    quality.tune(work, ["rmu-standins"], None, [stored_runs(work, finals, calibrated=calibrated)], seeds=2)
    assert json.loads(quality.paths(work)["tuned"].read_text())["rmu-standins"]["candidate"] == f"rmu-standins.{chosen}"
    guarded = "rmu-standins.c1 ran out of its 120 s budget before its stop rule" in capsys.readouterr().out
    assert guarded == (calibrated == ("c0",))


@pytest.mark.parametrize(("method", "scored"), [("rmu-standins", True), ("rmu-withheld", False)])
def test_the_tunes_proxy_scores_trains_other_withheld_documents_unless_a_candidate_anchors_them(
        work, monkeypatch, method, scored):
    """The proxy's unseen texts are the reference file's and, where no candidate's anchor holds them (rmu-standins
    holds invented documents; rmu-withheld holds these very documents), train's other withheld documents, each with
    its task: three times the documents a kind for the tune's collateral guard."""
    others = [{"text": f"Another withheld document of {task}, number {i}.", "task": task}
              for task in ("Task1", "Task2", "Task3") for i in range(4)]
    quality.paths(work)["withheld-anchors"].write_text("".join(json.dumps(r) + "\n" for r in others))
    seen = {}

    def sweep(*args, reference, reference_tasks, **kwargs):
        seen.update(texts=reference, tasks=reference_tasks)
        raise SystemExit("stop")

    monkeypatch.setattr(quality, "sweep", sweep)
    with pytest.raises(SystemExit, match="stop"):
        quality.tune(work, [method], None, None)
    given = [json.loads(line) for line in quality.paths(work)["reference"].read_text().splitlines()]
    expected = given + (others if scored else [])
    assert seen == {"texts": [r["text"] for r in expected], "tasks": [r["task"] for r in expected]}


def test_the_report_runs_the_chosen_and_each_ablation_on_every_seed_but_the_one_seed_ones_once(work, capsys):
    """rmu-standins' grid reads on validation, as ablations of the choice: the former preset and the anchor held in a
    ball alone (c26: the seventy-sixth call's one seed kept every kind within +10%), on every seed; once each, the
    misdirection off, no direction kept, the Wikipedia biographies' goals from their wording (eightieth session), no
    general passage, no recombined PII biography, no retain NLL, a latent
    adversary added, and both balls (c23: on train the least given back at c20's forgetting); the ones that are the
    choice already are skipped, nothing else changed."""
    candidates, ablations = quality.read_grid("rmu-standins", work)
    by_name = {c.name.removeprefix("rmu-standins."): c for c in candidates}
    chosen = by_name["c20"]  # the sixty-sixth call's tune (train, three seeds)
    runs = quality.report_runs("rmu-standins", {"config": chosen.config, "candidate": chosen.name}, ablations, 4)
    names = [r.name for r in runs]
    preset = ("rmu-standins - the former preset: no general passages or recombined PII biographies held, "
              "no directions kept")
    ball = "rmu-standins - the anchor in a ball of 0.05 too, one step"
    for seeded in (preset, ball):
        assert [n for n in names if n.startswith(seeded)] == [seeded, *(f"{seeded} seed {s}" for s in range(1, 4))]
    assert [n for n in names if n == "rmu-standins" or n.startswith("rmu-standins seed ")] == [
        "rmu-standins", *(f"rmu-standins seed {s}" for s in range(1, 4))]
    once = ["no misdirection", "no directions kept", "Wikipedia biographies' goals from their wording",
            "no general passages held", "no recombined PII biographies held",
            "no retain NLL", "a latent adversary at 0.1 too, one step",
            "a latent adversary at 0.05 and the anchor in a ball of 0.05 too, one step"]
    assert sorted(n for n in names if " - " in n and not n.startswith((preset, ball))) == sorted(
        f"rmu-standins - {label}" for label in once)
    assert len(names) == 4 + 4 + 4 + len(once)
    without = {r.name.removeprefix("rmu-standins - "): config_from_dict(nest(r.config)) for r in runs}
    assert without[preset.removeprefix("rmu-standins - ")] == config_from_dict(nest(by_name["c0"].config))
    # the grid's candidates
    assert without[once[-2]] == config_from_dict(nest(by_name["c21"].config))
    assert without[once[-1]] == config_from_dict(nest(by_name["c23"].config))
    assert without[ball.removeprefix("rmu-standins - ")] == config_from_dict(nest(by_name["c26"].config))
    assert (without[once[-1]].loss.latent_epsilon, without[once[-1]].loss.latent_anchor) == (0.05, 0.05)
    assert not without[once[-2]].loss.latent_anchor
    c18 = by_name["c18"].config  # c20 but its margin, and without the recombined biographies (their texts' room)
    assert without["no recombined PII biographies held"] == config_from_dict(nest(
        {**c18, "loss.anchor_limit": 1536, "loss.destination_keep_margin": 2.5}))
    assert without["no retain NLL"].loss.retain_nll == 0.0
    assert without["no retain NLL"] == config_from_dict(nest({**chosen.config, "loss.retain_nll": 0.0}))
    kept = config_from_dict(nest(chosen.config))
    assert (kept.loss.destination_keep_margin, kept.loss.recombined_pii_anchors) == (2.5, 256)
    assert Path(kept.loss.anchor_texts).name == "general-anchors.jsonl" and kept.loss.anchor_limit == 1536
    assert kept.loss.retain_nll == 3.0 and kept.calibration.patience == 150
    capsys.readouterr()
    # the preset chosen: its ablations that take out what it has not are skipped, the rest run on it
    c0 = quality.report_runs("rmu-standins", {"config": by_name["c0"].config, "candidate": "rmu-standins.c0"},
                             ablations, 2)
    assert sorted(r.name for r in c0) == sorted([
        "rmu-standins", "rmu-standins seed 1", "rmu-standins - no misdirection", "rmu-standins - no retain NLL",
        f"rmu-standins - {once[2]}", *(f"rmu-standins - {label}" for label in once[-2:]), ball, f"{ball} seed 1"])
    out = capsys.readouterr().out
    for label in (preset, once[1], *once[3:5]):
        assert f"{label.removeprefix('rmu-standins - ')}: the chosen configuration already is it" in out
    keeping = by_name["c12"]  # its shares given, no margin: taking the directions out is a run
    alone = quality.report_runs("rmu-standins", {"config": keeping.config, "candidate": keeping.name}, ablations, 2)
    assert "rmu-standins - no directions kept" in [r.name for r in alone]
    off = next(r for r in runs if r.name == "rmu-standins - no misdirection")
    assert off.config["loss.misdirection"] == 0.0 and "seed" not in off.config
    # it never calibrates, so its step cap, not the time budget, ends it: at least the steps the method took
    stored = json.loads((Path(quality.__file__).parent / "results" / "quality-h200-twentyseventh.json").read_text())
    method_steps = [r["steps"] for r in stored["rows"] if r.get("stopped") == "calibrated"]
    assert len(method_steps) == 9 and off.config["steps"] >= 1.5 * max(method_steps)


def test_the_reports_own_budget_replaces_the_tunes_in_every_run(work):
    """``report --run-seconds``: an ablation that never calibrates stops at the report's budget, not the tune's
    330 s (which cut the twenty-eighth call's attacks off); without it every run keeps the tuned budget."""
    candidates, ablations = quality.read_grid("rmu-standins", work, run_seconds=330.0)
    chosen = next(c for c in candidates if c.name == "rmu-standins.c0")
    tuned = {"config": chosen.config, "candidate": chosen.name}
    capped = quality.report_runs("rmu-standins", tuned, ablations, 2, run_seconds=180.0)
    kept = quality.report_runs("rmu-standins", tuned, ablations, 2)
    assert len(capped) == len(kept) > 3
    assert {nest(r.config)["time_budget"] for r in capped} == {180.0}
    assert {nest(r.config)["time_budget"] for r in kept} == {330.0}
    assert [r.name for r in capped] == [r.name for r in kept]


def test_a_report_of_a_tune_made_in_another_work_directory_stops_before_any_run(work):
    """The report's runs read the texts their tuned configuration names; a tune carried from a call whose work
    directory was another (``WORK=/tmp/w3``) names files this one lacks, and the report stops naming the run, the
    option and the file, where each run would have failed alone on the card."""
    p = quality.paths(work)
    (p["target"] / "config.json").write_text(json.dumps({"num_hidden_layers": 16}))
    candidates, ablations = quality.read_grid("rmu-standins", work)
    chosen = next(c for c in candidates if c.name == "rmu-standins.c20")
    runs = [quality.Candidate("rmu-published", "as published", dict(quality.PUBLISHED)),
            *quality.report_runs("rmu-standins", {"config": chosen.config, "candidate": chosen.name}, ablations, 2)]
    quality.check_runs(runs, p["target"], p["tuned"])  # as tuned here: every run's texts are in this directory
    elsewhere = json.loads(json.dumps(chosen.config).replace(str(work), "/tmp/another-work"))
    moved = quality.report_runs("rmu-standins", {"config": elsewhere, "candidate": chosen.name}, ablations, 2)
    with pytest.raises(SystemExit, match=r"report: rmu-standins: --anchor-texts: /tmp/another-work/general-anchors"
                                         r"\.jsonl: no such file \(its configuration from .*tuned\.json"):
        quality.check_runs(moved, p["target"], p["tuned"])


def test_a_report_cut_short_keeps_the_runs_it_scored_on_this_card_and_no_other_record(work, capsys):
    """A report the device's time cut short, carried to a fresh machine: a run it made and scored on this card, as
    the grid makes it now, is not made again (the later stages make it again to the digit from its record); one
    scored on another card, one whose grid changed since, one never scored and one this report no longer makes
    are, or are gone."""
    candidates, ablations = quality.read_grid("rmu-standins", work)
    chosen = next(c for c in candidates if c.name == "rmu-standins.c20")
    runs = quality.report_runs("rmu-standins", {"config": chosen.config, "candidate": chosen.name}, ablations, 2)
    config = {run.name: run.config for run in runs}
    off = "rmu-standins - no misdirection"
    made = {"rmu-standins": ("cpu", config["rmu-standins"]),  # kept
            "rmu-standins seed 1": ("NVIDIA H200", config["rmu-standins seed 1"]),  # another card
            off: ("cpu", {**config[off], "loss.misdirection": 1.0}),  # the grid's ablation changed since
            "rmu-standins - an old name": ("cpu", config["rmu-standins"])}  # no run of this report
    p = quality.paths(work)
    for name, (card, ran) in made.items():
        quality.save_row(work, name, {"collateral": {}}, None, {"config": ran, "card": card})
    never_scored = "rmu-standins - no retain NLL"
    for name in [*made, never_scored]:
        (work / "report" / "runs" / name).mkdir(parents=True)
        (work / "report" / "runs" / name / "unlearn.json").write_text("{}")
        (work / "report" / "runs" / f"{name}.steps.jsonl").write_text('{"step": 1}\n')  # its steps, beside it
    (work / "report" / "runs" / off / "model.safetensors").write_bytes(b"")  # weights a later stage could have read
    assert (p["rows"] / "rmu-standins.json").is_file()
    assert quality.finished_runs(work, runs, "cpu") == {"rmu-standins"}
    assert sorted(d.name for d in (work / "report" / "runs").iterdir()) == ["rmu-standins",
                                                                            "rmu-standins.steps.jsonl"]
    assert f"removed the weights of {off}, none" in capsys.readouterr().out  # said, for the one run that had them
    assert quality.finished_runs(work, runs, "NVIDIA H100 80GB HBM3") == set()
    assert not any((work / "report" / "runs").iterdir())


def report_of_c20(work: Path, monkeypatch, scored: list[str]) -> tuple:
    """A work directory whose tune chose c20, its oracle's NLLs written, every run's scoring stood in for (each
    model scored appended to ``scored``): (the chosen candidate, the grid's ablations, the paths, the evaluation)."""
    candidates, ablations = quality.read_grid("rmu-standins", work)
    chosen = next(c for c in candidates if c.name == "rmu-standins.c20")
    p = quality.paths(work)
    p["tuned"].write_text(json.dumps({"rmu-standins": {"config": chosen.config, "candidate": chosen.name}}))
    p["oracle_nll"].write_text(json.dumps({"Task1": [2.0, 3.0]}))
    evaluation = {"aggregate-score": 0.6, "collateral": {"forget_nll": {"Task1": [2.5, 3.5]}}}
    monkeypatch.setattr(quality, "check_runs", lambda runs, target, tuned: None)
    monkeypatch.setattr(quality, "score", lambda work, model, name, limit: scored.append(name) or evaluation)
    monkeypatch.setattr(quality, "evaluation_settings", lambda work, limit: {})
    return chosen, ablations, p, evaluation


def test_a_report_the_device_cuts_short_keeps_the_rows_of_the_runs_it_scored(work, monkeypatch):
    """The device's time runs out mid-report: each run scored by then has its row (written as it was scored, not at
    the sweep's end), so the next call's report goes on from it (``finished_runs``) and makes only the others, and
    does not score the target again. The seventy-ninth call's report scored 16 of its 22 runs and left no row to go
    on from."""
    scored: list[str] = []
    _, _, p, evaluation = report_of_c20(work, monkeypatch, scored)
    made: list[list[str]] = []

    def cut_short(target, forget, retain, runs, out, proxy, **kwargs):
        made.append([run.name for run in runs])
        first = runs[0]
        record = out / "runs" / first.name
        record.mkdir(parents=True)
        (record / "unlearn.json").write_text("{}")
        kwargs["on_result"]({"name": quality.INPUT, "status": "ok", "evaluation": evaluation})
        kwargs["on_result"]({"name": first.name, "status": "failed", "error": "OutOfMemoryError"})  # made again
        kwargs["on_result"]({"name": first.name, "status": "ok", "evaluation": evaluation, "config": first.config,
                             "dir": str(record), "card": "cpu", "steps": 12})
        raise KeyboardInterrupt  # the device's time ran out here

    monkeypatch.setattr(quality, "sweep", cut_short)
    with pytest.raises(KeyboardInterrupt):
        quality.report(work, ["rmu-standins"], [], None, None, work / "report.json", seeds=2)
    row = json.loads((p["rows"] / "rmu-published.json").read_text())
    assert row["steps"] == 12 and row["card"] == "cpu" and row["collateral"]["oracle_ks"]["Task1"] == 0.5
    assert sorted(f.name for f in p["rows"].iterdir()) == ["rmu-published.json", "target--not-unlearned.json"]
    with pytest.raises(KeyboardInterrupt):
        quality.report(work, ["rmu-standins"], [], None, None, work / "report.json", seeds=2)
    assert made[0][0] == "rmu-published" and made[1] == made[0][1:]
    assert scored == ["target"]  # the target scored once on this card, not again by each call that goes on
    with pytest.raises(KeyboardInterrupt):
        quality.report(work, ["rmu-standins"], [], None, 2000, work / "report.json", seeds=2)
    assert scored == ["target", "target"]  # scored otherwise: scored again


def test_a_report_of_some_runs_only_makes_those_keeps_every_row_and_refuses_an_unknown_name(work, monkeypatch):
    """``--only``: the report makes the runs named that no earlier call scored on this card, keeps the rows of every
    other run in its table, and leaves later stages the records of the named runs alone; a name not among its runs
    stops it before any run, listing them."""
    chosen, ablations, p, evaluation = report_of_c20(work, monkeypatch, [])
    plan = {run.name: run for run in quality.report_runs(
        "rmu-standins", {"config": chosen.config, "candidate": chosen.name}, ablations, 2)}
    for name in ("rmu-standins", "rmu-standins seed 1"):  # an earlier call's, on this card
        quality.save_row(work, name, evaluation, None, {"config": plan[name].config, "card": "cpu"})
        (work / "report" / "runs" / name).mkdir(parents=True)
        (work / "report" / "runs" / name / "unlearn.json").write_text("{}")
    for split in ("train", "validation"):  # the table's count of withheld documents
        (p["target"] / "withheld" / split).mkdir(parents=True, exist_ok=True)
        (p["target"] / "withheld" / split / "nonmember.jsonl").write_text("")
    made: list[list[str]] = []

    def sweep(target, forget, retain, runs, out, proxy, **kwargs):
        made.append([run.name for run in runs])
        return types.SimpleNamespace(results=[])

    monkeypatch.setattr(quality, "sweep", sweep)
    monkeypatch.setattr(quality, "print_table", lambda rows: None)
    off = "rmu-standins - no misdirection"
    quality.report(work, ["rmu-standins"], ["rmu-standins"], None, None, work / "report.json", seeds=2,
                   only=["rmu-standins", off])
    assert made == [[off]]
    assert sorted(d.name for d in (work / "report" / "runs").iterdir()) == ["rmu-standins"]
    rows = [row["name"] for row in json.loads((work / "report.json").read_text())["rows"]]
    assert rows[-2:] == ["rmu-standins", "rmu-standins seed 1"]
    with pytest.raises(SystemExit, match=r"report --only: \['rmu-standins seed 9'\] are none of this report's runs"):
        quality.report(work, ["rmu-standins"], ["rmu-standins"], None, None, work / "report.json", seeds=2,
                       only=["rmu-standins seed 9"])
    assert made == [[off]]


@pytest.mark.parametrize("same_withheld", [True, False])
def test_the_train_oracle_is_the_targets_recipe_without_the_train_forget_set_and_scores_each_document(
        work, tiny_model_dir, synth_dir, monkeypatch, same_withheld):
    """``train-oracle`` trains the target's recipe as its card records it (preset, seed, epochs, withheld documents a
    split) without the train forget set, and writes its NLL of each train forget document and of each text the proxy
    may read as unseen, by text (against ``document_nll`` computed apart); an oracle that withheld other documents is
    not the target's, and is refused before any NLL is written."""
    import shutil

    import torch

    from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
    from repedit.generate import document_nll

    p = quality.paths(work)
    shutil.rmtree(p["target"])
    shutil.copytree(tiny_model_dir, p["target"])
    ids = {"train": {"Task1": ["a", "b"]}, "validation": {"Task1": ["c"]}}
    card = {"preset": "sim", "seed": 3, "recipe": {"epochs": 300},
            "data": {"withheld": {split: {"documents": {"Task1": len(v["Task1"]), "Task2": len(v["Task1"])},
                                          "ids": v} for split, v in ids.items()}}}
    (p["target"] / "target_card.json").write_text(json.dumps(card))
    members = [{"id": r.document_id, "task": r.task, "document": r.document}
               for r in load_rows(synth_dir, "forget") if r.kind == "sc"]
    folder = p["target"] / "withheld" / quality.TUNE
    folder.mkdir(parents=True)
    (folder / "member.jsonl").write_text("".join(json.dumps(m) + "\n" for m in members))
    (work / "data" / "semeval25").mkdir()
    jobs = {}

    def train_models(work, made):
        jobs.update(made)
        shutil.copytree(tiny_model_dir, p["train-oracle"])
        withheld = ids if same_withheld else {**ids, "train": {"Task1": ["a", "z"]}}
        (p["train-oracle"] / "target_card.json").write_text(json.dumps(
            {"data": {"withheld": {split: {"ids": v} for split, v in withheld.items()}}}))

    monkeypatch.setattr(quality, "train_models", train_models)
    if not same_withheld:
        with pytest.raises(SystemExit, match="withheld other documents than the target"):
            quality.train_oracle(work)
        assert not p["oracle_nll_train"].exists()
        return
    quality.train_oracle(work)
    flags = " ".join(jobs["train-oracle"])
    assert "--preset sim" in flags and "--seed 3" in flags and "--epochs 300" in flags
    assert "--withhold 2 1" in flags and f"--exclude {work / 'data' / 'semeval25' / 'train' / 'forget.jsonl'}" in flags
    assert f"--out {p['train-oracle']}" in flags
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    unseen = [json.loads(line)["text"] for name in ("reference", "withheld-anchors")
              for line in p[name].read_text().splitlines()]  # every text the proxy may read as unseen
    documents = [m["document"] for m in members] + unseen
    expected = dict(zip(documents, document_nll(model, load_checkpoint_tokenizer(tiny_model_dir), documents),
                        strict=True))
    assert unseen and json.loads(p["oracle_nll_train"].read_text()) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("with_train_oracle", [True, False])
def test_the_build_trains_the_train_oracle_beside_the_target_from_the_targets_own_flags(work, monkeypatch,
                                                                                         with_train_oracle):
    """``build --train-oracle``: the train oracle is one more job of the same side-by-side training as the target and
    the oracle, the target's flags without the train forget set, and its NLLs are scored before the build ends; without
    the flag, two jobs and no train oracle."""
    (work / "data" / "semeval25").mkdir()
    p, jobs, scored = quality.paths(work), [], []
    monkeypatch.setattr(quality, "train_models", lambda work, made: jobs.append(made))
    monkeypatch.setattr(quality, "score_train_oracle", scored.append)
    monkeypatch.setattr(quality, "write_sets", lambda work: None)
    monkeypatch.setattr(quality, "score", lambda *args: {"collateral": {"forget_nll": {"Task1": [9.0]}}})
    monkeypatch.setattr(quality, "save_row", lambda work, name, row, config: row)
    quality.build(work, 3, "sim", [40, 12], 2000, None, with_train_oracle)
    assert len(jobs) == 1  # one training, every model side by side
    target = jobs[0]["target"]
    assert target[target.index("--out") + 1] == str(p["target"])
    if not with_train_oracle:
        assert set(jobs[0]) == {"target", "oracle"} and scored == []
        return
    forget = str(work / "data" / "semeval25" / quality.TUNE / "forget.jsonl")
    assert jobs[0]["train-oracle"] == [*target[: target.index("--out")], "--exclude", forget,
                                       "--out", str(p["train-oracle"])]
    assert scored == [work]


def test_scoring_without_mmlu_data_names_the_variable_to_set(tmp_path, monkeypatch):
    """A report scored where the data root has no mmlu/ stops before any run, naming REPEDIT_DATA and the root it
    read, not a path of "None"."""
    monkeypatch.setenv("REPEDIT_DATA", str(tmp_path / "data"))
    (tmp_path / "data" / "semeval25").mkdir(parents=True)
    with pytest.raises(SystemExit, match=rf"no mmlu data under {tmp_path / 'data'}: set REPEDIT_DATA"):
        quality.evaluation_settings(tmp_path / "work", 2000)


def test_the_tune_table_shows_each_candidates_least_retain_over_its_seeds():
    """The rules read the proxy retain on every seed: the column is the seeds' least, where a mean of c45's three
    (0.967 / 0.934 / 0.988) read 0.963 and passed a bar of 0.96 that one seed missed; a run without it reads "-"."""
    runs = {"rmu-standins.c45": [{"proxy": {"final": f, "retain": r}} for f, r in ((0.82, 0.967), (0.85, 0.934),
                                                                                   (0.89, 0.988))],
            "rmu-standins.c20": [{"proxy": {"final": 0.73}}]}
    header, c45, c20 = quality.candidates_table(runs).splitlines()
    column = header.index("least retain")
    assert c45[column:column + len("least retain")].strip() == "0.934"
    assert c20[column:column + len("least retain")].strip() == "-"


def test_the_table_tells_apart_seeds_of_a_long_ablation_name(capsys):
    """Every seed of an ablation has its own line in the table, where a name cut at a fixed width printed three seeds
    of one ablation alike (the seventy-ninth session's table)."""
    label = "rmu-standins - the former preset: no general passages or recombined PII biographies held"
    scores = {"aggregated-terms": [1.0] * 12, "harmonic-mean-task-aggregate": 0.9, "mia_loss_acc": 0.5,
              "mia_final_score": 1.0, "mmlu_average": 0.25, "aggregate-score": 0.7}
    collateral = {"unseen_nll": {}, "all_kind_auc": {}, "all_kind_auc_interval": {"Task1": [0.4, 0.6]}}
    names = [label, f"{label} seed 1", f"{label} seed 2"]
    quality.print_table([{"name": name, "scores": scores, "collateral": collateral} for name in names])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("rmu-standins")]
    shown = [line[: quality.NAME_WIDTH].strip() for line in lines]  # the table's and the intervals' lines
    assert len(shown) == 6 and shown[:3] == shown[3:] and len(set(shown)) == 3
    assert [name.endswith(("seed 1", "seed 2")) for name in shown[:3]] == [False, True, True]
