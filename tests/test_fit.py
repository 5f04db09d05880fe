"""pruning.fit: one fixed configuration trained and scored (the benchmarks' baselines), with given LoRA ranks, and
held out from the validation split so a selection among configurations never looks at dev."""

from __future__ import annotations

import json

import pytest
from conftest import HIDDEN, LAYERS

import pruning
from pruning import LoraSpec, SpaceSpec

PER_RANK = 2 * HIDDEN


def test_fit_trains_the_given_units(make_spec, tmp_path, tiny_model):
    spec = make_spec(train__steps=6)
    events = []
    result = pruning.fit(spec, tmp_path / "out", ["lora.0", "adapter.3"], on_progress=events.append)
    assert result.configuration["units"] == ["lora.0", "adapter.3"] and result.rounds == []
    assert [e.step for e in events if e.kind == "step"] == list(range(1, 7))
    assert result.validation_metrics is None
    assert pruning.evaluate(tmp_path / "out", tiny_model) == result.metrics


def test_fit_with_lora_ranks_per_projection(make_spec, tmp_path, tiny_model):
    spec = make_spec(space=SpaceSpec(types=("lora",), lora=LoraSpec(targets=("q", "k", "v", "o"), rank=2)),
                     train__steps=2)
    paths = {f"bert.encoder.layer.{layer}.attention.{p}": 2 for layer in range(LAYERS)
             for p in ("self.query", "self.key", "self.value", "output.dense")}
    ranks = {**paths, "bert.encoder.layer.0.attention.self.query": 1, "bert.encoder.layer.3.attention.output.dense": 3}
    result = pruning.fit(spec, tmp_path / "out", lora_ranks=ranks)
    assert result.configuration["lora_ranks"] == ranks
    assert result.trainable_params == sum(ranks.values()) * PER_RANK
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["rank_pattern"] == {"bert.encoder.layer.0.attention.self.query": 1,
                                       "bert.encoder.layer.3.attention.output.dense": 3}


def test_fit_held_out_scores_the_validation_split_it_did_not_train_on(make_spec, tmp_path, monkeypatch):
    import pruning.pipeline as pipeline

    seen = {}
    original = pipeline.shuffled_batches

    def spy(data, *args, **kwargs):
        seen["rows"] = len(data)
        return original(data, *args, **kwargs)

    monkeypatch.setattr(pipeline, "shuffled_batches", spy)
    spec = make_spec(schedule__eval_examples=40, train__steps=2)
    result = pruning.fit(spec, tmp_path / "out", ["lora.1"], hold_out=True)
    assert seen["rows"] == 256 - 40  # the toy task's train, less the validation split
    assert set(result.validation_metrics) == {"accuracy", "f1"}
    assert 0 <= result.validation_metrics["accuracy"] <= 1
    pruning.fit(spec, tmp_path / "all", ["lora.1"])
    assert seen["rows"] == 256


@pytest.mark.parametrize("units", [["lora.9"], ["nope.0"]])
def test_fit_refuses_units_that_do_not_exist(make_spec, tmp_path, units):
    with pytest.raises(ValueError, match="beyond the model's 4 layers|not a unit key"):
        pruning.fit(make_spec(), tmp_path / "out", units)
