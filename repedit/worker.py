"""A sweep's worker: one configuration after another on one device, each scored by the proxy.

It keeps what configurations share loaded: the forget and retain rows, the proxy's row sample and
token ids, and the input model used for scoring, into which each run's rewritten shards are swapped
(and swapped back) instead of loading the output checkpoint. Each method run loads its own weights
from disk (RMU only layers 0..L), as ``repedit unlearn`` does.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer, load_tensors, read_config, weight_map
from repedit.methods import config_from_dict, run_method
from repedit.pool import describe
from repedit.proxy import ProxyConfig, ProxyScorer
from repedit.runtime import Budget, card_name, pick_device, read_sets


def worker_setup(model: Path, forget: str | Path, retain: str | Path, proxy: ProxyConfig,
                 reference: Sequence[str] | None, device: str, **more) -> dict:
    """What every worker is built from (``Worker``); sent to each worker process once."""
    return {"model": str(model), "forget": str(forget), "retain": str(retain), "proxy": asdict(proxy),
            "reference": list(reference) if reference else None, "device": device, **more}


def edited_shards(model_dir: Path, out: Path) -> list[str]:
    """Weight files of ``out`` that are not links to ``model_dir``'s: the ones a save rewrote."""
    return sorted(shard for shard in set(weight_map(out).values())
                  if not (model_dir / shard).exists() or not os.path.samefile(out / shard, model_dir / shard))


@torch.no_grad()
def load_shards(model: torch.nn.Module, directory: Path, shards: Sequence[str]) -> None:
    """Copy every tensor of ``shards`` (files in ``directory``) into the loaded ``model``, in place."""
    state = model.state_dict()
    for shard in shards:
        for name, tensor in load_tensors(directory / shard).items():
            if name not in state:
                raise ValueError(f"{directory / shard}: {name} is not a parameter of the loaded model")
            state[name].copy_(tensor)


class Worker:
    """One device's share of a sweep; ``setup`` names the model, the sets, the device and the proxy."""

    def __init__(self, setup: dict):
        from transformers.utils import logging

        logging.disable_progress_bar()  # one bar per weight load and worker would bury the results
        if setup.get("threads"):
            torch.set_num_threads(setup["threads"])
        self.model_dir = Path(setup["model"])
        self.device, self.dtype = pick_device(setup["device"], setup.get("dtype"))
        self.forget, self.retain = read_sets(setup["forget"], setup["retain"])
        self.num_layers = read_config(self.model_dir).num_hidden_layers
        self.scorer = ProxyScorer(load_checkpoint_tokenizer(self.model_dir), self.forget, self.retain,
                                  setup.get("reference"), ProxyConfig(**setup["proxy"]),
                                  setup.get("reference_tasks"), setup.get("oracle_nll"))
        self.model = load_causal_lm(self.model_dir, self.dtype, self.device)
        self.model.requires_grad_(False)
        self.reference_before = self.scorer.reference_nll(self.model)

    def run(self, task: dict) -> dict:
        """Train (unless this is the input task) and score one task; an error becomes the result."""
        result = {"name": task["name"], "label": task["label"], "config": task["config"], "dir": task["dir"],
                  "device": str(self.device), "card": card_name(self.device), "status": "ok", "error": None}
        started = time.monotonic()
        try:
            if task["config"] is None:
                result["proxy"], result["score_seconds"] = self._score()
            else:
                self._train_and_score(task, result)
        except Exception as error:
            result.update(status="failed", error=describe(error), traceback=traceback.format_exc())
        result["seconds"] = time.monotonic() - started
        return result

    def _score(self) -> tuple[dict, float]:
        started = time.monotonic()
        return self.scorer.score(self.model, self.reference_before), time.monotonic() - started

    def _train_and_score(self, task: dict, result: dict) -> None:
        config = config_from_dict(dict(task["config"]))
        config.validate(self.num_layers)
        if task.get("train_until") is not None:  # leave time to score before the sweep's deadline
            left = task["train_until"] - time.time()
            if left < 1:
                result.update(status="skipped", error="no time left before the deadline")
                return
            config.time_budget = min(config.time_budget or left, left)
        out = Path(task["dir"])
        out.parent.mkdir(parents=True, exist_ok=True)
        run = run_method(self.model_dir, self.forget, self.retain, out, config, self.device, self.dtype,
                         Budget(config.time_budget), task["steps"])
        shards = edited_shards(self.model_dir, out)
        try:
            load_shards(self.model, out, shards)
            result["proxy"], result["score_seconds"] = self._score()
        finally:  # the input model again, for the next task
            load_shards(self.model, self.model_dir, shards)
        result.update(steps=len(run.losses), stopped=run.stopped, train_seconds=run.timings.get("total"),
                      calibration=run.calibration)
        (out / "proxy.json").write_text(json.dumps(result, indent=2) + "\n")


class EvaluatingWorker(Worker):
    """A worker that also runs the official evaluation (``repedit.evaluate``) of each scored model.

    Kept apart from ``Worker`` so that the exported submission, which inlines ``Worker``, needs
    neither the evaluation's imports nor its data.
    """

    def __init__(self, setup: dict):
        super().__init__(setup)
        self.evaluation = setup.get("evaluate")

    def run(self, task: dict) -> dict:
        result = super().run(task)
        if self.evaluation and result["status"] == "ok":
            from repedit.evaluate import evaluate

            settings = self.evaluation
            try:
                scores = evaluate(result["dir"] or self.model_dir, settings["data"],
                                  Path(settings["out"]) / result["name"], mia_dir=settings.get("mia"),
                                  mmlu_dir=settings.get("mmlu"), mmlu_limit=settings.get("mmlu_limit"),
                                  device=str(self.device), withheld=settings.get("withheld"),
                                  general=settings.get("general"))
                result["score"] = scores["aggregate-score"]
                result["evaluation"] = {k: v for k, v in scores.items() if not k.endswith("-set")}
            except Exception as error:  # failed, so that a sweep runs it again with fewer beside it (the
                # seventy-sixth call's report lost its published row to an evaluation out of memory, left "ok")
                result.update(status="failed", error=f"evaluation failed: {describe(error)}")
        return result
