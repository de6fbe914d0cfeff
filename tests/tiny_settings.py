"""The RMU settings and texts that several test modules run the tiny target with, in one place: the fast loss-term
settings, the demo-like ones that forget by document, the method's test-scale recipe, and the texts they read."""

import json
import statistics

import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import load_rows, training_examples
from repedit.generate import document_nll
from repedit.step_cache import paired_batches
from repedit.synth import synthesize

FAST = {"layers": (2, 3, 4), "steps": 6, "batch_size": 4, "max_length": 64, "adaptive": 5.0, "loss.alpha": 100.0,
        "lr": 1e-3}
# Every MLP weight, whole completions misdirected, documents calibrated one by one: what takes the tiny
# target to the unseen level in a few hundred steps (the demo's settings).
BY_DOCUMENT = {**FAST, "params": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), "adaptive": 3.0, "lr": 3e-3,
               "loss.alpha": 10.0, "batch_size": 8, "max_length": 256, "loss.forget_tokens": "document"}


# The method at test scale: misdirection to each task's unseen mean, reference anchored, retain NLL kept.
METHOD_TEST = {**BY_DOCUMENT, "steps": 120, "calibration.every": 10, "loss.destination": "unseen",
               "loss.misdirection": 30.0, "loss.anchor": 10.0, "loss.retain_nll": 1.0}


def forget_and_retain_rows(model_dir, synth_dir, max_length: int):
    """The model, and 3 forget rows (documents 0, 1, 1) + 2 retain rows as one batch of token ids, with its forget
    row count."""
    model = load_causal_lm(model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(model_dir)
    rows = load_rows(synth_dir, "forget")[:3] + load_rows(synth_dir, "retain")[:2]
    examples = training_examples(rows, tokenizer, max_length)
    [(joint, n)] = paired_batches(examples[:3], examples[3:], 3, 1, tokenizer.pad_token_id, documents=[0, 1, 1])
    return model, joint, n


def tasked_reference(path, texts_and_tasks) -> str:
    """A reference file whose rows carry their task, as per-task calibration reads it."""
    path.write_text("".join(json.dumps({"text": t, "task": k}) + "\n" for t, k in texts_and_tasks))
    return str(path)


def method_texts(tiny_target, synth_dir, tmp_path):
    """What the method tests read: a tasked reference of unseen documents (another seed's retain set), that
    seed's forget documents as withheld unseen text, the target's forget and retain documents, and the mean
    document NLL of texts under a checkpoint."""
    unseen = synthesize(tmp_path / "unseen", seed=1, docs=4)
    reference = tasked_reference(tmp_path / "reference.jsonl", [(r.document, r.task) for r in
                                                                 load_rows(unseen, "retain") if r.kind == "sc"])
    withheld = [r.document for r in load_rows(unseen, "forget") if r.kind == "sc"]
    documents = [r.document for r in load_rows(synth_dir, "forget") if r.kind == "sc"]
    retained = [r.document for r in load_rows(synth_dir, "retain") if r.kind == "sc"]
    tokenizer = load_checkpoint_tokenizer(tiny_target)

    def mean_nll(model_dir, texts):
        return statistics.mean(document_nll(load_causal_lm(model_dir, torch.float32, "cpu"), tokenizer, texts))

    return reference, withheld, documents, retained, mean_nll
