"""bench/relearn_attackers.py's routes: each one trains exactly the part of the model it names, and a tied
embedding matrix, which is the head too, trains in neither the route below the edit nor the one above it."""

import re
import sys
from pathlib import Path

import pytest
from transformers import OlmoConfig, OlmoForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import relearn_attackers  # noqa: E402


def parameter_names(tied: bool) -> list[str]:
    config = OlmoConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=6,
                        num_attention_heads=2, tie_word_embeddings=tied)
    return [name for name, _ in OlmoForCausalLM(config).named_parameters()]


def expected_part(name: str, edited: tuple[int, ...]) -> str:
    """Where a parameter lies, read from its name by hand: below, edited (MLP or not), above, or the embeddings."""
    if name.startswith("model.embed_tokens."):
        return "embeddings"
    if name.startswith(("model.norm.", "lm_head.")):
        return "above"
    match = re.match(r"model\.layers\.(\d+)\.(\w+)\.", name)
    assert match, name
    layer = int(match.group(1))
    if layer < min(edited):
        return "below"
    if layer > max(edited):
        return "above"
    return "edited mlp" if match.group(2) == "mlp" else "edited"


@pytest.mark.parametrize("tied", [False, True])
def test_each_route_trains_the_part_it_names_and_a_tied_embedding_trains_only_with_every_weight(tied):
    edited = (2, 3, 4)
    routes = relearn_attackers.routes(edited, 6, tied)
    assert list(routes) == ["every weight", "below: layers 0-1" if tied else "below: embeddings, layers 0-1",
                            "the edited layers 2-4", "the edited MLPs alone",
                            "above: layer 5, norm" if tied else "above: layer 5, norm, head"]
    every, below, layers, mlps, above = routes.values()
    names = parameter_names(tied)
    assert ("lm_head.weight" in names) is not tied  # a tied head is the embedding matrix, listed once
    for name in names:
        part = expected_part(name, edited)
        assert every(name)
        assert below(name) == (part == "below" or (part == "embeddings" and not tied)), name
        assert layers(name) == part.startswith("edited"), name
        assert mlps(name) == (part == "edited mlp"), name
        assert above(name) == (part == "above"), name
