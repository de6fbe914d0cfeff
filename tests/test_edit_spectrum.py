"""bench/edit_spectrum.py: an edit's matrices cut by SVD, each cut scored as the target with that part of the change."""

import copy
import sys
from pathlib import Path

import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import TASKS, load_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from edit_spectrum import row, scores, spectrum_rows  # noqa: E402


def test_a_cut_scores_the_target_plus_exactly_the_directions_it_keeps(tiny_model_dir, synth_dir):
    """An edit of two directions in one matrix: without its top direction it scores as the model with only the other
    direction added, the top one alone as the model with only that one, and all of it as the edit."""
    target = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    name = "model.layers.2.mlp.down_proj.weight"
    weight = dict(target.named_parameters())[name]
    generator = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(weight.shape[0], 2, generator=generator))[0]
    v = torch.linalg.qr(torch.randn(weight.shape[1], 2, generator=generator))[0]
    parts = [3.0 * torch.outer(u[:, 0], v[:, 0]), 1.0 * torch.outer(u[:, 1], v[:, 1])]  # the top direction first

    def with_change(change: torch.Tensor):
        model = copy.deepcopy(target)
        with torch.no_grad():
            dict(model.named_parameters())[name].add_(change)
        return model

    rows = [r for r in load_rows(synth_dir, "forget") + load_rows(synth_dir, "retain") if r.kind == "sc"]
    sets = {"forget": [(r.document, r.task) for r in rows[: len(rows) // 2]],
            "withheld": [(r.document, r.task) for r in rows[len(rows) // 2 :]],
            "unseen": [(r.document, r.task) for r in rows[len(rows) // 2 :]]}
    assert {t for pairs in sets.values() for _, t in pairs} == set(TASKS)
    general = [r.document for r in rows[:4]]
    edit = with_change(parts[0] + parts[1])
    found = {r["name"]: r for r in spectrum_rows(target, edit, tokenizer, sets, general, [1])}
    assert list(found) == ["target", "edited", "without the top 1", "the top 1 alone"]
    assert found["edited"]["forget_nll"] != found["target"]["forget_nll"]  # the change moves the scores, and each
    assert found["without the top 1"]["forget_nll"] != found["the top 1 alone"]["forget_nll"]  # part its own way
    base = scores(target, tokenizer, sets, general)
    for cut, change in (("without the top 1", parts[1]), ("the top 1 alone", parts[0]), ("edited", sum(parts))):
        expected = row(cut, scores(with_change(change), tokenizer, sets, general), base)
        for key in ("forget_nll", "withheld_change", "unseen_change", "auc"):
            torch.testing.assert_close(torch.tensor(found[cut][key]), torch.tensor(expected[key]), rtol=1e-4,
                                       atol=1e-5)
    torch.testing.assert_close(dict(edit.named_parameters())[name], weight + parts[0] + parts[1])  # left as it came
