"""SearchSpec: JSON round trips, unknown fields and invalid values as SpecErrors naming the field, budgets."""

from __future__ import annotations

import json

import pytest

from pruning.spec import (
    AdapterSpec,
    BackboneSpec,
    LoraSpec,
    PolicySpec,
    PrefixSpec,
    ScheduleSpec,
    SearchSpec,
    SpaceSpec,
    SpecError,
    TaskSpec,
    TrainSpec,
    budget_params,
    parse_budget,
)

TASK = {"train": "train.csv", "dev": "dev.csv"}


def minimal(**extra) -> dict:
    return {"model": "m", "task": dict(TASK), **extra}


def field_of(err: pytest.ExceptionInfo) -> str:
    # from_dict names nested fields from the root ("spec.train.stepz"), validate() without it ("train.steps")
    return err.value.field.removeprefix("spec.")


def test_defaults_round_trip():
    spec = SearchSpec(model="m", task=TaskSpec(**TASK))
    data = spec.to_dict()
    assert data["space"]["types"] == ["lora", "adapter", "prefix"]  # JSON-ready: tuples become lists
    assert SearchSpec.from_dict(data) == spec
    assert SearchSpec.from_dict(json.loads(json.dumps(data))) == spec


def test_every_field_round_trips_through_json():
    spec = SearchSpec(
        model="path/to/model",
        task=TaskSpec(glue="mrpc", data_dir="glue", text_column="s1", text_pair_column="s2", label_column="y",
                      max_train_examples=100, format="tsv"),
        budget="70k",
        space=SpaceSpec(types=("prefix", "lora"), lora=LoraSpec(rank=4, alpha=8.0, dropout=0.0,
                                                                targets=("q", "k", "ffn_in")),
                        adapter=AdapterSpec(size=32, activation="gelu"), prefix=PrefixSpec(length=3)),
        policy=PolicySpec(assignment="warmup", warmup_examples=64, warmup_steps=5, block_cuts=(0.25, 0.75),
                          accumulate="ema", ema_beta=0.5),
        schedule=ScheduleSpec(rounds=6, steps_per_round=7, lr=2e-3, eval_examples=0, max_train_examples=None),
        train=TrainSpec(steps=9, batch_size=4, lr=5e-4, warmup_ratio=0.0, weight_decay=0.01, max_length=64,
                        eval_batch_size=8),
        backbone=BackboneSpec(enabled=True, head_ratio=0.25, neuron_ratio=0.5, target_params=1000,
                              mask_penalty=1e-3, mask_rounds=2, rank_ratio=0.0, save_backbone=True),
        retrain="warm", seed=7, device="cpu")
    text = json.dumps(spec.to_dict())
    back = SearchSpec.from_dict(json.loads(text))
    assert back == spec
    assert back.space.lora.targets == ("q", "k", "ffn_in") and back.policy.block_cuts == (0.25, 0.75)
    assert json.dumps(back.to_dict()) == text
    # the fields that exclude speed mode or need a longer run than the one above
    other = SearchSpec(model="m", task=TaskSpec(glue="sst2", data_dir="glue"), retrain="continue",
                       train=TrainSpec(load_in_4bit=True, gradient_checkpointing=True))
    assert SearchSpec.from_dict(json.loads(json.dumps(other.to_dict()))) == other


def test_budget_keeps_its_type_through_json():
    for budget in (70000, "0.5%", "70k"):
        spec = SearchSpec.from_dict(minimal(budget=budget))
        assert spec.budget == budget
        assert SearchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).budget == budget


def test_from_dict_fills_defaults():
    spec = SearchSpec.from_dict(minimal(train={"steps": 5}))
    assert spec.train == TrainSpec(steps=5)
    assert spec.space == SpaceSpec() and spec.budget == "0.5%"


@pytest.mark.parametrize("data, field", [
    (minimal(stepz=1), "stepz"),
    (minimal(train={"stepz": 1}), "train.stepz"),
    (minimal(space={"lora": {"rnak": 4}}), "space.lora.rnak"),
    (minimal(task={**TASK, "colum": "x"}), "task.colum"),
])
def test_unknown_fields_are_rejected_by_name(data, field):
    with pytest.raises(SpecError, match="unknown field") as err:
        SearchSpec.from_dict(data)
    assert field_of(err) == field


@pytest.mark.parametrize("data, field", [
    ({"task": TASK}, "model"),
    ({"model": "m"}, "task"),
    (minimal(space=None), "space"),
    (minimal(train=[1, 2]), "train"),
])
def test_missing_or_non_object_fields(data, field):
    with pytest.raises(SpecError) as err:
        SearchSpec.from_dict(data)
    assert field_of(err) == field


def test_from_dict_of_a_non_object():
    with pytest.raises(SpecError, match="expected an object, got list"):
        SearchSpec.from_dict([])


INVALID = [
    (minimal(model=""), "model"),
    ({"model": "m", "task": {"train": "a.csv"}}, "task"),
    ({"model": "m", "task": {"glue": "sst3", "data_dir": "g"}}, "task.glue"),
    ({"model": "m", "task": {"glue": "sst2"}}, "task.data_dir"),
    (minimal(task={**TASK, "problem": "ranking"}), "task.problem"),
    (minimal(task={**TASK, "format": "xml"}), "task.format"),
    (minimal(task={**TASK, "max_train_examples": 0}), "task.max_train_examples"),
    (minimal(budget="lots"), "budget"),
    (minimal(budget=0), "budget"),
    (minimal(retrain="lukewarm"), "retrain"),
    (minimal(policy={"calibration_examples": 3}), "policy.calibration_examples"),
    (minimal(space={"types": []}), "space.types"),
    (minimal(space={"types": ["lora", "ia3"]}), "space.types"),
    (minimal(space={"lora": {"rank": 0}}), "space.lora.rank"),
    (minimal(space={"adapter": {"size": 2.5}}), "space.adapter.size"),
    (minimal(space={"prefix": {"length": -1}}), "space.prefix.length"),
    (minimal(train={"steps": 0}), "train.steps"),
    (minimal(train={"batch_size": "8"}), "train.batch_size"),
    (minimal(train={"max_length": 0}), "train.max_length"),
    (minimal(train={"eval_batch_size": 0}), "train.eval_batch_size"),
    (minimal(train={"lr": 0}), "train.lr"),
    (minimal(train={"warmup_ratio": 1.0}), "train.warmup_ratio"),
    (minimal(schedule={"rounds": 0}), "schedule.rounds"),
    (minimal(schedule={"steps_per_round": 0}), "schedule.steps_per_round"),
    (minimal(schedule={"lr": -1.0}), "schedule.lr"),
    (minimal(backbone={"head_ratio": 1.0}), "backbone.head_ratio"),
    (minimal(backbone={"neuron_ratio": -0.1}), "backbone.neuron_ratio"),
    (minimal(backbone={"rank_ratio": 1.5}), "backbone.rank_ratio"),
    (minimal(backbone={"enabled": True, "mask_rounds": 5}, schedule={"rounds": 4}), "backbone.mask_rounds"),
]


@pytest.mark.parametrize("data, field", INVALID, ids=[f for _, f in INVALID])
def test_invalid_values_name_their_field(data, field):
    with pytest.raises(SpecError) as err:
        SearchSpec.from_dict(data)
    assert field_of(err) == field
    assert str(err.value).startswith(f"{err.value.field}: ")


@pytest.mark.parametrize("data, field", [
    pytest.param(minimal(train={"lr": "fast"}), "train.lr", id="lr-string"),
    pytest.param(minimal(train={"warmup_ratio": "x"}), "train.warmup_ratio", id="warmup_ratio-string"),
    pytest.param(minimal(backbone={"head_ratio": None}), "backbone.head_ratio", id="head_ratio-null"),
    pytest.param(minimal(policy={"assignment": "magnitude"}), "policy.assignment", id="assignment-unknown"),
    pytest.param(minimal(policy={"accumulate": "median"}), "policy.accumulate", id="accumulate-unknown"),
    pytest.param(minimal(space={"lora": {"targets": ["q", "query"]}}), "space.lora.targets",
                 id="lora-target-unknown"),
    pytest.param(minimal(train={"steps": True}), "train.steps", id="steps-bool"),
    pytest.param(minimal(policy={"block_cuts": [0.5, 0.2]}), "policy.block_cuts", id="cuts-unsorted"),
    pytest.param(minimal(policy={"block_cuts": [0.5]}), "policy.block_cuts", id="cuts-vs-default-table"),
    pytest.param(minimal(space={"adapter": {"activation": "swish2"}}), "space.adapter.activation",
                 id="activation-unknown"),
])
def test_values_the_engine_cannot_run_are_spec_errors(data, field):
    with pytest.raises(SpecError) as err:
        SearchSpec.from_dict(data)
    assert field_of(err) == field


def test_a_dataclass_spec_validates_too():
    spec = SearchSpec(model="m", task=TaskSpec(**TASK), train=TrainSpec(steps=-3))
    with pytest.raises(SpecError, match=r"^train.steps: must be a positive integer, got -3$") as err:
        spec.validate()
    assert err.value.field == "train.steps" and err.value.message == "must be a positive integer, got -3"
    good = SearchSpec(model="m", task=TaskSpec(**TASK))
    assert good.validate() is good


# --- budgets ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget, parsed", [
    ("0.5%", ("fraction", 0.005)),
    ("100%", ("fraction", 1.0)),
    (" 2 % ", ("fraction", 0.02)),
    ("70k", ("count", 70000.0)),
    ("70K", ("count", 70000.0)),
    ("1.5m", ("count", 1_500_000.0)),
    ("0.5k", ("count", 500.0)),
    (70000, ("count", 70000.0)),
    ("70000", ("count", 70000.0)),
    (1, ("count", 1.0)),
])
def test_parse_budget(budget, parsed):
    kind, value = parse_budget(budget)
    assert kind == parsed[0] and value == pytest.approx(parsed[1], rel=1e-12)


@pytest.mark.parametrize("budget, message", [
    ("lots", "is not a parameter count"),
    ("70 kb", "is not a parameter count"),
    ("-5", "is not a parameter count"),
    ("", "is not a parameter count"),
    ("1e5", "is not a parameter count"),
    (None, "is not a parameter count"),
    (0, "must be >= 1 parameter"),
    (-10, "must be >= 1 parameter"),
    ("0", "must be >= 1 parameter"),
    ("0.0001k", "must be >= 1 parameter"),
    ("150%", r"a percentage must be in \(0, 100\]"),
    ("0%", r"a percentage must be in \(0, 100\]"),
    (True, "must be a parameter count or a percentage"),
])
def test_parse_budget_rejects(budget, message):
    with pytest.raises(SpecError, match=message) as err:
        parse_budget(budget)
    assert err.value.field == "budget"


def test_budget_params():
    assert budget_params("0.5%", 1_000_000) == 5000
    assert budget_params("0.3%", 22_713_216) == 68_139  # int() truncates
    assert budget_params("70k", 123) == 70000
    assert budget_params(8000, 10**9) == 8000
