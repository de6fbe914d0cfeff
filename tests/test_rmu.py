import copy
import dataclasses
import itertools
import json
import math
import statistics

import pytest
import torch
from conftest import forgetting_step
from oracles import assert_complete_checkpoint, token_nll
from tiny_settings import BY_DOCUMENT, FAST, forget_and_retain_rows, tasked_reference

from repedit.calibration import unseen_texts
from repedit.checkpoint import load_causal_lm, load_checkpoint_tokenizer, load_tensors, weight_map
from repedit.cli import main as cli_main
from repedit.data import DataError, collate, load_rows, training_examples
from repedit.document_scores import cache_documents, document_batches, document_nlls
from repedit.generate import document_nll, document_nll_one
from repedit.layers import layer_inputs_for
from repedit.methods import config_from_dict
from repedit.retain_ahead import retain_nll_ahead
from repedit.rmu import (
    Loss,
    PrefixBatch,
    RMUConfig,
    answer_positions,
    cache_prefix,
    control_vector,
    final_hidden,
    layer_output,
    rmu_losses,
    row_nll,
    wmdp_losses,
)
from repedit.step_cache import paired_batches
from repedit.synth import synthesize
from repedit.unlearn import unlearn


@pytest.fixture
def reference(synth_dir):
    """Unseen documents to calibrate against: the synthetic set's MIA nonmembers."""
    return synth_dir / "mia_data" / "nonmember.jsonl"


def forget_and_retain_batch(model_dir, synth_dir, max_length: int):
    """``forget_and_retain_rows`` cached as the batch enters layer 2: what the loss-term tests below edit layers 2-4
    on."""
    model, joint, n = forget_and_retain_rows(model_dir, synth_dir, max_length)
    return model, cache_prefix(model, joint, 2, n), n


def test_control_vector_is_a_seeded_positive_unit_vector():
    u = control_vector(64, seed=3)
    assert torch.all(u >= 0) and torch.isclose(u.norm(), torch.tensor(1.0))
    assert torch.equal(u, control_vector(64, seed=3)) and not torch.equal(u, control_vector(64, seed=4))


def test_cached_prefix_step_equals_the_full_forward_reference(tiny_model_dir, synth_dir):
    """The fast path (prefix cached once, forget and retain rows in one pass through the edited layers
    only) computes the published loss and gradient."""
    config = RMUConfig(layers=(2, 3, 4), coeff=4.0, loss=Loss(alpha=50.0))
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir)
    frozen = copy.deepcopy(model)
    forget_examples = training_examples(load_rows(synth_dir, "forget"), tokenizer, 48)[:3]
    retain_examples = training_examples(load_rows(synth_dir, "retain"), tokenizer, 48)[5:9]
    forget = collate(forget_examples, tokenizer.pad_token_id)
    retain = collate(retain_examples, tokenizer.pad_token_id)
    assert (forget["attention_mask"] == 0).any()  # padding is present and must be ignored
    steering = config.coeff * control_vector(model.config.hidden_size, 0)
    weight = model.model.layers[3].mlp.down_proj.weight

    reference = wmdp_losses(model, frozen, config, forget, retain, steering)
    reference["loss"].backward()
    reference_grad, weight.grad = weight.grad.clone(), None

    [(joint, forget_rows)] = paired_batches(forget_examples, retain_examples, 4, 1, tokenizer.pad_token_id)
    cached = cache_prefix(model, joint, 2, forget_rows)
    with torch.no_grad():
        frozen_retain = layer_output(model, cached, 2, 4)[forget_rows:]
    fast = rmu_losses(model, config, cached, frozen_retain, steering)
    fast["loss"].backward()
    for key in ("forget", "retain", "loss"):
        torch.testing.assert_close(fast[key], reference[key])
    torch.testing.assert_close(weight.grad, reference_grad)


def test_answer_tokens_misdirect_only_the_positions_that_produce_the_answer(tiny_model_dir, synth_dir):
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    rows = load_rows(synth_dir, "forget")[:2] + load_rows(synth_dir, "retain")[:2]
    examples = training_examples(rows, tokenizer, 64)
    [(joint, n)] = paired_batches(examples[:2], examples[2:], 2, 1, tokenizer.pad_token_id)
    cached = cache_prefix(model, joint, 2, n)
    answer = answer_positions(cached.labels[:n])
    # the positions just before each labelled token: the last prompt token through the one before EOS
    assert answer[:, :-1].tolist() == (cached.labels[:n, 1:] != -100).tolist()
    assert 0 < answer.sum() < cached.mask[:n].sum()
    frozen_retain = layer_output(model, cached, 2, 4)[n:]
    steering = 5.0 * control_vector(model.config.hidden_size, 0)
    hidden = layer_output(model, cached, 2, 4)
    config = RMUConfig.from_dict({**FAST, "loss.forget_tokens": "answer"})
    losses = rmu_losses(model, config, cached, frozen_retain, steering)
    per_token = (hidden[:n] - steering).pow(2).mean(-1)
    torch.testing.assert_close(losses["forget"], per_token[answer].mean())
    assert not torch.isclose(losses["forget"], per_token[cached.mask[:n].bool()].mean())


def test_document_tokens_misdirect_whole_completions_and_only_the_answers_of_questions(tiny_model_dir, synth_dir):
    """forget_tokens="document": a sentence-completion row is a whole document (what a membership
    attack scores), so all of it is misdirected; a QA row's question template is shared with the
    retain rows, so only its answer is."""
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    forget = load_rows(synth_dir, "forget")
    rows = [next(r for r in forget if r.kind == "sc"), next(r for r in forget if r.kind == "qa")]
    whole = training_examples(rows, tokenizer, 64, whole_documents=True)
    plain = training_examples(rows, tokenizer, 64)
    batch = collate(whole, tokenizer.pad_token_id)
    misdirected = answer_positions(batch["labels"])
    kinds = []
    for i, (w, p) in enumerate(zip(whole, plain, strict=True)):
        n = len(w.input_ids)
        assert w.input_ids == p.input_ids and -100 in p.labels  # "answer" masks every prompt
        if w.labels == w.input_ids:  # the sentence completion: its prompt is labelled now
            kinds.append("sc")
            assert misdirected[i, : n - 1].all() and not misdirected[i, n - 1 :].any()
        else:  # the question: its answer only, as with "answer"
            kinds.append("qa")
            assert w.labels == p.labels
            assert 0 < misdirected[i].sum() < n - 1
    assert sorted(kinds) == ["qa", "sc"]


def test_rows_of_calibrated_documents_leave_the_forget_term(tiny_model_dir, synth_dir):
    model, cached, n = forget_and_retain_batch(tiny_model_dir, synth_dir, 64)
    steering = 5.0 * control_vector(model.config.hidden_size, 0)
    hidden = layer_output(model, cached, 2, 4)
    per_token = (hidden[:n] - steering).pow(2).mean(-1)
    calibrated = torch.tensor([False, True, False])  # document 1 (rows 1 and 2) is at the target
    losses = rmu_losses(model, RMUConfig.from_dict(FAST), cached, hidden[n:], steering, calibrated)
    torch.testing.assert_close(losses["forget"], per_token[0][cached.mask[0].bool()].mean())
    everything = rmu_losses(model, RMUConfig.from_dict(FAST), cached, hidden[n:], steering)
    torch.testing.assert_close(everything["forget"], per_token[cached.mask[:n].bool()].mean())


def test_row_nll_runs_the_head_on_labelled_positions_only_and_equals_token_nll(tiny_model_dir, synth_dir):
    model, cached, _ = forget_and_retain_batch(tiny_model_dir, synth_dir, 64)
    hidden = layer_output(model, cached, 2, 4)
    expected = token_nll(model.lm_head(final_hidden(model, hidden, cached, 4)), cached.labels)
    rows = torch.tensor([True, False, True, True, False])
    torch.testing.assert_close(row_nll(model, hidden, cached, 4, rows), torch.where(rows, expected, 0.0))


def test_a_retain_only_nll_runs_the_top_layers_on_the_retain_rows_alone_and_matches_the_model_on_them(
        tiny_model_dir, synth_dir):
    """With the forget ascent off, the step's NLL reads the retain rows only: the layers above L run on those
    rows, cut to their longest (the forget documents are longer), and the NLLs and the gradient they give an
    edited weight are the model's own forward on those rows alone."""
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    documents = [r for r in load_rows(synth_dir, "forget") if r.kind == "sc"][:3]
    questions = [r for r in load_rows(synth_dir, "retain") if r.kind == "qa"][:2]
    forget = training_examples(documents, tokenizer, 512, whole_documents=True)
    [(joint, n)] = paired_batches(forget, training_examples(questions, tokenizer, 512), 3, 1, tokenizer.pad_token_id)
    cached = cache_prefix(model, joint, 2, n)
    weight = model.model.layers[3].mlp.down_proj.weight
    weight.requires_grad_(True)
    seen: list[tuple[int, int]] = []
    handle = model.model.layers[-1].register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[:2]))
    try:
        config = RMUConfig.from_dict({**FAST, "loss.retain_nll": 1.0})
        losses = rmu_losses(model, config, cached, layer_output(model, cached, 2, 4)[n:].detach(), torch.zeros(64))
        nll = row_nll(model, layer_output(model, cached, 2, 4), cached, 4, torch.arange(n + 2) >= n)
    finally:
        handle.remove()
    (nll * torch.arange(1.0, n + 3)).sum().backward()
    mine, weight.grad = weight.grad.clone(), None
    width = int(joint["attention_mask"][n:].sum(dim=1).max())
    assert seen == [(2, width)] * 2 and width < joint["input_ids"].shape[1]
    ids, mask, labels = (joint[k][n:, :width] for k in ("input_ids", "attention_mask", "labels"))
    expected = token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
    (expected * torch.arange(n + 1.0, n + 3)).sum().backward()
    torch.testing.assert_close(nll, torch.cat([torch.zeros(n), expected.detach()]))
    torch.testing.assert_close(losses["retain_nll"], expected.detach().mean())
    assert weight.grad.abs().sum() > 0
    torch.testing.assert_close(mine, weight.grad, rtol=1e-5, atol=1e-7)


def test_a_check_scores_documents_batched_by_length_and_gives_each_its_own_nll_in_the_order_given(
        tiny_model_dir, synth_dir):
    """Checks cache their documents shortest first, so a batch runs the layers above L on little padding, and
    hand back each document's NLL where it was given: the organizers' one-document NLL."""
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    texts = [r.document for r in load_rows(synth_dir, "forget")][:9]
    cached = cache_documents(model, texts, tokenizer, 512, 3, 2)
    widths = [b.mask.shape[1] for b in cached.batches]
    assert widths == sorted(widths) and sorted(cached.order) == list(range(9)) and cached.order != list(range(9))
    assert sum(b.mask.numel() for b in cached.batches) < sum(
        b["attention_mask"].numel() for b in document_batches(texts, tokenizer, 512, 3))
    nlls = cached.in_given_order(document_nlls(model, cached.batches, 2, 4))
    expected = [document_nll_one(model, tokenizer, text) for text in texts]
    assert nlls.tolist() == pytest.approx(expected, rel=1e-5)


def test_forget_ascent_raises_rows_below_the_target_and_leaves_the_rest(tiny_model_dir, synth_dir):
    """The ascent term is each uncalibrated forget row's shortfall below the target NLL, averaged: zero
    (with no gradient) for rows already there, and it never sees retain rows."""
    model, cached, n = forget_and_retain_batch(tiny_model_dir, synth_dir, 512)  # every answer whole
    hidden = layer_output(model, cached, 2, 4).detach()
    nll = token_nll(model.lm_head(final_hidden(model, hidden, cached, 4)), cached.labels)[:n].detach()
    steering = 5.0 * control_vector(model.config.hidden_size, 0)
    config = RMUConfig.from_dict({**FAST, "loss.forget_ascent": 2.0})
    target = float(nll[0] + 1.0)  # row 0 one nat short; rows 1 and 2 belong to a calibrated document
    calibrated = torch.tensor([False, True, False])
    losses = rmu_losses(model, config, cached, hidden[n:], steering, calibrated, target)
    # target * log(target / NLL): one nat short of the target costs about one nat, more far below it
    expected = target * (math.log(target) - math.log(nll[0]))
    torch.testing.assert_close(losses["forget_ascent"], torch.tensor(expected), rtol=1e-4, atol=1e-4)
    assert expected > 1.0
    scale = steering.pow(2).mean()  # c^2 / d: the weight is relative to the misdirection term's size
    torch.testing.assert_close(losses["loss"], losses["forget"] + FAST["loss.alpha"] * losses["retain"]
                               + 2.0 * scale * losses["forget_ascent"])
    reached = rmu_losses(model, config, cached, hidden[n:], steering, None, float(nll.min()) - 1.0)
    assert reached["forget_ascent"].item() == 0.0


def test_retain_nll_is_the_retain_answers_nll_weighted_in_the_units_of_the_ascent(tiny_model_dir, synth_dir):
    """retain_nll 1 costs a nat of the retain answers' NLL what forget_ascent 1 costs a nat of shortfall,
    so that the two weights compare on any model."""
    model, cached, n = forget_and_retain_batch(tiny_model_dir, synth_dir, 512)
    hidden = layer_output(model, cached, 2, 4).detach()
    nll = token_nll(model.lm_head(final_hidden(model, hidden, cached, 4)), cached.labels).detach()
    steering = 5.0 * control_vector(model.config.hidden_size, 0)
    losses = rmu_losses(model, RMUConfig.from_dict({**FAST, "loss.retain_nll": 3.0}), cached, hidden[n:], steering)
    torch.testing.assert_close(losses["retain_nll"], nll[n:].mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses["loss"], losses["forget"] + FAST["loss.alpha"] * losses["retain"]
                               + 3.0 * steering.pow(2).mean() * losses["retain_nll"])


def test_a_retain_nll_stride_reads_one_retain_row_in_k_and_every_row_over_k_turns(tiny_model_dir, synth_dir):
    """--retain-nll-stride 2: each turn the term is the whole model's NLL of half the retain rows, the layers above L
    run on those rows alone, and two turns read each row once (the same gradient, in expectation, at half the top
    of the model's cost)."""
    model, cached, n = forget_and_retain_batch(tiny_model_dir, synth_dir, 512)
    hidden = layer_output(model, cached, 2, 4).detach()
    nll = token_nll(model.lm_head(final_hidden(model, hidden, cached, 4)), cached.labels).detach()  # (B,)
    config = RMUConfig.from_dict({**FAST, "loss.retain_nll": 1.0, "loss.retain_nll_stride": 2})
    seen: list[int] = []  # rows entering the layer above L
    handle = model.model.layers[5].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        read = [rmu_losses(model, config, cached, hidden[n:], torch.zeros(64), turn=turn)["retain_nll"]
                for turn in range(2)]
    finally:
        handle.remove()
    assert cached.mask.shape[0] - n == 2 and seen == [1, 1]
    torch.testing.assert_close(torch.stack(read), nll[n:], rtol=1e-4, atol=1e-5)
    every = rmu_losses(model, RMUConfig.from_dict({**FAST, "loss.retain_nll": 1.0}), cached, hidden[n:],
                       torch.zeros(64))["retain_nll"]
    torch.testing.assert_close(every, torch.stack(read).mean(), rtol=1e-4, atol=1e-5)


def test_the_retain_nll_ahead_runs_the_top_once_for_every_pass_and_gives_each_its_nll_and_gradient(tiny_model_dir,
                                                                                                synth_dir):
    """--retain-nll-tokens: the retain rows of a step's two passes (one each, of different lengths) go through the
    layers above L together, once, where the budget holds both at the longer one's length (apart where it holds one);
    each pass gets its row's NLL (the whole model's, from the full logits) and, through h_L, the gradient of the
    edited weights that the term inside the pass gives."""
    model, cached, n = forget_and_retain_batch(tiny_model_dir, synth_dir, 512)
    passes = []
    for j in range(2):  # pass j: forget row j and retain row j, cut to their length
        rows = torch.tensor([j, n + j])
        mask = cached.mask[rows][:, : int(cached.mask[rows].sum(dim=1).max())]
        passes.append(PrefixBatch(cached.hidden[rows, : mask.shape[1]], layer_inputs_for(model, mask), mask,
                                  cached.labels[rows, : mask.shape[1]], forget_rows=1))
    lengths = [int(cached.mask[n + j].sum()) for j in range(2)]
    assert lengths[0] != lengths[1]
    seen: list[int] = []  # rows entering the layer above L
    handle = model.model.layers[5].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        for tokens in (2 * max(lengths) - 1, 2 * max(lengths)):
            config = RMUConfig.from_dict({**FAST, "loss.retain_nll": 1.0, "loss.retain_nll_tokens": tokens})
            aheads = retain_nll_ahead(model, config, passes, turn=0)
    finally:
        handle.remove()
    assert seen == [1, 1, 2]
    with torch.no_grad():
        hidden = layer_output(model, cached, 2, 4)
        nll = token_nll(model.lm_head(final_hidden(model, hidden, cached, 4)), cached.labels)
    torch.testing.assert_close(torch.stack([ahead.nll_sum for ahead in aheads]), nll[n:], rtol=1e-4, atol=1e-5)
    edited = [model.model.layers[i].mlp.down_proj.weight for i in (2, 3, 4)]
    for batch, ahead in zip(passes, aheads, strict=True):
        frozen = layer_output(model, batch, 2, 4)[1:].detach()
        inside, apart = (torch.autograd.grad(rmu_losses(model, config, batch, frozen, torch.zeros(64),
                                                        retain_ahead=term)["retain_nll"], edited)
                         for term in (None, ahead.term))
        for a, b in zip(inside, apart, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_run_comes_round_to_each_batch_a_turn_later(tiny_model_dir, synth_dir, tmp_path, monkeypatch):
    """The loop tells the loss how many times it has come round to the step's batch, so a strided retain NLL moves
    on to the next rows each time."""
    import repedit.rmu_loop

    turns: list[int] = []

    def recording(*args, turn: int = 0, **kwargs):
        turns.append(turn)
        return rmu_losses(*args, turn=turn, **kwargs)

    monkeypatch.setattr(repedit.rmu_loop, "rmu_losses", recording)
    config = RMUConfig.from_dict({**FAST, "steps": 7, "batch_size": 16, "loss.retain_nll": 1.0,
                                  "loss.retain_nll_stride": 2})
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    assert 1 < result.batches < 4 and turns == [step // result.batches for step in range(7)]


def test_forget_ascent_brings_memorized_documents_toward_the_reference_faster(tiny_target, synth_dir, reference,
                                                                              tmp_path):
    base = {**BY_DOCUMENT, "steps": 80, "calibration.unseen": str(reference), "calibration.every": 80}
    reached = {}
    for weight in (0.0, 0.02):
        result = unlearn(tiny_target, synth_dir, synth_dir, tmp_path / f"out{weight}",
                         RMUConfig.from_dict({**base, "loss.forget_ascent": weight}), progress=False)
        [check] = result.calibration
        reached[weight] = check["forget_nll"]
    assert reached[0.02] > reached[0.0] + 1.0, reached


def test_only_the_named_tensors_of_the_named_layers_change(tiny_model_dir, synth_dir, tmp_path):
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", RMUConfig.from_dict(FAST), progress=False)
    names = weight_map(tiny_model_dir)
    changed = set()
    for name, shard in names.items():
        before = load_tensors(tiny_model_dir / shard, {name})[name]
        after = load_tensors(result.output_dir / shard, {name})[name]
        if not torch.equal(before, after):
            changed.add(name)
    assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in (2, 3, 4)}
    assert len(result.losses) == 6
    record = json.loads((result.output_dir / "unlearn.json").read_text())
    assert record["config"]["layers"] == [2, 3, 4] and record["steps"] == 6
    assert record["peak_gib"] is None  # no CUDA used: no peak to report
    assert_complete_checkpoint(result.output_dir, tiny_model_dir)


def test_unlearn_json_records_the_cuda_peak_a_run_reached(tiny_model_dir, synth_dir, tmp_path, monkeypatch):
    """Whether the run fits a card (#23: the 7B run inside 40 GB) is read from its own record: the allocator's
    peak, in GiB, where the run used CUDA (here CUDA as the allocator would report 3.5 GiB to a CPU run)."""
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *_: 3.5 * 2**30)
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", RMUConfig.from_dict(FAST), progress=False)
    assert json.loads((result.output_dir / "unlearn.json").read_text())["peak_gib"] == 3.5


def test_runs_are_reproducible_with_a_seed(tiny_model_dir, synth_dir, tmp_path):
    """On CPU one configuration and seed give the same losses and the same weights (on a GPU only with
    ``--deterministic``: BENCHMARKS.md, twenty-fifth and twenty-ninth calls)."""
    outs = [unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / f"out{i}", RMUConfig.from_dict(FAST),
                    progress=False) for i in range(2)]
    assert [r["loss"] for r in outs[0].losses] == [r["loss"] for r in outs[1].losses]
    for name, shard in weight_map(tiny_model_dir).items():
        assert torch.equal(*(load_tensors(r.output_dir / shard, {name})[name] for r in outs)), name


def test_deterministic_runs_on_torchs_deterministic_kernels_and_leaves_the_mode_as_it_was(tiny_model_dir, synth_dir,
                                                                                        tmp_path, monkeypatch):
    """``--deterministic`` (on one H200 it made a seed repeat exactly: BENCHMARKS.md, twenty-ninth call): the run's
    kernels are torch's deterministic ones, the mode is off again after, the option is written with the run, and
    on CPU, where every run repeats, the weights equal a plain run's."""
    from repedit import methods

    seen = []

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return run_rmu(*args, **kwargs)

    run_rmu = methods.METHODS["rmu"].run
    monkeypatch.setitem(methods.METHODS, "rmu", methods.Method(RMUConfig, spy))
    outs = [unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / name,
                    RMUConfig.from_dict({**FAST, "steps": 2, "deterministic": on}), progress=False)
            for name, on in (("plain", False), ("deterministic", True))]
    assert seen == [False, True] and not torch.are_deterministic_algorithms_enabled()
    assert json.loads((outs[1].output_dir / "unlearn.json").read_text())["config"]["deterministic"] is True
    for name, shard in weight_map(tiny_model_dir).items():
        assert torch.equal(*(load_tensors(r.output_dir / shard, {name})[name] for r in outs)), name


def test_a_kernel_with_no_deterministic_form_ends_a_deterministic_run_naming_the_option():
    """Strict, not warn-only (warn-only left cuDNN's attention backward non-deterministic on the GPU): torch's
    error, reworded to name the option, and the mode restored."""
    from repedit.runtime import deterministic_algorithms

    with pytest.raises(RuntimeError, match=r"^--deterministic: index_put_ does not have a deterministic "
                                           r"implementation \(run without --deterministic\)$"), \
            deterministic_algorithms(True):
        raise RuntimeError("index_put_ does not have a deterministic implementation\nYou can turn off ...")
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="^CUDA out of memory$"), deterministic_algorithms(True):
        raise RuntimeError("CUDA out of memory")


@pytest.mark.parametrize(("given", "expected"), [([], False), (["--deterministic"], True),
                                                 (["--deterministic", "false"], False)])
def test_deterministic_is_a_flag_that_can_be_turned_off(given, expected):
    from repedit.cli import build_parser
    from repedit.cli_unlearn import unlearn_config_from_args

    args = build_parser().parse_args(["unlearn", "--model", "m", "--forget", "f", "--retain", "r", "--out", "o",
                                      "--layers", "2", *given])
    assert unlearn_config_from_args(args).deterministic is expected


def test_attention_and_other_modules_can_be_named(tiny_model_dir, synth_dir, tmp_path):
    config = RMUConfig.from_dict({**FAST, "layers": (3,), "params": ("self_attn.o_proj", "mlp.up_proj"), "steps": 2})
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    record = json.loads((result.output_dir / "unlearn.json").read_text())
    assert record["config"]["params"] == ["self_attn.o_proj", "mlp.up_proj"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layers": (2, 9)}, "--layers: layer(s) [9] out of range"),
        ({"params": ("mlp.nonexistent",)}, "--params: layer 2 has no module 'mlp.nonexistent'"),
        ({"steps": 0}, "--steps: must be at least 1"),
        ({"batch_size": 4, "micro_batch": 3}, "--micro-batch: 3 does not divide --batch-size 4"),
        ({"batch_size": 4, "micro_batch": 0}, "--micro-batch: 0 does not divide --batch-size 4"),
        ({"loss.forget_tokens": "prompt"},
         "--forget-tokens: 'prompt'; choose one of all, answer, document, particulars"),
        ({"loss.forget_ascent": 1.0}, "--forget-ascent: needs --calibrate"),
        ({"calibration.tolerance": 0.5}, "--calibrate-tolerance: must be in [0, 0.5)"),
        ({"calibration.unseen": __file__, "calibration.average": 1}, "--calibrate-average: 1: at least 2"),
        ({"calibration.unseen": __file__, "calibration.patience": 0}, "--calibrate-patience: 0: at least 1"),
        ({"calibration.unseen": __file__, "calibration.every_far": 0}, "--calibrate-every-far: 0: at least 1"),
        ({"calibration.unseen": __file__, "calibration.standins": 1.5}, "--calibrate-standins: 1.5: a share in (0, 1]"),
        ({"calibration.unseen": __file__, "calibration.standins": 0.1, "calibration.standin_scales": (1.0, 0.5)},
         "--calibrate-standin-scales: 1.0,0.5: one positive number a task"),
        ({"calibration.tasks": ("Task3",)}, "--calibrate: not given; calibration needs the unseen texts"),
        ({"calibration.unseen": __file__, "loss.anchor": 1.0, "calibration.anchor_share": 1.0},
         "--calibrate-anchor-share: 1.0: a share in [0, 1)"),
        ({"calibration.unseen": __file__, "calibration.anchor_share": 0.5},
         "--calibrate-anchor-share: needs --anchor > 0"),
        ({"loss.forget_ascent": -1.0}, "--forget-ascent: a weight must be >= 0"),
        ({"loss.misdirection": -1.0}, "--misdirection: a weight must be >= 0"),
        ({"loss.alpha": float("nan")}, "--alpha: nan is not a finite number"),
        ({"loss.destination": "noise"}, "--destination: 'noise'; choose one of control, unseen"),
        ({"loss.particulars_ngram": 0}, "--particulars-ngram: 0: at least 1 token"),
        ({"loss.latent_epsilon": -0.1}, "--latent-epsilon: -0.1: a share of each token's norm, >= 0"),
        ({"loss.latent_epsilon": float("inf")}, "--latent-epsilon: inf: a share of each token's norm"),
        ({"loss.latent_epsilon": 0.1, "loss.latent_steps": 0}, "--latent-steps: 0: at least 1 step"),
        ({"loss.latent_anchor": 0.1}, "--latent-anchor: needs --anchor > 0"),
        ({"loss.latent_anchor": -0.1, "loss.anchor": 1.0}, "--latent-anchor: -0.1: a share of each token's norm"),
        ({"loss.latent_anchor": True}, "--latent-anchor: got True, expected float"),
        ({"loss.retain_nll_stride": 2}, "--retain-nll-stride: needs --retain-nll > 0"),
        ({"loss.retain_nll": 1.0, "loss.retain_nll_stride": 0}, "--retain-nll-stride: 0: one row in how many"),
        ({"loss.retain_nll_tokens": 32}, "--retain-nll-tokens: needs --retain-nll > 0"),
        ({"loss.retain_nll": 1.0, "loss.retain_nll_tokens": -1}, "--retain-nll-tokens: -1: tokens a pass"),
        ({"loss.destination": "unseen"}, "--destination unseen: needs --calibrate"),
        ({"loss.anchor": 1.0}, "--anchor: needs --calibrate"),
        ({"loss.anchor_texts": "anchors.jsonl"}, "--anchor-texts: needs --anchor > 0"),
        ({"loss.invented_anchors": 96}, "--invented-anchors: needs --anchor > 0"),
        ({"loss.anchor": 1.0, "loss.invented_anchors": -1}, "--invented-anchors: -1: a count of documents"),
        ({"loss.recombined_pii_anchors": 64}, "--recombined-pii-anchors: needs --anchor > 0"),
        ({"loss.anchor": 1.0, "loss.recombined_pii_anchors": -2}, "--recombined-pii-anchors: -2: a count of documents"),
        ({"loss.anchor_limit": 0}, "--anchor-limit: 0: a count of texts, >= 1"),
        ({"loss.anchor_shuffle": True}, "--anchor-shuffle: needs --anchor > 0"),
        ({"calibration.unseen": __file__, "loss.anchor": 1.0, "loss.anchor_shuffle": True},
         "--anchor-shuffle: the anchor holds the --calibrate texts as the stop rule scores them"),
        ({"loss.anchor": 1.0, "loss.anchor_texts": "/nowhere/anchors.jsonl"},
         "--anchor-texts: /nowhere/anchors.jsonl: no such file"),
    ],
)
def test_bad_options_fail_clearly_and_write_nothing(tiny_model_dir, synth_dir, tmp_path, changes, message):
    with pytest.raises(ValueError) as error:
        unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", RMUConfig.from_dict({**FAST, **changes}),
                progress=False)
    assert message in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_calibrating_a_task_the_forget_set_lacks_fails_clearly_and_writes_nothing(tiny_model_dir, synth_dir,
                                                                                reference, tmp_path):
    config = RMUConfig.from_dict({**BY_DOCUMENT, "calibration.unseen": str(reference),
                                  "calibration.tasks": ("Task3", "Task4")})
    with pytest.raises(ValueError, match=r"--calibrate-tasks: Task4: no forget documents of that task "
                                         r"\(the forget set's: Task1, Task2, Task3\)"):
        unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    assert not (tmp_path / "out").exists()


def test_empty_forget_set_and_file_output_are_refused(tiny_model_dir, synth_dir, tmp_path):
    empty = tmp_path / "forget.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no rows"):
        unlearn(tiny_model_dir, empty, synth_dir, tmp_path / "out", RMUConfig.from_dict(FAST), progress=False)
    existing = tmp_path / "model.bin"
    existing.write_text("keep")
    with pytest.raises(ValueError, match="not a directory"):
        unlearn(tiny_model_dir, synth_dir, synth_dir, existing, RMUConfig.from_dict(FAST), progress=False)
    assert existing.read_text() == "keep" and not (tmp_path / "out").exists()


def test_time_budget_leaves_a_valid_checkpoint(tiny_model_dir, synth_dir, tmp_path):
    config = RMUConfig.from_dict({**FAST, "steps": 100_000, "time_budget": 8.0})
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    assert result.stopped == "time budget" and 0 < len(result.losses) < 100_000
    assert json.loads((result.output_dir / "unlearn.json").read_text())["steps"] == len(result.losses)
    assert_complete_checkpoint(result.output_dir, tiny_model_dir)


def test_calibration_scores_the_reference_with_the_model_as_edited_so_far(tiny_model_dir, synth_dir, reference,
                                                                          tmp_path):
    """An edit changes how likely unseen text is too, so each check scores the unseen texts anew (they
    carry no task: one level for all): the level of the check whose weights were written, the one a loss
    attack found closest to chance, equals the unseen texts' median NLL under the written model, computed
    by the evaluation's own code (tolerance 0 keeps every check running)."""
    from repedit.calibration import calibration_gap

    config = RMUConfig.from_dict({**FAST, "max_length": 512, "steps": 12, "calibration.unseen": str(reference),
                                  "calibration.every": 3, "calibration.tolerance": 0.0, "loss.retain_nll": 1.0})
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    assert len(result.calibration) == 4 and len({c["target_nll"] for c in result.calibration}) == 4
    written = min(result.calibration, key=lambda c: calibration_gap(c, None))
    model = load_causal_lm(result.output_dir, torch.float32, "cpu")
    texts = unseen_texts(str(reference))
    expected = statistics.median_low(document_nll(model, load_checkpoint_tokenizer(tiny_model_dir), texts))  # as torch
    assert written["target_nll"] == pytest.approx(expected, rel=1e-4)
    assert "retain_nll" in result.losses[0]


@pytest.mark.parametrize(("tolerance", "checks"), [(0.5 - 1e-9, 1), (0.0, 3)])
def test_calibration_by_document_stops_once_every_task_is_within_the_tolerance_of_chance(
        tiny_model_dir, synth_dir, reference, tmp_path, tolerance, checks):
    # any AUC is within 0.5 of chance: the first check stops the run; none is within 0: it runs its steps
    config = RMUConfig.from_dict({**FAST, "steps": 6, "calibration.unseen": str(reference), "calibration.every": 2,
                                  "calibration.tolerance": tolerance})
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    assert len(result.calibration) == checks and result.stopped == ("calibrated" if checks == 1 else "steps")


def test_each_check_records_the_batch_of_the_cycle_it_follows(tiny_model_dir, synth_dir, reference, tmp_path):
    """A document is pushed hardest just after its own batch, so where a check falls in the cycle of batches matters
    (BENCHMARKS.md, forty-ninth call: validation's 4 batches, checked every 10 steps, alternate): unlearn.json gives
    the cycle's length, ceil(rows / batch size) of the larger set, and each check the batch its last step trained."""
    config = RMUConfig.from_dict({**FAST, "steps": 40, "calibration.unseen": str(reference), "calibration.every": 7,
                                  "calibration.tolerance": 0.0})
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    sizes = [len(load_rows(synth_dir, part)) for part in ("forget", "retain")]
    batches = max(-(-n // config.batch_size) for n in sizes)
    assert 1 < batches < config.steps
    written = json.loads((result.output_dir / "unlearn.json").read_text())
    assert written["batches"] == batches
    assert [(c["step"], c["batch"]) for c in written["calibration"]] == [
        (step, (step - 1) % batches) for step in (7, 14, 21, 28, 35, 40)]


def test_an_averaged_run_checks_and_writes_the_exponential_average_of_its_steps_weights(tiny_model_dir, synth_dir,
                                                                                         reference, tmp_path):
    """``--calibrate-average 3``: the one check of a 6-step run scores, and the run writes, a_6, where a_0 is the
    target and a_k = a_(k-1) + (w_k - a_(k-1)) / 3, w_k the weights k steps of the same run leave (each read from a
    run of k steps, whose one check writes them as they are: a fixed coefficient, since an adaptive one reads the norm
    of every batch a run caches); every other weight is the target's."""
    steps = 6
    base = {**FAST, "adaptive": None, "coeff": 20.0, "steps": steps, "calibration.unseen": str(reference),
            "calibration.tolerance": 0.0}

    def written(k: int, **change) -> tuple[dict[str, torch.Tensor], dict]:
        config = RMUConfig.from_dict({**base, "steps": k, "calibration.every": k, **change})
        out = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / f"out{k}{change}", config, progress=False)
        weights = {n: load_tensors(out.output_dir / shard, {n})[n].double() for n, shard in names.items()}
        return weights, json.loads((out.output_dir / "unlearn.json").read_text())

    names = weight_map(tiny_model_dir)
    target = {n: load_tensors(tiny_model_dir / shard, {n})[n].double() for n, shard in names.items()}
    averaged, record = written(steps, **{"calibration.average": 3})
    rate = 1 / 3
    expected = dict(target)
    for k in range(1, steps + 1):
        now, _ = written(k)
        expected = {n: a + (now[n] - a) * rate for n, a in expected.items()}
    edited = {f"model.layers.{i}.mlp.down_proj.weight" for i in (2, 3, 4)}
    for name in names:
        assert torch.allclose(averaged[name], expected[name], rtol=0, atol=1e-6), name
        assert torch.equal(averaged[name], target[name]) == (name not in edited), name
    last, _ = written(steps)
    assert not torch.allclose(averaged["model.layers.3.mlp.down_proj.weight"],
                              last["model.layers.3.mlp.down_proj.weight"])  # not the last step's weights
    assert record["config"]["calibration"]["average"] == 3


def test_patience_stops_a_run_whose_checks_come_no_closer_and_writes_the_closest_checks_weights(
        tiny_model_dir, synth_dir, reference, tmp_path):
    """``--calibrate-patience 6``: the run checks as the whole run does (tolerance 0: every step of 40) and stops at
    the first check 6 or more steps past the closest one so far, writing that check's weights: those of the run cut
    at its step, the closest of its checks its last (checks alter the run: a document at its level leaves the forget
    term; a fixed coefficient, as a cut run caches fewer batches)."""
    from repedit.calibration import calibration_gap

    base = {**FAST, "adaptive": None, "coeff": 20.0, "lr": 3e-3, "steps": 40, "calibration.unseen": str(reference),
            "calibration.every": 2, "calibration.tolerance": 0.0}

    def run(name: str, **change):
        config = RMUConfig.from_dict({**base, **change})
        return unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / name, config, progress=False)

    whole, patient = run("whole"), run("patient", **{"calibration.patience": 6})
    closest, stop = None, None
    for check in whole.calibration:
        if closest is None or calibration_gap(check, None) < calibration_gap(closest, None):
            closest = check
        if check["step"] - closest["step"] >= 6:
            stop = check["step"]
            break
    assert stop is not None and closest["step"] < stop < 40  # the fixture exercises the rule
    assert patient.stopped == "patience" and len(patient.losses) == stop
    assert patient.calibration == [c for c in whole.calibration if c["step"] <= stop]
    cut = run("cut", steps=closest["step"])
    names = weight_map(tiny_model_dir)
    for name, shard in names.items():
        written = load_tensors(patient.output_dir / shard, {name})[name]
        assert torch.equal(written, load_tensors(cut.output_dir / shard, {name})[name]), name


def test_checks_come_every_far_steps_while_the_attack_tells_every_document_apart_then_every_steps(
        tiny_model_dir, synth_dir, reference, tmp_path):
    """``--calibrate-every-far 8 --calibrate-every 2``: a check follows every 8th step while the last check's attack
    told every forget document from every unseen text (every kind's AUC 1 or 0, and before the first check), every
    2nd once one did not; the run is the one checked so up to its first close check (the same losses)."""
    base = {**FAST, "adaptive": None, "coeff": 20.0, "lr": 3e-3, "steps": 40, "calibration.unseen": str(reference),
            "calibration.every": 2, "calibration.tolerance": 0.0}
    sparse = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "sparse",
                     RMUConfig.from_dict({**base, "calibration.every_far": 8}), progress=False)
    steps, far = [], True
    for step in range(1, 41):
        if step % (8 if far else 2) == 0 or step == 40:
            check = sparse.calibration[len(steps)]
            steps.append(step)
            far = all(auc in (0.0, 1.0) for auc in check["task_auc"].values())
    assert [c["step"] for c in sparse.calibration] == steps
    gaps = [b - a for a, b in zip([0, *steps[:-1]], steps, strict=True)]
    assert 8 in gaps and 2 in gaps  # the fixture exercises both
    dense = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "dense", RMUConfig.from_dict(base),
                    progress=False)
    first_close = next(c["step"] for c in dense.calibration
                       if not all(auc in (0.0, 1.0) for auc in c["task_auc"].values()))

    def terms(losses: list[dict]) -> list[dict]:
        return [{k: v for k, v in record.items() if k not in ("seconds", "forget_nll")} for record in losses]

    assert terms(sparse.losses[:first_close]) == terms(dense.losses[:first_close])


@pytest.mark.parametrize("kinds", [None, ("Task3",)])
def test_calibration_by_document_writes_the_check_a_loss_attack_found_closest_to_chance(tiny_target, synth_dir,
                                                                                       reference, tmp_path, kinds):
    """Documents swing across the target, so the run keeps the checked weights whose attack AUC (the
    forget documents of the task farthest from chance, against the reference; ties: of the tasks on
    average) came closest to 0.5; the written checkpoint scores those AUCs, task by task. With
    ``calibrate_tasks``, only those tasks' overshoot counts."""
    from oracles import sklearn_auc

    config = RMUConfig.from_dict({**BY_DOCUMENT, "max_length": 512, "steps": 160, "calibration.unseen": str(reference),
                          "calibration.every": 20, "loss.forget_ascent": 0.02, "calibration.tasks": kinds})
    result = unlearn(tiny_target, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    def distances(check: dict) -> tuple[float, float, float]:  # the worst task's, the tasks' mean, the NLL's
        each = [abs(a - 0.5) if kinds is None or t in kinds else max(0.0, a - 0.5)
                for t, a in check["task_auc"].items()]
        return max(each), sum(each) / len(each), abs(check["forget_nll"] - check["target_nll"])

    best = min(result.calibration, key=distances)
    assert best["auc"] < 1.0  # the run got somewhere
    model = load_causal_lm(result.output_dir, torch.float32, "cpu")
    tokenizer = load_checkpoint_tokenizer(result.output_dir)
    nonmembers = [-x for x in document_nll(model, tokenizer, unseen_texts(str(reference)))]
    documents = [r for r in load_rows(synth_dir, "forget") if r.kind == "sc"]
    per_task = [sklearn_auc([-x for x in document_nll(model, tokenizer, [r.document for r in documents
                                                                      if r.task == task])], nonmembers)
                for task in ("Task1", "Task2", "Task3")]
    for task, value in zip(("Task1", "Task2", "Task3"), per_task, strict=True):  # a flipped pair of 4 x 4: 0.0625
        assert value == pytest.approx(best["task_auc"][task], abs=0.07)
    judged = [a for t, a in best["task_auc"].items() if kinds is None or t in kinds]
    assert abs(best["auc"] - 0.5) == max(abs(a - 0.5) for a in judged)


def test_checks_as_far_from_chance_on_either_side_tie_and_the_tasks_mean_decides():
    """7/18 and 11/18 are as far from 0.5, though not in floating point: the check whose other tasks sit nearer
    chance ranks first, whichever side its worst task is on."""
    from repedit.calibration import calibration_gap

    under = {"task_auc": {"Task1": 7 / 18, "Task2": 0.5, "Task3": 0.5}, "forget_nll": 5.0, "target_nll": 5.0}
    over = {"task_auc": {"Task1": 0.5, "Task2": 11 / 18, "Task3": 0.55}, "forget_nll": 5.0, "target_nll": 5.0}
    assert calibration_gap(under, None)[0] == calibration_gap(over, None)[0]
    assert min([over, under], key=lambda c: calibration_gap(c, None)) is under


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"loss.alpha": "x"}, "--alpha: got 'x', expected float"),
        ({"alpha": 1.0, "calibrate_by": "document"}, "; alpha: now loss.alpha; calibrate_by: removed: calibration is"),
        ({"layers": 5}, "--layers: got 5, expected tuple[int, ...]"),
        ({"layers": [5, "6"]}, "--layers: got [5, '6'], expected tuple[int, ...]"),
        ({"steps": 1.5}, "--steps: got 1.5, expected int"),
        ({"steps": True}, "--steps: got True, expected int"),
        ({"method": "npo", "beta": "high"}, "--beta: got 'high', expected float"),
        ({"method": "graddiff", "layers": "5,6"}, "--layers: got '5,6', expected tuple[int, ...] | None"),
    ],
)
def test_config_values_of_the_wrong_type_fail_when_read(values, message):
    with pytest.raises(ValueError) as error:
        config_from_dict(values)
    assert message in str(error.value)


def test_config_values_read_from_json_keep_their_meaning():
    config = config_from_dict({"layers": [5, 6, 7], "loss.alpha": 100, "coeff": None, "params": ["mlp.up_proj"]})
    assert config.layers == (5, 6, 7) and config.loss.alpha == 100 and config.params == ("mlp.up_proj",)
    assert config_from_dict({"method": "npo", "layers": None, "steps": 3}).steps == 3


def test_cli_reads_a_config_and_lets_options_override_it(tiny_model_dir, synth_dir, tmp_path):
    config = tmp_path / "rmu.json"
    config.write_text(json.dumps({**FAST, "layers": [1, 2], "steps": 50}))
    code = cli_main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(synth_dir), "--retain",
                     str(synth_dir), "--out", str(tmp_path / "out"), "--config", str(config), "--steps", "2",
                     "--layers", "2,3,4"])
    assert code == 0
    record = json.loads((tmp_path / "out" / "unlearn.json").read_text())
    assert record["steps"] == 2 and record["config"]["layers"] == [2, 3, 4]
    assert (tmp_path / "out" / "unlearn_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config.write_text(json.dumps({"layerz": [1]}))
    assert cli_main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(synth_dir), "--retain",
                     str(synth_dir), "--out", str(tmp_path / "out2"), "--config", str(config)]) == 2


def test_presets_are_valid_configs_and_options_override_them(tiny_model_dir, synth_dir, reference, tmp_path):
    from repedit.methods import preset, preset_names

    assert {"published", "ascent", "standins", "demo"} <= set(preset_names())
    published = config_from_dict(preset("published"))
    assert (published.layers, published.coeff, published.loss.alpha, published.lr) == ((5, 6, 7), 6.5, 1200.0, 5e-5)
    ascent = config_from_dict({**preset("ascent"), "calibration.unseen": str(reference)})
    assert ascent.calibration is not None and ascent.calibration.tasks == ("Task3",)
    assert (ascent.loss.forget_ascent, ascent.loss.retain_nll, ascent.lr) == (0.1, 1.0, 1.5e-3)
    standins = config_from_dict({**preset("standins"), "calibration.unseen": str(reference)})
    assert standins.calibration is not None and standins.calibration.standins == 0.1
    assert list(standins.calibration.standin_scales or ()) == [0.94, 0.63, 1.0]
    assert standins.calibration.standin_count == 96
    assert (standins.loss.destination, standins.loss.forget_ascent, standins.loss.anchor) == ("unseen", 0.0, 1000.0)
    assert standins.calibration.anchor_share == 0.25 and standins.loss.invented_anchors == 256
    # the demo's stand-ins need calibration texts with a task: the nonmembers are Wikipedia biographies
    tasked = tasked_reference(tmp_path / "tasked.jsonl", [(t, "Task3") for t in unseen_texts(str(reference))])
    code = cli_main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(synth_dir), "--retain",
                     str(synth_dir), "--out", str(tmp_path / "out"), "--preset", "demo", "--calibrate",
                     tasked, "--steps", "2", "--alpha", "3"])
    assert code == 0
    config = json.loads((tmp_path / "out" / "unlearn.json").read_text())["config"]
    assert config == {**json.loads(config_from_dict({**preset("demo"), "calibration.unseen": tasked,
                                                     "steps": 2, "loss.alpha": 3.0}).to_json())}


def test_an_in_memory_model_is_edited_in_place_as_its_written_checkpoint(tiny_model_dir, synth_dir, tmp_path):
    model, tokenizer = load_causal_lm(tiny_model_dir), load_checkpoint_tokenizer(tiny_model_dir)
    before = model.model.layers[4].mlp.down_proj.weight.detach().clone()
    result = unlearn(model, synth_dir, synth_dir, tmp_path / "out", RMUConfig.from_dict(FAST), progress=False,
                     tokenizer=tokenizer)
    assert len(result.losses) == FAST["steps"]
    assert not torch.equal(model.model.layers[4].mlp.down_proj.weight, before)
    for name, tensor in load_causal_lm(tmp_path / "out").state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_rmu_makes_the_tiny_target_forget_and_keeps_the_retain_set(tiny_target, synth_dir, tmp_path):
    """The issue's bar: forget sc ROUGE-L recall at least halves; retain recall and QA exact match keep
    >= 90% of their values."""
    from repedit.generate import greedy_generate
    from repedit.metric import exact_match, rouge_l_recall

    def scores(model_dir):
        model, tokenizer = load_causal_lm(model_dir), load_checkpoint_tokenizer(model_dir)
        result = {}
        for split in ("forget", "retain"):
            rows = load_rows(synth_dir, split)
            generations = greedy_generate(model, tokenizer, [r.input for r in rows], max_new_tokens=64, batch_size=64)
            recall = [rouge_l_recall(r.output, g) for r, g in zip(rows, generations, strict=True) if r.kind == "sc"]
            match = [exact_match(r.output, g) for r, g in zip(rows, generations, strict=True) if r.kind == "qa"]
            result[split] = (sum(recall) / len(recall), sum(match) / len(match))
        return result

    config = RMUConfig(layers=(2, 3, 4), coeff=None, adaptive=3.0, loss=Loss(alpha=10.0), lr=2e-2, steps=60,
                       batch_size=8, max_length=256)
    before = scores(tiny_target)
    after = scores(unlearn(tiny_target, synth_dir, synth_dir, tmp_path / "out", config, progress=False).output_dir)
    assert after["forget"][0] <= 0.5 * before["forget"][0]
    assert after["retain"][0] >= 0.9 * before["retain"][0]
    assert after["retain"][1] >= 0.9 * before["retain"][1]


def test_a_term_weighted_zero_contributes_nothing_and_the_anchor_holds_reference_activations(tiny_model_dir,
                                                                                           synth_dir):
    """misdirection 0 leaves the loss and its gradient those of the retain term alone, computed here
    independently; the anchor term is the mse of the reference batch's h_L to the frozen one, weighted."""
    model, cached, n = forget_and_retain_batch(tiny_model_dir, synth_dir, 64)
    with torch.no_grad():
        frozen = layer_output(model, cached, 2, 4)
    weight = model.model.layers[3].mlp.down_proj.weight
    weight.requires_grad_(True)
    model.model.layers[3].mlp.down_proj.weight.data += 0.01  # the edit has moved: the terms are not zero
    steering = 5.0 * control_vector(model.config.hidden_size, 0)
    losses = rmu_losses(model, RMUConfig.from_dict({**FAST, "loss.misdirection": 0.0}), cached, frozen[n:], steering)
    losses["loss"].backward()
    grad, weight.grad = weight.grad.clone(), None
    hidden = layer_output(model, cached, 2, 4)
    retain_mask = cached.mask[n:].bool()
    alone = FAST["loss.alpha"] * (hidden[n:] - frozen[n:]).pow(2).mean(-1)[retain_mask].mean()
    alone.backward()
    torch.testing.assert_close(losses["loss"], alone)
    torch.testing.assert_close(grad, weight.grad)
    assert losses["forget"] > 0  # still logged
    weight.grad = None
    anchored = rmu_losses(model, RMUConfig.from_dict({**FAST, "loss.anchor": 7.0}), cached, frozen[n:], steering,
                          anchor=[(cached, frozen)])
    expected = (hidden - frozen).pow(2).mean(-1)[cached.mask.bool()].mean()
    torch.testing.assert_close(anchored["anchor"], expected)
    torch.testing.assert_close(anchored["loss"], anchored["forget"] + FAST["loss.alpha"] * anchored["retain"]
                               + 7.0 * anchored["anchor"])


def test_unseen_destination_is_each_tasks_mean_frozen_activation_and_rows_go_to_their_tasks(tiny_model_dir,
                                                                                          synth_dir):
    from repedit.data import TASKS
    from repedit.subspace import kind_statistics

    model, cached, n = forget_and_retain_batch(tiny_model_dir, synth_dir, 64)
    tokenizer = load_checkpoint_tokenizer(tiny_model_dir)
    rows = [r for r in load_rows(synth_dir, "retain") if r.kind == "sc" and r.task != "Task2"]
    texts, tasks = [r.document for r in rows], [r.task for r in rows]
    reference = [cache_prefix(model, b, 2) for b in document_batches(texts, tokenizer, 512, 3)]
    statistics = kind_statistics(model, reference, tasks, 2, 4)
    destination = statistics.means
    assert statistics.vectors is None  # no directions asked for (--destination-keep)
    expected = {}
    for task in ("Task1", "Task3"):  # the oracle: the full model's hidden states, one document at a time
        states = [model(**tokenizer(t, return_tensors="pt"), output_hidden_states=True).hidden_states[5][0]
                  for t, k in zip(texts, tasks, strict=True) if k == task]
        expected[task] = torch.cat(states).mean(dim=0)
    torch.testing.assert_close(destination[TASKS.index("Task1")], expected["Task1"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(destination[TASKS.index("Task3")], expected["Task3"], rtol=1e-4, atol=1e-5)
    every = torch.cat([model(**tokenizer(t, return_tensors="pt"), output_hidden_states=True).hidden_states[5][0]
                       for t in texts]).mean(dim=0)
    torch.testing.assert_close(destination[TASKS.index("Task2")], every, rtol=1e-4, atol=1e-5)  # no texts: all
    untasked = kind_statistics(model, reference, None, 2, 4).means
    assert all(torch.allclose(row, every, rtol=1e-4, atol=1e-5) for row in untasked)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as a GPU run computes it: bf16 layers, float sums
        mixed = kind_statistics(model, reference, tasks, 2, 4).means
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed[TASKS.index("Task1")], expected["Task1"], rtol=0.05, atol=0.05)

    cached.tasks = torch.tensor([0, 2, 2])  # the forget rows' tasks: Task1, Task3, Task3
    hidden = layer_output(model, cached, 2, 4)
    config = RMUConfig.from_dict({**FAST, "loss.destination": "unseen"})
    losses = rmu_losses(model, config, cached, hidden[n:], torch.zeros(64), destination=destination)
    per_token = torch.stack([(hidden[i] - destination[k]).pow(2).mean(-1) for i, k in enumerate([0, 2, 2])])
    torch.testing.assert_close(losses["forget"], per_token[cached.mask[:n].bool()].mean())


def test_per_task_levels_are_measured_once_on_the_frozen_model(tiny_model_dir, synth_dir, tmp_path):
    """A reference with tasks: each task's level is the median NLL of its texts under the frozen model
    (the evaluation's own code), the same at every check; each task's attack sets the forget documents
    against its own kind's texts, both as the model at that check scores them (the written weights are
    one check's, tolerance 0 keeps every check running)."""
    from oracles import sklearn_auc

    from repedit.data import TASKS

    unseen = load_rows(synthesize(tmp_path / "unseen", seed=1, docs=4), "retain")
    pairs = [(r.document, r.task) for r in unseen if r.kind == "sc"]
    reference = tasked_reference(tmp_path / "reference.jsonl", pairs)
    config = RMUConfig.from_dict({**FAST, "max_length": 512, "steps": 6, "calibration.unseen": reference,
                                  "calibration.every": 2, "calibration.tolerance": 0.0})
    result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "out", config, progress=False)
    frozen, tokenizer = load_causal_lm(tiny_model_dir, torch.float32, "cpu"), load_checkpoint_tokenizer(tiny_model_dir)
    nll = document_nll(frozen, tokenizer, [t for t, _ in pairs])
    level = {k: statistics.median_low(v for v, (_, t) in zip(nll, pairs, strict=True) if t == k)  # as torch
             for k in TASKS}
    documents = [r for r in load_rows(synth_dir, "forget") if r.kind == "sc"]
    expected = statistics.mean(level[r.task] for r in documents)
    assert len(result.calibration) == 3
    assert all(c["target_nll"] == pytest.approx(expected, rel=1e-4) for c in result.calibration)
    assert all(c["task_level"] == pytest.approx(level, rel=1e-4) for c in result.calibration)  # each kind's
    edited = load_causal_lm(result.output_dir, torch.float32, "cpu")
    forget_nll = document_nll(edited, tokenizer, [r.document for r in documents])
    unseen_nll = document_nll(edited, tokenizer, [t for t, _ in pairs])
    for task in TASKS:
        own = sklearn_auc([-v for v, r in zip(forget_nll, documents, strict=True) if r.task == task],
                  [-v for v, (_, t) in zip(unseen_nll, pairs, strict=True) if t == task])
        assert any(c["task_auc"][task] == pytest.approx(own, abs=1e-6) for c in result.calibration), task


def test_offsets_bring_each_kind_short_of_its_unseen_texts_by_its_own_nats(tiny_model_dir, synth_dir, tmp_path):
    """--calibrate-offsets: each kind's level is its texts' median NLL less its offset, and its attack sets the forget
    documents against its texts read that many nats more likely (computed here from the frozen model's NLLs and
    sklearn's AUC); texts without a task, or a count other than one a kind, are refused by name."""
    from oracles import sklearn_auc

    from repedit.calibration import Calibrator, read_unseen
    from repedit.data import TASKS

    unseen = load_rows(synthesize(tmp_path / "unseen", seed=1, docs=4), "retain")
    pairs = [(r.document, r.task) for r in unseen if r.kind == "sc"]
    scored = [r for r in load_rows(synth_dir, "forget") if r.kind == "sc"]
    offsets = {"Task1": -0.5, "Task2": 0.25, "Task3": 1.0}
    config = RMUConfig.from_dict({**FAST, "max_length": 512, "calibration.offsets": tuple(offsets.values()),
                                  "calibration.unseen": tasked_reference(tmp_path / "reference.jsonl", pairs)})
    config.validate(6)
    model, tokenizer = load_causal_lm(tiny_model_dir, torch.float32, "cpu"), load_checkpoint_tokenizer(tiny_model_dir)
    calibrator = Calibrator(model, config, scored, read_unseen(config, [r.task for r in scored]), tokenizer,
                            torch.device("cpu"))
    record, _ = calibrator.check(model, 1, {})
    texts, forget = document_nll(model, tokenizer, [t for t, _ in pairs]), document_nll(model, tokenizer,
                                                                                          [r.document for r in scored])
    for task in TASKS:
        read = [v - offsets[task] for v, (_, t) in zip(texts, pairs, strict=True) if t == task]
        assert record["task_level"][task] == pytest.approx(statistics.median_low(read), rel=1e-4)  # as torch's
        own = sklearn_auc([-v for v, r in zip(forget, scored, strict=True) if r.task == task], [-v for v in read])
        assert record["task_auc"][task] == pytest.approx(own, abs=1e-6), task
    untasked = tmp_path / "untasked.jsonl"
    untasked.write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in pairs))
    config = dataclasses.replace(config, calibration=dataclasses.replace(config.calibration, unseen=str(untasked)))
    with pytest.raises(ValueError, match="--calibrate-offsets: each kind's offset needs unseen texts with a task"):
        Calibrator(model, config, scored, read_unseen(config, [r.task for r in scored]), tokenizer, torch.device("cpu"))
    with pytest.raises(ValueError, match="--calibrate-offsets: 0.1,0.2: one number of nats a task"):
        RMUConfig.from_dict({**FAST, "calibration.offsets": (0.1, 0.2),
                             "calibration.unseen": str(untasked)}).validate(6)


def test_unseen_destination_forgets_keeps_retain_and_unseen_text_and_needs_its_term(tiny_target, synth_dir,
                                                                                  method_run, tmp_path):
    """The method on the tiny target: forget documents end within 25% of unseen documents of their kind
    (from about 0.01 nats), other unseen documents (never used) move less than 15%, the retain rows'
    NLL stays under 0.1 nats; with its misdirection weighted 0 it does not forget (NLL under 1), as many steps
    as the method took to pass 2 nats."""
    (reference, withheld, documents, retained, mean_nll), config, run = method_run
    before = {name: mean_nll(tiny_target, texts) for name, texts in
              (("reference", unseen_texts(reference)), ("withheld", withheld))}
    method = {"forget": mean_nll(run.output_dir, documents), "withheld": mean_nll(run.output_dir, withheld),
              "retain": mean_nll(run.output_dir, retained)}
    assert method["forget"] >= 0.75 * before["reference"], (method, before)
    assert method["withheld"] <= 1.15 * before["withheld"], (method, before)
    assert method["retain"] < 0.1, method
    steps = forgetting_step(run.calibration, 2.0)
    off = dataclasses.replace(config, loss=dataclasses.replace(config.loss, misdirection=0.0), steps=steps,
                              calibration=dataclasses.replace(config.calibration, every=steps))
    out = unlearn(tiny_target, synth_dir, synth_dir, tmp_path / "off", off, progress=False).output_dir
    assert mean_nll(out, documents) < 1.0, (off.steps, run.calibration)


@pytest.mark.parametrize("extra", [{}, {"loss.latent_epsilon": 0.1}], ids=["plain", "latent adversary"])
def test_plain_rmu_frees_the_layers_below_the_first_edited_one_and_edits_the_same(tiny_model_dir, synth_dir,
                                                                                  tmp_path, monkeypatch, extra):
    """The latent adversary too: it runs the edited layers on the forget rows alone, with their own masks and
    positions, which the model builds without the embedding it has freed."""
    import repedit.rmu_loop
    from repedit.layers import release_prefix

    resident: list[int] = []

    def spy(model, first):
        release_prefix(model, first)
        below = [model.embed_tokens, *model.layers[:first]]
        resident.append(sum(p.numel() * p.element_size() for m in below for p in m.parameters() if not p.is_meta))
        resident.append(sum(p.numel() for p in model.layers[first].parameters() if p.is_meta))

    config = RMUConfig.from_dict({**FAST, "steps": 3, **extra})
    monkeypatch.setattr(repedit.rmu_loop, "release_prefix", spy)
    freed = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "freed", config, progress=False)
    assert resident == [0, 0]  # nothing below layer 2 is resident; layer 2 and up are
    monkeypatch.setattr(repedit.rmu_loop, "release_prefix", lambda model, first: None)
    kept = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / "kept", config, progress=False)
    assert [r["loss"] for r in freed.losses] == [r["loss"] for r in kept.losses]
    for name, shard in weight_map(tiny_model_dir).items():
        assert torch.equal(load_tensors(freed.output_dir / shard, {name})[name],
                           load_tensors(kept.output_dir / shard, {name})[name]), name


def test_low_memory_mode_gives_the_same_nlls_and_gradients(tiny_model_dir, synth_dir, tmp_path):
    """``chunk``: the layers above L recomputed in backward and the LM head run a few positions at a
    time give the unchunked path's per-row NLLs and weight gradients (the head and an edited layer's)."""
    model, batch, n = forget_and_retain_batch(tiny_model_dir, synth_dir, 512)
    weights = [model.model.layers[4].mlp.down_proj.weight, model.lm_head.weight]
    rows = torch.ones(batch.hidden.shape[0], dtype=torch.bool)
    rows[1] = False
    results = []
    for chunk in (0, 5):
        for weight in weights:
            weight.requires_grad_(True)
            weight.grad = None
        nll = row_nll(model, layer_output(model, batch, 2, 4), batch, 4, rows, chunk)
        (nll * torch.arange(1.0, len(nll) + 1)).sum().backward()
        results.append((nll.detach(), [w.grad.clone() for w in weights]))
    (plain, plain_grads), (chunked, chunked_grads) = results
    assert int((batch.labels[:, 1:] != -100).sum()) > 5  # several chunks
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
    labelled = (batch.labels[:, 1:] != -100).any(dim=1)
    assert chunked[1] == 0 and chunked.ne(0).tolist() == (labelled & rows).tolist() and labelled.sum() >= 3
    for mine, theirs in zip(chunked_grads, plain_grads, strict=True):
        assert theirs.abs().sum() > 0
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7)
    runs = [unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / f"chunk{chunk}", RMUConfig.from_dict(
        {**FAST, "steps": 2, "loss.retain_nll": 1.0, "loss.chunk": chunk}), progress=False) for chunk in (0, 7)]
    assert [r["retain_nll"] for r in runs[1].losses] == pytest.approx([r["retain_nll"] for r in runs[0].losses],
                                                                      rel=1e-5)


def test_anchor_texts_are_what_the_anchor_holds_and_calibration_still_scores_its_own(tiny_model_dir, synth_dir,
                                                                                     tmp_path):
    """``--anchor-texts``: each step's anchor batch is those texts with the frozen model's h_L on them
    (checked against transformers' own hidden states), cycled, the same texts a step in passes
    (``--micro-batch``); the stop rule's texts stay the ``--calibrate`` ones; without the option the anchor
    holds the calibration texts."""
    from repedit.calibration import Calibrator, read_unseen

    reference = tasked_reference(tmp_path / "reference.jsonl", [(f"Reference text number {i} about rivers.", "Task1")
                                                                 for i in range(3)])
    held = [f"Anchor passage {i}: " + "the hills are green and the river is slow. " * (i + 1) for i in range(5)]
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text("".join(json.dumps({"text": t}) + "\n" for t in held))
    model, tokenizer = load_causal_lm(tiny_model_dir, torch.float32, "cpu"), load_checkpoint_tokenizer(tiny_model_dir)
    scored = [r for r in load_rows(synth_dir, "forget") if r.kind == "sc" and r.task == "Task1"]
    for (texts, expected), micro in itertools.product(((str(anchors), held), (None, unseen_texts(reference))),
                                                      (None, 1)):
        config = RMUConfig.from_dict({**FAST, "batch_size": 2, "micro_batch": micro, "max_length": 128,
                                      "calibration.unseen": reference, "loss.anchor": 1.0, "loss.anchor_texts": texts})
        calibrator = Calibrator(model, config, scored, read_unseen(config, ["Task1"]), tokenizer,
                                torch.device("cpu"))
        assert sum(len(b.mask) for b in calibrator.unseen.batches) == 3  # the stop rule scores the calibration texts
        batches = [expected[i : i + 2] for i in range(0, len(expected), 2)]
        for step in range(len(batches) + 1):
            passes = calibrator.anchor(step)  # a step's anchor batch, in one pass or one a row (--micro-batch 1)
            texts_now = batches[step % len(batches)]
            assert len(passes) == (1 if micro is None else len(texts_now))
            rows = [(batch, frozen, row) for batch, frozen in passes for row in range(batch.mask.shape[0])]
            assert len(rows) == len(texts_now)
            for (batch, frozen, row), text in zip(rows, texts_now, strict=True):
                ids = tokenizer(text, return_tensors="pt")["input_ids"]
                with torch.no_grad():
                    own = model(ids, output_hidden_states=True).hidden_states[4 + 1][0]
                torch.testing.assert_close(frozen[row, : ids.shape[1]], own, rtol=1e-4, atol=1e-4)
                assert int(batch.mask[row].sum()) == ids.shape[1]


def test_an_anchor_share_gives_each_tasks_calibration_texts_to_the_anchor_evenly_and_the_stop_rule_the_rest(
        tiny_model_dir, synth_dir, tmp_path):
    """``--calibrate-anchor-share 0.5``: of each task's texts in file order, the second, fourth, ... are
    the anchor's (after ``--anchor-texts``' own), the others the stop rule's; at 0.25, every fourth."""
    from repedit.calibration import Calibrator, read_unseen

    texts = [(f"Story {i}: the fox ran over the hill number {i}.", "Task1") for i in range(5)]
    texts += [(f"Biography {i}: born in the town of {i} rivers.", "Task2") for i in range(3)]
    order = [texts[i] for i in (0, 5, 1, 2, 6, 3, 7, 4)]  # the tasks interleaved
    reference = tasked_reference(tmp_path / "reference.jsonl", order)
    own = tmp_path / "anchors.jsonl"
    own.write_text(json.dumps({"text": "An anchor text of its own."}) + "\n")
    model, tokenizer = load_causal_lm(tiny_model_dir, torch.float32, "cpu"), load_checkpoint_tokenizer(tiny_model_dir)
    scored = [r for r in load_rows(synth_dir, "forget") if r.kind == "sc" and r.task in ("Task1", "Task2")]
    stories, biographies = [t for t, _ in texts[:5]], [t for t, _ in texts[5:]]
    for share, anchor_texts, held in (
            (0.5, None, [stories[1], biographies[1], stories[3]]),
            (0.5, str(own), ["An anchor text of its own.", stories[1], biographies[1], stories[3]]),
            (0.25, None, [stories[3]])):
        config = RMUConfig.from_dict({**FAST, "batch_size": 64, "max_length": 128, "calibration.unseen": reference,
                                      "calibration.anchor_share": share, "loss.anchor": 1.0,
                                      "loss.anchor_texts": anchor_texts})
        unseen = read_unseen(config, ["Task1", "Task2"])
        assert sorted(zip(unseen.texts, unseen.tasks or [], strict=True)) == sorted(
            t for t in texts if t[0] not in held)
        assert unseen.anchor_texts() == held
        calibrator = Calibrator(model, config, scored, unseen, tokenizer, torch.device("cpu"))
        [(batch, _)] = calibrator.anchor(0)
        expected = tokenizer(held, padding=True, return_tensors="pt")
        assert batch.mask.sum(dim=1).tolist() == expected["attention_mask"].sum(dim=1).tolist()
        scored_texts = 8 - len([t for t in held if t in stories + biographies])
        assert sum(len(b.mask) for b in calibrator.unseen.batches) == scored_texts


@pytest.mark.parametrize("unseen_at", ["check", "start"])
def test_the_stop_rules_attack_scores_the_unseen_texts_as_the_model_scores_them_now_or_at_the_start(
        tiny_model_dir, synth_dir, tmp_path, unseen_at):
    """Per-task levels stay the frozen model's, but a check's attack sets the forget documents against
    the unseen texts' NLLs under the model as it is at the check (``--calibrate-unseen-at check``) or as the
    frozen model read them (start): after an edit that moves the unseen texts (noise on the last edited layer's
    MLP), each task's AUC is the pairwise count (a plain loop here) over the NLLs asked for, and the two differ."""
    from repedit.calibration import Calibrator, read_unseen
    from repedit.data import TASKS

    unseen = load_rows(synthesize(tmp_path / "unseen", seed=1, docs=4), "retain")
    pairs = [(r.document, r.task) for r in unseen if r.kind == "sc"]
    reference = tasked_reference(tmp_path / "reference.jsonl", pairs)
    model, tokenizer = load_causal_lm(tiny_model_dir, torch.float32, "cpu"), load_checkpoint_tokenizer(tiny_model_dir)
    scored = [r for r in load_rows(synth_dir, "forget") if r.kind == "sc"]
    config = RMUConfig.from_dict({**FAST, "max_length": 512, "calibration.unseen": reference,
                                  "calibration.unseen_at": unseen_at})
    calibrator = Calibrator(model, config, scored, read_unseen(config, [r.task for r in scored]), tokenizer,
                            torch.device("cpu"))
    frozen = document_nll(model, tokenizer, [t for t, _ in pairs])
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in model.model.layers[4].mlp.parameters():
            weight.add_(0.5 * torch.randn_like(weight))
    record, _ = calibrator.check(model, 1, {})
    forget_now = document_nll(model, tokenizer, [r.document for r in scored])
    unseen_now = document_nll(model, tokenizer, [t for t, _ in pairs])

    def members_above(members: list[float], nonmembers: list[float]) -> float:
        """The loss attack's AUC: the share of (member, nonmember) pairs whose member has the lower NLL."""
        wins = sum((m < n) + 0.5 * (m == n) for m in members for n in nonmembers)
        return wins / (len(members) * len(nonmembers))

    differs = False
    for task in TASKS:
        members = [v for v, r in zip(forget_now, scored, strict=True) if r.task == task]
        now = members_above(members, [v for v, (_, t) in zip(unseen_now, pairs, strict=True) if t == task])
        before = members_above(members, [v for v, (_, t) in zip(frozen, pairs, strict=True) if t == task])
        assert record["task_auc"][task] == pytest.approx(now if unseen_at == "check" else before, abs=1e-6), task
        differs |= abs(now - before) > 0.05
    assert differs  # the edit moved the unseen texts enough that scoring them anew matters


@pytest.mark.parametrize(("tasked", "level", "follows"), [(False, "auto", "now"), (False, "frozen", "frozen"),
                                                          (True, "auto", "frozen"), (True, "rising", "now")])
def test_calibration_levels_are_measured_once_or_at_every_check_as_asked(tiny_model_dir, synth_dir, tmp_path,
                                                                          tasked, level, follows):
    """``--calibrate-level``: after an edit that moves the unseen texts (the LM head scaled),
    a check's level is the median of their NLLs under the frozen model ("frozen", and "auto" per
    task) or under the model now ("rising", and "auto" for one level): per task when they have tasks."""
    from repedit.calibration import Calibrator, read_unseen
    from repedit.data import TASKS

    unseen = load_rows(synthesize(tmp_path / "unseen", seed=1, docs=4), "retain")
    pairs = [(r.document, r.task) for r in unseen if r.kind == "sc"]
    if tasked:
        reference = tasked_reference(tmp_path / "reference.jsonl", pairs)
    else:
        reference = tmp_path / "reference.jsonl"
        reference.write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in pairs))
    model, tokenizer = load_causal_lm(tiny_model_dir, torch.float32, "cpu"), load_checkpoint_tokenizer(tiny_model_dir)
    scored = [r for r in load_rows(synth_dir, "forget") if r.kind == "sc"]
    config = RMUConfig.from_dict({**FAST, "max_length": 512, "calibration.unseen": str(reference),
                                  "calibration.level": level})
    calibrator = Calibrator(model, config, scored, read_unseen(config, [r.task for r in scored]), tokenizer,
                            torch.device("cpu"))
    nll = {"frozen": document_nll(model, tokenizer, [t for t, _ in pairs])}
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # sharper logits: every NLL moves
    calibrator.check(model, 1, {})
    nll["now"] = document_nll(model, tokenizer, [t for t, _ in pairs])

    def median(values: list[float]) -> float:  # torch's median: the lower of the two middle values
        return sorted(values)[(len(values) - 1) // 2]

    expected = {task: median([v for v, (_, t) in zip(nll[follows], pairs, strict=True) if t == task]) for task in TASKS}
    if tasked:
        assert calibrator.level.tolist() == pytest.approx([expected[t] for t in TASKS], abs=1e-4)
    else:
        assert calibrator.level == pytest.approx(median(nll[follows]), abs=1e-4)
    other = "now" if follows == "frozen" else "frozen"
    assert abs(median(nll[other]) - median(nll[follows])) > 0.05  # the edit moved the level that matters


@pytest.mark.parametrize(("name", "value", "message"), [
    ("level", "sliding", "--calibrate-level: 'sliding'; choose one of auto, frozen, rising"),
    ("goals", "mean", "--calibrate-goals: 'mean'; choose one of median, quantiles"),
    ("unseen_at", "end", "--calibrate-unseen-at: 'end'; choose one of check, start")])
def test_an_unknown_calibration_choice_is_refused_by_its_flag(tmp_path, name, value, message):
    reference = tmp_path / "reference.jsonl"
    reference.write_text(json.dumps({"text": "Unseen."}) + "\n")
    with pytest.raises(ValueError, match=message):
        RMUConfig.from_dict({**FAST, "calibration.unseen": str(reference), f"calibration.{name}": value}).validate(6)


def test_quantile_goals_are_the_unseen_texts_at_each_documents_rank_as_numpy_inverts_them():
    """--calibrate-goals quantiles: a document's goal is its kind's unseen NLLs at quantile (rank + 0.5) / count of
    its rank among its kind's documents (numpy's inverted CDF, the oracle here); a kind with no texts of its own
    reads all of them, as its level does."""
    import numpy as np

    from repedit.calibration import quantile_goals

    generator = torch.Generator().manual_seed(0)
    nlls = torch.rand(11, generator=generator) * 8
    tasks = ["Task1"] * 5 + ["Task2"] * 4 + ["Task3"] * 2
    unseen = torch.rand(13, generator=generator) * 8
    text_tasks = ["Task1"] * 7 + ["Task3"] * 6  # no Task2 texts
    goals = quantile_goals(nlls, tasks, unseen, text_tasks)
    for task in ("Task1", "Task2", "Task3"):
        mine = [i for i, t in enumerate(tasks) if t == task]
        texts = [u for u, t in zip(unseen.tolist(), text_tasks, strict=True) if t == task] or unseen.tolist()
        order = sorted(mine, key=lambda i: nlls[i].item())
        for rank, i in enumerate(order):
            expected = np.quantile(texts, (rank + 0.5) / len(mine), method="inverted_cdf")
            assert goals[i].item() == pytest.approx(float(expected)), (task, rank)


@pytest.mark.parametrize("goals", ["median", "quantiles"])
def test_a_forget_set_spread_like_the_unseen_texts_has_reached_its_quantile_goals_and_half_its_median(
        tiny_model_dir, tmp_path, goals):
    """The retrain oracle's forget documents spread as unseen ones do. Scored documents that are the unseen texts
    themselves all stand at their goals under --calibrate-goals quantiles; under the median level only those at or
    above their kind's median do (counted here from the texts' NLLs), and some do not."""
    from repedit.calibration import Calibrator, read_unseen

    unseen = [r for r in load_rows(synthesize(tmp_path / "unseen", seed=1, docs=6), "retain") if r.kind == "sc"]
    reference = tasked_reference(tmp_path / "reference.jsonl", [(r.document, r.task) for r in unseen])
    model, tokenizer = load_causal_lm(tiny_model_dir, torch.float32, "cpu"), load_checkpoint_tokenizer(tiny_model_dir)
    config = RMUConfig.from_dict({**FAST, "max_length": 512, "calibration.unseen": reference,
                                  "calibration.goals": goals})
    calibrator = Calibrator(model, config, unseen, read_unseen(config, [r.task for r in unseen]), tokenizer,
                            torch.device("cpu"))
    record, _ = calibrator.check(model, 1, {})
    nll = document_nll(model, tokenizer, [r.document for r in unseen])
    at_median = 0
    for task in {r.task for r in unseen}:
        mine = sorted(v for v, r in zip(nll, unseen, strict=True) if r.task == task)
        at_median += sum(v >= mine[(len(mine) - 1) // 2] - 1e-6 for v in mine)
    assert at_median < len(unseen)
    assert record["calibrated_documents"] == (len(unseen) if goals == "quantiles" else at_median)


def test_a_shuffled_anchor_holds_the_same_texts_in_an_order_drawn_with_the_seed(tiny_model_dir, synth_dir, tmp_path):
    """--anchor-shuffle: the anchor holds what it holds unshuffled (the invented documents, then the held calibration
    texts), each once, in an order drawn with the run's seed, so the held texts are no longer its last batch."""
    texts = [(f"An unseen {task} text number {i} about the sea.", task) for i in range(2)
             for task in ("Task1", "Task2", "Task3")]
    reference = tasked_reference(tmp_path / "reference.jsonl", texts)
    orders = {}
    for shuffle, seed in ((False, 0), (True, 0), (True, 1)):
        config = RMUConfig.from_dict({**FAST, "steps": 2, "seed": seed, "calibration.unseen": reference,
                                      "calibration.anchor_share": 0.5, "loss.anchor": 1.0,
                                      "loss.invented_anchors": 4, "loss.anchor_shuffle": shuffle})
        result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / f"out-{shuffle}-{seed}", config,
                         progress=False)
        written = (result.output_dir / "anchor_texts.jsonl").read_text().splitlines()
        orders[shuffle, seed] = [json.loads(line)["text"] for line in written]
    given, held = orders[False, 0], [t for t, _ in texts[3:]]
    assert len(given) == 4 * 3 + 3 and given[-3:] == held
    for seed in (0, 1):
        assert sorted(orders[True, seed]) == sorted(given)
        assert orders[True, seed][-3:] != held and orders[True, seed] != given
    assert orders[True, 0] != orders[True, 1]


def test_the_texts_the_anchor_held_are_written_beside_the_weights(tiny_model_dir, synth_dir, tmp_path):
    """``anchor_texts.jsonl``: with half of each task's calibration texts anchored, the second of each task's two
    (``held_out``'s rule, by hand); with no anchor (nor a share), no file."""
    texts = [(f"An unseen {task} text number {i} about the sea.", task) for i in range(2)
             for task in ("Task1", "Task2", "Task3")]
    reference = tasked_reference(tmp_path / "reference.jsonl", texts)
    for anchor in (1.0, 0.0):
        config = RMUConfig.from_dict({**FAST, "steps": 2, "calibration.unseen": reference,
                                      "calibration.anchor_share": 0.5 if anchor else 0.0, "loss.anchor": anchor})
        result = unlearn(tiny_model_dir, synth_dir, synth_dir, tmp_path / f"out{anchor}", config, progress=False)
        written = result.output_dir / "anchor_texts.jsonl"
        if anchor:
            assert [json.loads(line)["text"] for line in written.read_text().splitlines()] == [t for t, _ in texts[3:]]
        else:
            assert not written.exists()
