"""Regression heads learn standardised labels and are folded back into the labels' units (pruning.regression)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pruning import fit, load
from pruning.backbones import load_model
from pruning.data import load_task
from pruning.regression import fold, standardise_head
from pruning.train import encode, predict
from tests.tiny import toy_examples, write_task

LABELS = [990.0, 1000.0, 1010.0, 1030.0]  # far from 0 and spread far from 1: what a new head cannot reach fast


@pytest.fixture
def regression_model(tiny_model, tokenizer):
    return load_model(tiny_model, 1, "regression", tokenizer.pad_token_id)


def test_the_standardised_head_predicts_mean_plus_std_times_the_layer_and_folds_to_the_same_function(
        regression_model, batch):
    plain = regression_model(**batch).logits
    assert standardise_head(regression_model, LABELS)
    mean, std = float(np.mean(LABELS)), float(np.std(LABELS))
    hooked = regression_model(**batch).logits
    torch.testing.assert_close(hooked, mean + std * plain)
    fold(regression_model)
    assert regression_model.label_scale is None
    assert not regression_model.classifier._forward_hooks
    torch.testing.assert_close(regression_model(**batch).logits, hooked, rtol=1e-5, atol=1e-3)


def test_a_head_the_checkpoint_holds_is_left_in_its_units(regression_model, tmp_path, tokenizer, batch):
    regression_model.save_pretrained(tmp_path / "fine-tuned")  # now the checkpoint has a regression head
    again = load_model(str(tmp_path / "fine-tuned"), 1, "regression", tokenizer.pad_token_id)
    assert "classifier.weight" not in again.newly_initialised
    assert not standardise_head(again, LABELS)
    torch.testing.assert_close(again(**batch).logits, regression_model(**batch).logits)


def test_a_classifier_head_is_not_touched(load_bare):
    assert not standardise_head(load_bare(), LABELS)


def test_labels_far_from_zero_are_reached_in_a_few_steps_and_the_export_predicts_in_their_units(
        make_spec, tmp_path):
    """Without standardisation a new head at lr 3e-3 moves its output by about 0.01 a step: after 8 steps its
    predictions sit near 0, a thousand away from every label."""
    def rows(n, seed):  # the toy sentiment cue shifts the score, around 1000
        return [(text, 1000.0 + 20.0 * label) for text, label in toy_examples(n, seed)]

    train_file, dev_file = write_task(tmp_path / "data", rows(128, 0), rows(32, 1))
    spec = make_spec(task__train=str(train_file), task__dev=str(dev_file), task__problem="regression",
                     train__steps=8)
    result = fit(spec, tmp_path / "out")
    model = load(tmp_path / "out")
    dev = encode(model.tokenizer, load_task(spec.task).dev, spec.train.max_length, "regression")
    predictions = predict(model, dev, 32, model.tokenizer.pad_token_id, torch.device("cpu"))
    assert 950 < predictions.mean() < 1050
    assert np.corrcoef(predictions, dev.labels)[0, 1] == pytest.approx(result.metrics["pearson"], abs=1e-4)

