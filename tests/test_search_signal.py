"""The search's signal (issue: the search decided by unit size, on an untrained supernet): units are scored only
once the supernet has learned, on a validation split carved from train, and the configuration it keeps depends on
the data, on models whose depth blocks hold a single layer each."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from pruning import search
from tests.tiny import NEUTRAL, make_tiny_model, toy_examples, write_task


def length_examples(n: int, seed: int) -> list[tuple[str, int]]:
    """Label 1 for long sentences: a task about length, not about which words occur."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        rows.append((" ".join(rng.choices(NEUTRAL, k=rng.randint(10, 14) if label else rng.randint(2, 5))), label))
    return rows


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    sentiment = write_task(root / "sentiment", toy_examples(256, 0), toy_examples(64, 1))
    length = write_task(root / "length", length_examples(256, 0), length_examples(64, 1))
    noise_rng = random.Random(3)
    noise = write_task(root / "noise", [(t, noise_rng.randint(0, 1)) for t, _ in toy_examples(256, 0)],
                       [(t, noise_rng.randint(0, 1)) for t, _ in toy_examples(64, 1)])
    return {"sentiment": sentiment, "length": length, "noise": noise}


def spec_for(make_spec, model, task, **overrides):
    from pruning import TaskSpec

    spec = make_spec(**overrides)
    return dataclasses.replace(spec, model=model, task=TaskSpec(train=str(task[0]), dev=str(task[1])))


def test_scoring_begins_once_the_supernet_has_learned(make_spec, tiny_model, tasks, tmp_path):
    # the random tiny BERT needs about 150 steps at 3e-3 to beat chance on the toy task
    spec = spec_for(make_spec, tiny_model, tasks["sentiment"], train__steps=400, schedule__learn_max_share=0.5,
                    schedule__learn_check_every=5, schedule__eval_examples=48, schedule__lr=3e-3)
    events = []
    result = search(spec, tmp_path / "out", on_progress=events.append)
    learn = json.loads((tmp_path / "out" / "trace.json").read_text())["learn"]
    assert learn["learned"] is True
    assert 0 < learn["step"] < learn["max_steps"] == 200 and learn["step"] % 5 == 0
    assert learn["validation_loss"] < learn["threshold"] == pytest.approx(0.95 * learn["chance_loss"])
    assert learn["standard_errors"] == 1 and 0 < learn["standard_error"] < learn["threshold"] - learn["validation_loss"]
    assert learn["chance_loss"] == pytest.approx(0.693, abs=0.05)  # two balanced classes
    assert learn["metric_name"] == "accuracy" and learn["metric"] > 0.6
    phases = [e.phase for e in events if e.kind == "phase"]
    assert phases[:3] == ["load", "learn", "search"]
    learn_steps = [e for e in events if e.kind == "step" and e.phase == "learn"]
    assert len(learn_steps) == learn["step"]  # it stopped as soon as the check passed
    assert result.rounds[0].removed  # and only then did it score and remove


def test_a_loss_below_the_threshold_by_less_than_its_noise_does_not_pass(make_spec, tiny_model, tasks, tmp_path):
    """The validation split is a sample: a loss within a standard error of the threshold passes or fails it by
    chance, so the gate asks for learn_standard_errors of them below it, and goes on training until it is."""
    def learn(out: str, standard_errors: float) -> dict:
        spec = spec_for(make_spec, tiny_model, tasks["sentiment"], train__steps=400, schedule__learn_max_share=0.5,
                        schedule__learn_check_every=5, schedule__eval_examples=48, schedule__lr=3e-3,
                        schedule__rounds=1, schedule__learn_standard_errors=standard_errors)
        search(spec, tmp_path / out)
        return json.loads((tmp_path / out / "trace.json").read_text())["learn"]

    bare = learn("threshold-alone", 0.0)  # the threshold alone: the first check below it passes
    assert bare["learned"] and bare["validation_loss"] < bare["threshold"] and bare["standard_error"] > 0
    # as many standard errors as that first pass was below the threshold, and a little more: it no longer passes
    margin = (bare["threshold"] - bare["validation_loss"]) / bare["standard_error"] + 0.01
    strict = learn("with-noise", margin)
    assert strict["step"] > bare["step"]
    assert strict["learned"] == (strict["validation_loss"] + margin * strict["standard_error"] < strict["threshold"])
    assert strict["chance_loss"] == bare["chance_loss"] and strict["threshold"] == bare["threshold"]


@pytest.mark.parametrize("retrain", ["warm", "continue"])
def test_a_supernet_that_cannot_learn_keeps_the_prior(make_spec, tiny_model, tasks, tmp_path, retrain):
    """Scores of a supernet at chance are noise: the search keeps LoRA on every projection at ranks spread to the
    budget, says so, does not train rounds whose choices it would not trust, and trains the prior for all of
    train.steps (with 'continue' too: the learning phase trained a supernet the prior does not keep)."""
    spec = spec_for(make_spec, tiny_model, tasks["noise"], train__steps=40, schedule__learn_max_share=0.5,
                    schedule__learn_check_every=5, schedule__eval_examples=48, budget=3000, retrain=retrain)
    events = []
    result = search(spec, tmp_path / "out", on_progress=events.append)
    trace = json.loads((tmp_path / "out" / "trace.json").read_text())
    learn = trace["learn"]
    assert learn["learned"] is False and learn["step"] == learn["max_steps"] == 20
    assert learn["validation_loss"] >= learn["threshold"]
    assert result.rounds == [] and result.front == []
    layers = len(result.configuration["layers"])
    assert set(result.configuration["units"]) == {f"lora.{layer}" for layer in range(layers)}
    ranks = result.configuration["lora_ranks"]
    assert {path.rsplit(".", 1)[-1] for path in ranks} == {"query", "value"} and len(ranks) == 2 * layers
    assert 0.98 * 3000 <= result.trainable_params <= 3000 and len(set(ranks.values())) <= 2  # evenly spread
    assert trace["prior"]["lora_ranks"] == ranks
    assert result.configuration["prior"] == trace["prior"]["reason"]
    assert "had not learned the task after 20 steps" in result.configuration["prior"]
    assert "No pruning rounds: the supernet had not learned" in (tmp_path / "out" / "README.md").read_text()
    assert not [e for e in events if e.kind == "step" and e.round is not None]
    assert trace["retrain_steps"] == 40
    assert events[-1].done_steps == events[-1].total_steps == 20 + 40  # the rounds left the plan


def test_speed_mode_keeps_the_prior_and_the_whole_backbone_when_the_supernet_cannot_learn(
        make_spec, tiny_model, tasks, tmp_path):
    """Masks learned on a supernet at chance rank heads and neurons by noise as its scores rank units: speed mode
    skips the estimation phase, keeps the prior, prunes neither backbone nor ranks, and says why."""
    spec = spec_for(make_spec, tiny_model, tasks["noise"], train__steps=40, schedule__learn_max_share=0.5,
                    schedule__learn_check_every=5, schedule__eval_examples=48, budget=3000,
                    backbone__enabled=True, backbone__mask_share=0.9)
    assert spec.mask_steps(20) > 0  # an estimation phase would run after this learning phase
    events = []
    result = search(spec, tmp_path / "out", on_progress=events.append)
    trace = json.loads((tmp_path / "out" / "trace.json").read_text())
    assert trace["learn"]["learned"] is False and trace["learn"]["mask_steps"] == 0
    assert "estimate" not in {e.phase for e in events if e.kind == "phase"}
    assert result.rounds == [] and result.configuration["backbone"] is None
    assert result.backbone_params == result.backbone_params_before
    assert trace["prior"]["lora_ranks"] == result.configuration["lora_ranks"]
    assert result.configuration["prior"].endswith("speed mode left the backbone unpruned: its head and neuron "
                                                  "masks learned on that same supernet")
    assert events[-1].done_steps == events[-1].total_steps == 20 + 40  # estimation, rounds, stages left the plan


def test_a_supernet_that_cannot_learn_is_pruned_anyway_when_asked(make_spec, tiny_model, tasks, tmp_path):
    spec = spec_for(make_spec, tiny_model, tasks["noise"], train__steps=40, schedule__learn_max_share=0.5,
                    schedule__learn_check_every=5, schedule__eval_examples=48, schedule__unlearned="prune")
    result = search(spec, tmp_path / "out")
    assert result.configuration["prior"] is None and len(result.rounds) == 3
    assert json.loads((tmp_path / "out" / "trace.json").read_text())["prior"] is None


def test_the_validation_split_comes_from_train_and_is_held_out(make_spec, tasks):
    from pruning.pipeline import _Context

    spec = spec_for(make_spec, make_spec().model, tasks["sentiment"], schedule__eval_examples=40,
                    schedule__max_train_examples=100)
    ctx = _Context.prepare(spec)
    as_rows = lambda data: {tuple(ids) for ids in data.input_ids}  # noqa: E731
    train, dev = as_rows(ctx.train_data), as_rows(ctx.dev_data)
    assert len(ctx.validation) == 40 and len(ctx.search_train) == 100
    assert as_rows(ctx.validation) <= train and as_rows(ctx.search_train) <= train
    assert not as_rows(ctx.validation) & as_rows(ctx.search_train)
    assert not (as_rows(ctx.validation) - train) & dev  # nothing of dev is used by the search


@pytest.mark.parametrize("layers", [3, 6])
def test_the_survivors_depend_on_the_data(make_spec, tasks, tmp_path, layers):
    """With 3 layers every depth block holds one layer and with 6 most do: fusion within a partition made every
    unit score 1.0 there, and the configuration followed unit sizes whatever the task."""
    model = str(make_tiny_model(tmp_path / f"model{layers}", layers=layers))
    configurations = {}
    for name in ("sentiment", "length"):
        spec = spec_for(make_spec, model, tasks[name], budget=3 * layers * 1000, train__steps=100,
                        schedule__learn_max_share=0.5, schedule__learn_check_every=5, schedule__eval_examples=48,
                        schedule__steps_per_round=5, schedule__unlearned="prune")  # scored, learned or not
        result = search(spec, tmp_path / name)
        configurations[name] = result.configuration["units"]
        scores = [u.score for r in result.rounds for u in r.removed]
        assert scores and 1.0 not in scores  # no unit got the constant of a one-unit partition
    assert configurations["sentiment"] != configurations["length"], configurations


def test_chance_is_the_best_constant_prediction_on_the_validation_split():
    """A prior taken from train can be worse than a uniform guess on a differently balanced validation split: an
    untrained model would then pass the learning gate. Chance is the entropy of the split's own labels."""
    import math

    from pruning.train import Encoded, chance_example_losses

    balanced = Encoded([[1]] * 6, None, [1, 1, 2, 2, 0, 0], "classification")
    assert chance_example_losses(balanced) == pytest.approx([math.log(3)] * 6)
    skewed = Encoded([[1]] * 4, None, [0, 0, 0, 1], "classification")
    assert chance_example_losses(skewed) == pytest.approx([-math.log(0.75)] * 3 + [-math.log(0.25)])
    assert chance_example_losses(skewed).mean() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    regression = Encoded([[1]] * 4, None, [1.0, 2.0, 3.0, 4.0], "regression")
    assert chance_example_losses(regression) == pytest.approx([2.25, 0.25, 0.25, 2.25])  # mean: the variance, 1.25


def test_a_validation_split_too_small_to_decide_is_not_used(make_spec, tiny_model, tmp_path):
    rows = toy_examples(12, 0)
    task = write_task(tmp_path / "small", rows, toy_examples(8, 1))
    spec = spec_for(make_spec, tiny_model, task, schedule__learn_max_share=0.5, schedule__eval_examples=16)
    result = search(spec, tmp_path / "out")
    learn = json.loads((tmp_path / "out" / "trace.json").read_text())["learn"]
    assert learn["learned"] is None and learn["step"] == 0
    assert learn["reason"] == "no validation split of at least 16 examples: 12 train examples leave 3 for it " \
                              "(a quarter at most)"
    assert all(r.type_values is None for r in result.rounds)  # nor is it used to weigh the types
