"""The counterfactual destination: which tokens are swapped, for what, and the goals the forget term reads."""

import torch

from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer
from repedit.counterfactual import N, counterfactuals, novel_tokens, with_means
from repedit.data import IGNORE_INDEX, TASKS, Example, load_rows, training_examples
from repedit.rmu import RMUConfig, cache_prefix, layer_output, paired_batches, rmu_losses


def test_the_pool_is_each_tasks_unseen_tokens_in_bigrams_no_trained_sequence_has():
    trained = [[1, 2, 3, 4], [5, 6]]
    texts, tasks = [[1, 2, 9, 4], [5, 6, 7], [2, 3, 8]], ["Task1", "Task1", "Task3"]
    # (1, 2) trained; (2, 9), (9, 4) new; (5, 6) trained, (6, 7) new; (2, 3) trained, (3, 8) new
    assert novel_tokens(texts, tasks, trained) == {"Task1": [9, 4, 7], "Task3": [8]}


def test_only_particulars_are_swapped_each_for_a_pool_token_of_its_task_and_the_length_holds():
    a = Example([1, 2, 3, 4, 5, 6, 7], [IGNORE_INDEX, 2, 3, 4, 5, 6, 7])
    b = Example([1, 2, 3, 4, 8, 9, 7], [1, 2, 3, 4, 8, 9, 7])  # shares a's opening 4-gram (1, 2, 3, 4)
    pool = {"Task1": [100, 101], "Task2": [200]}
    swapped = counterfactuals([a], ["Task2"], [a, b], ["a", "b"], pool, seed=0)
    # 4-grams ending at positions 3..6: (1,2,3,4) shared; (2,3,4,5), (3,4,5,6), (4,5,6,7) a's alone
    assert N == 4 and [e.weights for e in swapped] == [[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]
    assert swapped[0].input_ids == [1, 2, 3, 4, 200, 200, 200] and swapped[0].labels == a.labels
    other = counterfactuals([a], ["Task3"], [a, b], ["a", "b"], pool, seed=1)  # no Task3 pool: every task's
    assert set(other[0].input_ids[4:]) <= {100, 101, 200}
    again = counterfactuals([a], ["Task3"], [a, b], ["a", "b"], pool, seed=1)
    assert again[0].input_ids == other[0].input_ids  # seeded


def test_goals_are_the_frozen_h_of_the_swapped_document_and_the_task_mean_before_a_particular(tiny_model_dir,
                                                                                             synth_dir):
    """Oracle: the full model's hidden states on each swapped document alone; the forget term then reads them."""
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    forget, retain = load_rows(synth_dir, "forget")[:3], load_rows(synth_dir, "retain")[:2]
    examples = training_examples(forget + retain, tokenizer, 64, whole_documents=True)
    pool = {t: list(range(300, 340)) for t in TASKS}
    swapped = counterfactuals(examples[:3], [r.task for r in forget], examples,
                              [r.document_id for r in forget + retain], pool, seed=0)
    flags = [e.weights for e in swapped]
    assert any(any(f) for f in flags)
    [(joint, n)] = paired_batches(swapped, examples[3:], 3, 1, tokenizer.pad_token_id,
                                  tasks=[TASKS.index(r.task) for r in forget])
    read = cache_prefix(model, joint, 2, n)
    means = torch.randn(len(TASKS), model.config.hidden_size)
    goals = with_means(layer_output(model, read, 2, 4)[:n], (read.weights * read.mask)[:n], read.tasks, means)
    for row, (example, weights, task) in enumerate(zip(swapped, flags, [r.task for r in forget], strict=True)):
        states = model(torch.tensor([example.input_ids]), output_hidden_states=True).hidden_states[5][0]
        for t in range(len(example.input_ids)):
            before_particular = t + 1 < len(weights) and weights[t + 1] == 1.0
            expected = means[TASKS.index(task)] if before_particular else states[t]
            torch.testing.assert_close(goals[row, t], expected, rtol=1e-4, atol=1e-4)

    real = cache_prefix(model, paired_batches(examples[:3], examples[3:], 3, 1, tokenizer.pad_token_id)[0][0], 2, n)
    hidden = layer_output(model, real, 2, 4)
    config = RMUConfig.from_dict({"layers": (2, 3, 4), "loss.forget_tokens": "document"})
    losses = rmu_losses(model, config, real, hidden[n:], torch.zeros(64), goals=goals)
    mask = torch.zeros_like(real.labels, dtype=torch.bool)[:n]
    mask[:, :-1] = real.labels[:n, 1:] != IGNORE_INDEX
    torch.testing.assert_close(losses["forget"], (hidden[:n] - goals).pow(2).mean(-1)[mask].mean())
