"""The calibration's ablations: replaying the outputs of the layers below a unit gives exactly the losses that
recomputing them gives, on an encoder and on a decoder with grouped-query attention, and it skips their work.
Evaluation batches capped in tokens as well as rows change no loss, metric or ablation."""

from __future__ import annotations

import random

import pytest
import torch

from pruning import SpaceSpec, TrainSpec
from pruning.arch import layers_of
from pruning.calibration import FLOAT_BYTES, unit_ablation
from pruning.spec import CPU_EVAL_BATCH_TOKENS
from pruning.train import IGNORE, Encoded, eval_batches, evaluate
from tests.tiny import make_tiny_llama

CPU = torch.device("cpu")


def _supernet(model_dir: str, labels: int, problem: str):
    from pruning.backbones import load_model
    from pruning.supernet import Supernet

    torch.manual_seed(0)
    supernet = Supernet(load_model(model_dir, labels, problem), SpaceSpec()).eval()
    with torch.no_grad():  # trained units: each one changes the loss (fresh LoRA and prefixes would not)
        for unit in supernet.units.values():
            for parameter in unit.trainable():
                parameter.normal_(0, 0.2)
    return supernet


def _data(problem: str, n: int = 21) -> Encoded:
    rng = random.Random(0)
    ids = [[rng.randrange(5, 90) for _ in range(rng.randrange(4, 16))] for _ in range(n)]
    if problem == "completion":  # the loss on the second half of each row
        labels = [[IGNORE] * (len(row) // 2) + row[len(row) // 2:] for row in ids]
        return Encoded(ids, None, labels, problem)
    return Encoded(ids, [[0] * len(row) for row in ids], [rng.randrange(2) for _ in ids], problem)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    return str(make_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


@pytest.mark.parametrize("model", ["bert", "llama"])
def test_replaying_the_layers_below_a_unit_changes_no_loss(model, tiny_model, llama_dir):
    problem = "classification" if model == "bert" else "completion"
    supernet = _supernet(tiny_model if model == "bert" else llama_dir, 2 if model == "bert" else 1, problem)
    data, keys = _data(problem), supernet.unit_keys()
    recomputed = unit_ablation(supernet, data, keys, 8, 0, CPU, replay_bytes=0)
    assert len({round(v, 6) for v in recomputed.values()}) > len(keys) // 2  # the units matter, differently
    batches = eval_batches(data.input_ids, 8)  # one layer's outputs take their padded sizes
    one_layer = FLOAT_BYTES * supernet.model.config.hidden_size * sum(
        len(batch) * max(len(data.input_ids[i]) for i in batch) for batch in batches)
    layers = layers_of(supernet.model, supernet.arch)
    for replayed_layers, replay_bytes in ((1, one_layer), (len(layers) - 1, 1 << 30)):
        calls = [0] * len(layers)
        handles = [layer.get_submodule(supernet.arch.attention).register_forward_hook(
            lambda *_, i=i, calls=calls: calls.__setitem__(i, calls[i] + 1)) for i, layer in enumerate(layers)]
        try:
            replayed = unit_ablation(supernet, data, keys, 8, 0, CPU, replay_bytes=replay_bytes)
        finally:
            for handle in handles:
                handle.remove()
        assert replayed.keys() == recomputed.keys()
        assert all(replayed[k] == pytest.approx(recomputed[k], abs=1e-6) for k in keys)
        # three batches: once for the reference, then once for each ablation at or below the layer, unless replayed
        for i in range(len(layers)):
            ablations = sum(supernet.unit(k).layer <= i for k in keys) if i < replayed_layers else len(keys)
            assert calls[i] == 3 * (1 + ablations), (replay_bytes, i)


def test_a_replayed_layer_is_not_computed(tiny_model):
    supernet = _supernet(tiny_model, 2, "classification")
    data, keys = _data("classification"), ["lora.2", "adapter.3", "prefix.1"]
    calls = []
    first = layers_of(supernet.model, supernet.arch)[0]
    handle = first.attention.register_forward_hook(lambda *_: calls.append(1))
    try:
        unit_ablation(supernet, data, keys, 8, 0, CPU)
    finally:
        handle.remove()
    assert len(calls) == 3  # the reference's three batches; none for the ablations, all of them above layer 0


@pytest.mark.parametrize("max_tokens", [None, 1, 20, 60, 1000])
def test_evaluation_batches_hold_every_row_once_shortest_first_within_rows_and_tokens(max_tokens):
    rows = _data("classification", n=40).input_ids
    batches = eval_batches(rows, 8, max_tokens)
    assert sorted(i for batch in batches for i in batch) == list(range(len(rows)))
    flat = [len(rows[i]) for batch in batches for i in batch]
    assert flat == sorted(flat)
    assert all(len(batch) <= 8 for batch in batches)
    for batch in batches:  # a row longer than the cap is a batch alone; otherwise rows x longest fit the cap
        if max_tokens is not None and len(batch) > 1:
            assert len(batch) * max(len(rows[i]) for i in batch) <= max_tokens
    if max_tokens is None or max_tokens >= 8 * max(map(len, rows)):
        assert [len(b) for b in batches] == [8] * 5  # rows only: as before the token cap
    if max_tokens == 20:  # short rows go several to a batch, long ones alone
        assert len(batches[0]) > 1 and len(batches[-1]) == 1


def test_the_token_cap_is_a_cpus_by_default_and_the_users_when_set():
    assert TrainSpec().eval_tokens("cpu") == CPU_EVAL_BATCH_TOKENS
    assert TrainSpec().eval_tokens("cuda") is None  # an accelerator evaluates large batches cheaply
    chosen = TrainSpec(eval_batch_tokens=300)
    assert chosen.eval_tokens("cuda") == chosen.eval_tokens("cpu") == 300


@pytest.mark.parametrize("model", ["bert", "llama"])
def test_a_token_cap_on_evaluation_batches_changes_no_metric_or_ablation(model, tiny_model, llama_dir):
    problem = "classification" if model == "bert" else "completion"
    supernet = _supernet(tiny_model if model == "bert" else llama_dir, 2 if model == "bert" else 1, problem)
    data, keys = _data(problem), supernet.unit_keys()
    names = ["accuracy", "f1"] if model == "bert" else ["loss", "exact_match"]
    uncapped = evaluate(supernet, data, names, 8, 0, CPU), unit_ablation(supernet, data, keys, 8, 0, CPU)
    capped = evaluate(supernet, data, names, 8, 0, CPU, 24), unit_ablation(supernet, data, keys, 8, 0, CPU, 24)
    assert len(eval_batches(data.input_ids, 8, 24)) > len(eval_batches(data.input_ids, 8))  # the cap bites
    assert capped[0] == pytest.approx(uncapped[0], abs=1e-6)
    assert capped[1] == pytest.approx(uncapped[1], abs=1e-6)


@pytest.mark.parametrize("problem", ["classification", "regression", "completion"])
def test_each_examples_loss_is_its_own_whatever_its_batch_and_they_make_the_mean_loss(problem, tiny_model,
                                                                                        llama_dir):
    from pruning.train import example_losses, loss_of, mean_loss

    model_dir, labels = (llama_dir, 1) if problem == "completion" else (tiny_model, 1 if problem == "regression" else 2)
    supernet, data = _supernet(model_dir, labels, problem), _data(problem)
    if problem == "regression":
        data.labels = [float(label) + 0.5 for label in data.labels]
    losses, counts = example_losses(supernet, data, 8, 0, CPU)
    assert losses.sum() / counts.sum() == pytest.approx(mean_loss(supernet, data, 8, 0, CPU), rel=1e-5)
    alone, _ = example_losses(supernet, data, 1, 0, CPU)  # a batch of its own: no padding, no neighbours
    assert losses == pytest.approx(alone, rel=1e-4)
    if problem == "completion":  # its scored tokens: the completion's, less the first (nothing predicts it)
        assert counts.tolist() == [len(row) - len(row) // 2 for row in data.input_ids]
        assert (losses / counts)[3] == pytest.approx(float(mean_loss(supernet, data.subset([3]), 1, 0, CPU)), rel=1e-5)
    else:
        assert counts.tolist() == [1.0] * len(data)
        from pruning.train import collate, pop_labels

        batch = collate(data, [3], 0, CPU)
        target = pop_labels(batch, problem)
        with torch.no_grad():
            assert losses[3] == pytest.approx(float(loss_of(supernet(**batch), target, problem)), rel=1e-5)


def test_the_standard_error_of_a_loss_difference_per_example_and_per_token():
    import math

    import numpy as np

    from pruning.data.metrics import ratio_standard_error

    rng = np.random.default_rng(0)
    differences = rng.normal(0.1, 0.5, 400)
    ones = np.ones(400)
    assert ratio_standard_error(differences, ones) == pytest.approx(differences.std(ddof=1) / math.sqrt(400))
    # a completion's sums over its tokens: examples with more tokens weigh more, and four times the examples
    # halve the error
    tokens = rng.integers(1, 9, 400).astype(float)
    sums = rng.normal(0.1, 0.5, 400) * tokens
    quadrupled = ratio_standard_error(np.tile(sums, 4), np.tile(tokens, 4))
    assert quadrupled == pytest.approx(ratio_standard_error(sums, tokens) / 2, rel=0.01)
    assert ratio_standard_error(np.full(5, 0.3), np.ones(5)) == 0.0  # no spread, no doubt
    assert ratio_standard_error(np.array([0.3]), np.ones(1)) == math.inf  # one example tells nothing of its spread
