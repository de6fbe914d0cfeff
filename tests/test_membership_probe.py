"""bench/membership_probe.py: per layer, how well a probe tells a target's forget documents from unseen ones on the
states that predict each token class."""

import json
import random
import sys
from pathlib import Path

import pytest
import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import load_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import membership_probe  # noqa: E402


def test_the_states_are_each_layers_output_at_the_token_before_each_flagged_one(tiny_model_dir, synth_dir):
    """Against the model's own hidden states (``output_hidden_states``: index l + 1 is decoder layer l's output; the
    last one is after the final norm, so it is left out), on documents of different lengths padded together."""
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu").eval()
    documents = [tokenizer(r.document)["input_ids"] for r in load_rows(synth_dir, "forget") if r.kind == "sc"][:5]
    assert len({len(d) for d in documents}) > 1

    def every_third(ids: list[int]) -> list[bool]:
        return [i % 3 == 0 for i in range(len(ids))]

    [(states, source)] = membership_probe.predicting_states(model, documents, {"third": every_third},
                                                           tokenizer.pad_token_id, batch_size=2).values()
    expected, owners = [], []
    with torch.no_grad():
        for k, ids in enumerate(documents):
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            positions = [i - 1 for i in range(3, len(ids), 3)]
            expected.append(torch.stack([h[0, positions] for h in hidden[1:-1]]))
            owners += [k] * len(positions)
    expected_states = torch.cat(expected, dim=1)
    assert states.shape[0] == len(model.model.layers)
    torch.testing.assert_close(states[:-1], expected_states, rtol=1e-4, atol=1e-4)
    assert source.tolist() == owners


def test_template_tokens_are_those_whose_bigram_two_training_documents_share():
    from repedit.data import Example
    from repedit.particulars import TokenClasses

    classes = TokenClasses.of([Example([5, 6, 7], [5, 6, 7]), Example([5, 6, 8], [5, 6, 8])], ["a", "b"])
    assert membership_probe.template_flags(classes)([9, 5, 6, 7, 6]) == [False, False, True, False, False]


@pytest.fixture
def unseen_file(tmp_path):
    def write(texts_by_task: dict[str, list[str]]) -> Path:
        path = tmp_path / "unseen.jsonl"
        path.write_text("".join(json.dumps({"document": t, "task": task}) + "\n"
                                for task, texts in texts_by_task.items() for t in texts))
        return path
    return write


def run(monkeypatch, tmp_path, target, sets, unseen) -> dict:
    out = tmp_path / "probe.json"
    monkeypatch.setattr(sys, "argv", ["membership_probe.py", "--target", str(target), "--sets", str(sets),
                                      "--unseen", str(unseen), "--out", str(out), "--tokens", "60", "--samples", "2"])
    membership_probe.main()
    return json.loads(out.read_text())


def test_the_probe_reads_chance_where_the_unseen_documents_are_the_forget_ones_and_plain_where_they_are_noise(
        tiny_target, synth_dir, tmp_path, monkeypatch, unseen_file):
    """The forget documents given again as unseen ones leave the probe nothing to read on their template tokens (the
    same states on both sides); strings of random letters, states far from any document's, it reads at every
    layer but the embedding-near first."""
    forget = {}
    for r in load_rows(synth_dir, "forget"):
        if r.kind == "sc":
            forget.setdefault(r.task, []).append(r.document)
    same = run(monkeypatch, tmp_path, tiny_target, synth_dir, unseen_file(forget))
    layers = len(load_causal_lm(tiny_target, torch.float32, "cpu").model.layers)
    for task in forget:
        result = same[f"{task} template: forget vs unseen"]
        assert len(result["accuracy"]) == layers and len(result["samples"]) == 2
        assert max(result["accuracy"]) <= 0.6
        assert result["documents"] == [len(forget[task]), len(forget[task])]
    draw = random.Random(0)
    noise = {task: [" ".join("".join(draw.choice("qxzjkvw") for _ in range(5)) for _ in range(60)) for _ in range(4)]
             for task in forget}
    plain = run(monkeypatch, tmp_path, tiny_target, synth_dir, unseen_file(noise))
    for task in forget:
        assert min(plain[f"{task} particulars: forget vs unseen"]["accuracy"][1:]) >= 0.9
    assert {name.split(": ")[1] for name in plain} == {"forget vs unseen", "forget vs retain", "retain vs unseen"}
