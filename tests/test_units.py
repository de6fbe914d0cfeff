"""--edit-units: the edit confined to the MLP units more active on forget tokens than on retain tokens."""

import pytest
import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer, load_tensors, weight_map
from repedit.data import collate, load_rows, training_examples
from repedit.rmu import RMUConfig
from repedit.unlearn import unlearn

LAYERS = (2, 3, 4)
# Every row of each set in the one batch a step takes, so the run reads the units' activity on all of them.
EDIT = {"layers": LAYERS, "params": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), "steps": 4, "batch_size": 64,
        "max_length": 64, "adaptive": 5.0, "loss.alpha": 100.0, "lr": 1e-2, "edit_units": 0.25}


def units_by_hand(model_dir, synth_dir, share: float) -> dict[int, set[int]]:
    """The oracle: each layer's MLP activations act(gate(x)) * up(x), taken from its input in a full forward pass of
    the forget rows and of the retain rows, scored as the docstring of ``repedit.units`` says, the top share kept."""
    model = load_causal_lm(model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(model_dir)
    activity: dict[str, dict[int, list[torch.Tensor]]] = {"forget": {}, "retain": {}}
    for split in ("forget", "retain"):
        batch = collate(training_examples(load_rows(synth_dir, split), tokenizer, 64), tokenizer.pad_token_id)
        mask = batch["attention_mask"].bool()
        hooks = []
        for index in LAYERS:
            mlp = model.model.layers[index].mlp

            def read(_module, inputs, index=index, mlp=mlp, split=split, mask=mask):
                x = inputs[0].double()
                gate, up = mlp.gate_proj.weight.double(), mlp.up_proj.weight.double()
                activity[split].setdefault(index, []).append((mlp.act_fn(x @ gate.T) * (x @ up.T))[mask])

            hooks.append(mlp.register_forward_pre_hook(read))
        with torch.no_grad():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        for hook in hooks:
            hook.remove()
    chosen = {}
    for index in LAYERS:
        forget, retain = activity["forget"][index][0], activity["retain"][index][0]
        rms = torch.cat([forget, retain]).square().mean(dim=0).sqrt()
        scores = (forget.abs().mean(dim=0) - retain.abs().mean(dim=0)) / rms
        chosen[index] = set(scores.argsort(descending=True)[: round(share * scores.numel())].tolist())
    return chosen


def changed_units(before_dir, after_dir) -> dict[str, dict[int, set[int]]]:
    """Per projection and layer, the units whose weights differ: gate and up by row, down by column."""
    changed: dict[str, dict[int, set[int]]] = {}
    for name, shard in weight_map(before_dir).items():
        before = load_tensors(before_dir / shard, {name})[name]
        after = load_tensors(after_dir / shard, {name})[name]
        if torch.equal(before, after):
            continue
        assert ".mlp." in name, f"{name} changed"
        index, module = int(name.split(".")[2]), name.split(".")[4]
        differs = (before != after).any(dim=0 if module == "down_proj" else 1)
        changed.setdefault(module, {})[index] = set(differs.nonzero().flatten().tolist())
    return changed


def test_the_edit_changes_exactly_the_units_most_active_on_forget_tokens_against_retain_ones(
        tiny_model_dir, synth_dir, tmp_path):
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", RMUConfig.from_dict(EDIT),
                     progress=False)
    expected = units_by_hand(tiny_model_dir, synth_dir, 0.25)
    changed = changed_units(tiny_model_dir, result.output_dir)
    assert set(changed) == {"gate_proj", "up_proj", "down_proj"}
    for module in changed.values():  # every other unit's weights as they were, though AdamW decays weights
        assert module == expected
    assert all(len(units) == 32 for units in expected.values())  # a quarter of the 128 units a layer


def test_every_unit_may_change_without_the_option(tiny_model_dir, synth_dir, tmp_path):
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out",
                     RMUConfig.from_dict({**EDIT, "edit_units": None}), progress=False)
    changed = changed_units(tiny_model_dir, result.output_dir)
    assert all(len(units) == 128 for module in changed.values() for units in module.values())


@pytest.mark.parametrize("changes, message", [
    ({"edit_units": 0.0}, "--edit-units: 0.0: a share in (0, 1]"),
    ({"edit_units": 1.5}, "--edit-units: 1.5: a share in (0, 1]"),
    ({"params": ("mlp.down_proj", "self_attn.o_proj")}, "--params is mlp.down_proj,self_attn.o_proj"),
])
def test_a_share_outside_0_1_or_a_module_outside_the_mlp_is_refused_and_nothing_written(
        tiny_model_dir, synth_dir, tmp_path, changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", RMUConfig.from_dict({**EDIT, **changes}),
                progress=False)
    assert list(tmp_path.iterdir()) == []
