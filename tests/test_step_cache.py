import pytest
import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.data import load_rows, training_examples
from repedit.step_cache import cached_passes, paired_batches


def test_a_batch_is_cached_in_its_passes_with_its_retain_rows_own_goals_and_its_forget_rows_norm(tiny_model_dir,
                                                                                                   synth_dir):
    """Each pass enters layer 2 as the model computes it; its goals are the model's own output of layer 4 on each
    retain row alone (real tokens), held in their own memory, not a view that keeps the forget rows' alive; the norm
    sums are those of the forget rows' layer-4 outputs over their real tokens."""
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    forget = training_examples(load_rows(synth_dir, "forget")[:5], tokenizer, 96, whole_documents=True)
    retain = training_examples(load_rows(synth_dir, "retain")[:5], tokenizer, 96)
    [(batch, n)] = paired_batches(forget, retain, 5, 1, tokenizer.pad_token_id)
    cached, sums = cached_passes(model, batch, n, 2, 2, 4)

    def alone(row: int) -> tuple[torch.Tensor, torch.Tensor]:  # the row unpadded: layer 2's input, layer 4's output
        ids = batch["input_ids"][row, : int(batch["attention_mask"][row].sum())][None]
        with torch.no_grad():
            states = model(input_ids=ids, output_hidden_states=True).hidden_states
        return states[2][0], states[5][0]

    assert [p.forget_rows for p, _ in cached] == [3, 2] and sum(len(p.hidden) for p, _ in cached) == 10
    retain_rows = iter(range(n, 10))
    forget_rows = iter(range(n))
    norm_sum, tokens = 0.0, 0
    for prefix, goals in cached:
        assert goals.untyped_storage().nbytes() == goals.numel() * goals.element_size()
        assert len(goals) == len(prefix.hidden) - prefix.forget_rows
        for i in range(prefix.forget_rows):
            entering, output = alone(next(forget_rows))
            torch.testing.assert_close(prefix.hidden[i, : len(entering)], entering, rtol=1e-5, atol=1e-5)
            norm_sum, tokens = norm_sum + output.norm(dim=-1).sum().item(), tokens + len(output)
        for goal in goals:
            entering, output = alone(next(retain_rows))
            torch.testing.assert_close(goal[: len(output)], output, rtol=1e-5, atol=1e-5)
    assert sums[1].item() == tokens
    assert sums[0].item() == pytest.approx(norm_sum, rel=1e-5)


def test_paired_batches_cycle_the_shorter_set():
    from repedit.data import Example

    forget = [Example([i], [i]) for i in range(5)]
    retain = [Example([100 + i], [100 + i]) for i in range(2)]
    paired = paired_batches(forget, retain, batch_size=2, count=10, pad_token_id=0)
    assert [n for _, n in paired] == [2, 2, 1]
    assert [b["input_ids"][:, 0].tolist() for b, _ in paired] == [[0, 1, 100, 101], [2, 3, 100, 101], [4, 100, 101]]
    assert paired[0][0]["labels"][:2].tolist() == [[0], [1]]  # answers kept: forget_tokens="answer" reads them
    tagged = paired_batches(forget, retain, batch_size=2, count=10, pad_token_id=0, documents=[0, 0, 1, 2, 2])
    assert [b["documents"].tolist() for b, _ in tagged] == [[0, 0], [1, 2], [2]]  # the forget rows' only
    assert [b["retain_index"].tolist() for b, _ in paired] == [[0, 1]] * 3  # each retain row's place in its set
