import torch

from repedit.checkpoint import load_causal_lm
from repedit.layers import capture_outputs, hidden_of, run_layers, run_prefix, stop_after, with_hidden


def _inputs(vocab: int):
    torch.manual_seed(1)
    ids = torch.randint(2, vocab, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding in one row
    return {"input_ids": ids, "attention_mask": mask}


def test_hidden_of_handles_tuple_and_tensor_outputs():
    hidden = torch.randn(2, 3, 4)
    assert hidden_of(hidden) is hidden  # transformers >= 4.54: a tensor, never index batch element 0
    assert hidden_of((hidden, None)) is hidden  # before 4.54: a tuple
    assert isinstance(with_hidden((hidden, "cache"), hidden * 2), tuple)
    assert torch.equal(with_hidden(hidden, hidden * 2), hidden * 2)


def test_layer_output_is_output_hidden_states_plus_one(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    inputs = _inputs(model.config.vocab_size)
    reference = model(**inputs, output_hidden_states=True).hidden_states
    with capture_outputs(model, [0, 3, 5]) as hidden:
        model(**inputs)
    for index in (0, 3):
        torch.testing.assert_close(hidden[index], reference[index + 1])
    # transformers reports the last layer's entry after the final norm
    torch.testing.assert_close(model.model.norm(hidden[5]), reference[6])


def test_stop_after_still_captures_and_skips_upper_layers(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    inputs = _inputs(model.config.vocab_size)
    reference = model(**inputs, output_hidden_states=True).hidden_states
    calls = []
    handle = model.model.layers[4].register_forward_hook(lambda *_: calls.append(1))
    with stop_after(model, 2), capture_outputs(model, [2]) as hidden:
        model(**inputs)
    handle.remove()
    torch.testing.assert_close(hidden[2], reference[3])
    assert calls == []


def test_running_layers_on_a_cached_prefix_equals_the_full_forward(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    inputs = _inputs(model.config.vocab_size)
    reference = model(**inputs, output_hidden_states=True).hidden_states
    hidden, layer_kwargs = run_prefix(model, 2, **inputs)
    torch.testing.assert_close(hidden, reference[2])
    torch.testing.assert_close(run_layers(model, 2, 4, hidden, layer_kwargs), reference[5])
