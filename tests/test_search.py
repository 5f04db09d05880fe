"""Whole searches on the tiny model and toy task: the budget, the rounds, progress events, assignments,
cancellation and checkpoint/resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LAYERS, unit_size

from pruning import Cancelled, PolicySpec, ScheduleSpec, SpecError, TrainSpec, search
from pruning.hybrid import DEFAULT_ASSIGNMENT
from pruning.result import PHASES, RoundRecord, SearchResult, pareto_front
from tests.helpers import stop_after

ALL_UNITS = [f"{kind}.{layer}" for layer in range(LAYERS) for kind in ("lora", "adapter", "prefix")]
START = sum(unit_size(k) for k in ALL_UNITS)  # 20800 on the tiny model


def phases(events) -> list[str]:
    return [e.phase for e in events if e.kind == "phase"]


# --- the shared default search (conftest.searched) ----------------------------------------------------------------


def test_search_meets_the_budget(searched):
    result = searched.result
    assert result.budget_params == 8000
    assert result.trainable_params <= 8000
    assert result.trainable_params == sum(unit_size(k) for k in result.configuration["units"])
    assert result.head_params == 130
    assert result.backbone_params == result.backbone_params_before > 0
    assert result.task == "train.csv"  # the task's name: a local task is named after its train file
    assert result.metric_name == "accuracy" and set(result.metrics) == {"accuracy", "f1"}
    assert result.metric == result.metrics["accuracy"]
    assert result.out_dir == str(searched.out)
    assert result.device == "cpu"


def test_search_rounds_remove_units_down_to_the_targets(searched):
    rounds = searched.result.rounds
    assert [r.round for r in rounds] == [1, 2, 3]
    # geometric targets from 20800 to 8000 (see test_schedule)
    assert START == 20800
    assert [r.target_params for r in rounds] == [15126, 11000, 8000]
    left = list(ALL_UNITS)
    previous = START
    for record in rounds:
        removed = [u.unit for u in record.removed]
        assert removed, f"round {record.round} removed nothing"
        assert all(key in left for key in removed)
        left = [key for key in left if key not in removed]
        assert record.units_left == left
        assert not set(removed) & set(record.units_left)
        assert record.trainable_params == sum(unit_size(k) for k in left)
        assert record.trainable_params <= record.target_params < previous
        # removal stopped as soon as the target was met
        assert record.trainable_params + record.removed[-1].params > record.target_params
        assert all(u.params == unit_size(u.unit) for u in record.removed)
        assert record.metric_name == "accuracy" and 0 <= record.metric <= 1
        assert math.isfinite(record.train_loss)
        previous = record.trainable_params
    assert searched.result.configuration["units"] == left


def test_removed_units_carry_their_scores(searched):
    for record in searched.result.rounds:
        for unit in record.removed:
            assert unit.score > 0
            # the raw score of every criterion the default assignment uses
            assert set(unit.scores) == {"activation", "gradient", "importance_ratio", "taylor", "weight"}


def test_pruned_layers_are_the_layers_without_units(searched):
    units = searched.result.configuration["units"]
    expected = [layer for layer in range(LAYERS) if not any(k.endswith(f".{layer}") for k in units)]
    assert searched.result.pruned_layers == expected
    layers = searched.result.configuration["layers"]
    assert [entry["layer"] for entry in layers] == list(range(LAYERS))
    assert [entry["layer"] for entry in layers if not entry["modules"]] == expected


def test_progress_phases_in_order(searched):
    assert phases(searched.events) == ["load", "search", "retrain", "evaluate", "export", "done"]
    assert set(phases(searched.events)) <= set(PHASES)
    elapsed = [e.elapsed_s for e in searched.events]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    assert all(e.rounds == 3 for e in searched.events)


def test_progress_steps_carry_loss_and_params(searched):
    spec, events = searched.spec, searched.events
    steps = [e for e in events if e.kind == "step"]
    search_steps = [e for e in steps if e.phase == "search"]
    retrain_steps = [e for e in steps if e.phase == "retrain"]
    assert len(steps) == len(search_steps) + len(retrain_steps)
    per_round = spec.schedule.steps_per_round
    assert [(e.round, e.step, e.steps) for e in search_steps] == [
        (r, s, per_round) for r in (1, 2, 3) for s in range(1, per_round + 1)]
    # params: what the supernet held while that round trained
    before = [START] + [r.trainable_params for r in searched.result.rounds]
    assert [e.trainable_params for e in search_steps] == [before[e.round - 1] for e in search_steps]
    assert [(e.round, e.step, e.steps) for e in retrain_steps] == [
        (None, s, spec.train.steps) for s in range(1, spec.train.steps + 1)]
    assert all(e.trainable_params == searched.result.trainable_params for e in retrain_steps)
    assert all(isinstance(e.loss, float) and math.isfinite(e.loss) and e.loss > 0 for e in steps)


def test_progress_round_events_carry_the_record(searched):
    rounds = [e for e in searched.events if e.kind == "round"]
    assert [e.round for e in rounds] == [1, 2, 3]
    assert [e.record for e in rounds] == searched.result.rounds
    for event in rounds:
        assert event.phase == "search"
        assert event.trainable_params == event.record.trainable_params
        assert event.metric == event.record.metric and event.loss == event.record.train_loss
    # events are plain data: they serialise to JSON
    json.dumps([e.to_dict() for e in searched.events])


def test_trace_and_result_files(searched):
    trace = json.loads((searched.out / "trace.json").read_text())
    assert [RoundRecord.from_dict(r) for r in trace["rounds"]] == searched.result.rounds
    assert trace["start_params"] == START
    assert trace["targets"] == [15126, 11000, 8000]
    assert trace["warmup"] is None
    assert trace["assignment"] == DEFAULT_ASSIGNMENT
    stored = json.loads((searched.out / "result.json").read_text())
    assert stored == json.loads(json.dumps(searched.result.to_dict()))  # (tuples become lists)
    assert SearchResult.from_dict(stored).rounds == searched.result.rounds


def test_the_front_lists_every_configuration_passed_through(searched):
    result = searched.result
    front = result.front
    assert [p.after_round for p in front] == [0, 1, 2, 3]
    assert [p.params for p in front] == [START, *(r.trainable_params for r in result.rounds)]
    assert [p.metric for p in front[:-1]] == [r.metric for r in result.rounds]  # each round's starting point
    assert front[-1].metric is not None and [p.chosen for p in front] == [False, False, False, True]
    assert front[-1].on_front  # nothing has fewer parameters
    on = sorted((p for p in front if p.on_front), key=lambda p: p.params)
    assert all(a.metric < b.metric for a, b in zip(on, on[1:], strict=False))  # more parameters on the front buy more metric
    assert SearchResult.from_dict(json.loads(json.dumps(result.to_dict()))).front == front


def test_pareto_front_marks_the_dominated_configurations():
    def record(params, metric):
        return RoundRecord(round=1, units_left=[], trainable_params=params, target_params=params,
                           metric_name="accuracy", metric=metric, train_loss=None, removed=[], wall_s=0.0)

    # metrics belong to the configuration a round starts from: 1000 -> 0.7, 800 -> 0.8, 500 -> 0.75, 300 -> 0.6
    front = pareto_front(1000, [record(800, 0.7), record(500, 0.8), record(300, 0.75)], 0.6)
    assert [(p.params, p.metric, p.on_front) for p in front] == [
        (1000, 0.7, False), (800, 0.8, True), (500, 0.75, True), (300, 0.6, True)]
    assert [p.chosen for p in front] == [False, False, False, True]
    assert not pareto_front(10, [record(5, None)], None)[1].on_front  # no metric, no place on the front


# --- other assignments ------------------------------------------------------------------------------------------


def test_search_with_warmup_reports_the_derived_assignment(make_spec, tmp_path):
    spec = make_spec(policy=PolicySpec(assignment="warmup", warmup_examples=24, warmup_steps=2),
                     schedule__rounds=2, schedule__steps_per_round=2, train__steps=2)
    events = []
    result = search(spec, tmp_path / "out", on_progress=events.append)
    assert phases(events) == ["load", "warmup", "search", "retrain", "evaluate", "export", "done"]
    warmup_steps = [e for e in events if e.kind == "step" and e.phase == "warmup"]
    assert [(e.round, e.step, e.steps) for e in warmup_steps] == [(None, 1, 2), (None, 2, 2)]
    assert result.trainable_params <= 8000

    trace = json.loads((tmp_path / "out" / "trace.json").read_text())
    assignment, warmup = trace["assignment"], trace["warmup"]
    from pruning.criteria import CRITERIA

    assert set(assignment) == {"lora", "adapter", "prefix"}
    assert all(len(blocks) == 4 for blocks in assignment.values())
    assert all(names and set(names) <= set(CRITERIA) for blocks in assignment.values() for names in blocks)
    assert warmup["steps"] == 2 and warmup["examples"] == pytest.approx(24, abs=2)
    assert set(warmup["ablation"]) == set(ALL_UNITS)
    # the report of every partition (4 layers: blocks 0, 1, 2; layer 3 is at 75% < 80%) names what was chosen
    assert set(warmup["partitions"]) == {f"{kind}.{block}" for kind in ("lora", "adapter", "prefix")
                                         for block in (0, 1, 2)}
    for name, entry in warmup["partitions"].items():
        kind, block = name.split(".")
        assert entry["chosen"] == assignment[kind][int(block)]
        assert set(entry["agreement"]) == set(CRITERIA)
    # the search then scored the removed units with exactly the derived criteria
    used = {n for blocks in assignment.values() for names in blocks for n in names}
    assert all(set(u.scores) == used for r in result.rounds for u in r.removed)


def test_search_with_random_assignment(make_spec, tmp_path):
    spec = make_spec(policy=PolicySpec(assignment="random"), schedule__rounds=2, schedule__steps_per_round=1,
                     train__steps=1)
    result = search(spec, tmp_path / "out")
    assert result.trainable_params <= 8000
    assert [r.round for r in result.rounds] == [1, 2]
    assert all(0 <= u.score < 1 and u.scores == {} for r in result.rounds for u in r.removed)


def test_search_with_a_single_criterion(make_spec, tmp_path):
    spec = make_spec(policy=PolicySpec(assignment="taylor"), schedule__rounds=1, schedule__steps_per_round=2,
                     train__steps=1)
    result = search(spec, tmp_path / "out")
    assert result.trainable_params <= 8000
    assert all(set(u.scores) == {"taylor"} for u in result.rounds[0].removed)
    trace = json.loads((tmp_path / "out" / "trace.json").read_text())
    assert trace["assignment"] == {kind: [["taylor"]] * 4 for kind in ("lora", "adapter", "prefix")}


def test_search_with_an_invalid_assignment_errors_clearly(make_spec, tmp_path):
    spec = make_spec(policy=PolicySpec(assignment="magnitude"))
    with pytest.raises(SpecError, match=r"policy.assignment: 'magnitude' is not one of default, prunepeft, warmup"):
        search(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_search_with_a_budget_above_the_supernet_removes_nothing(make_spec, tmp_path):
    spec = make_spec(budget=50_000, schedule__rounds=1, schedule__steps_per_round=1, train__steps=1,
                     schedule__eval_examples=0)
    result = search(spec, tmp_path / "out")
    assert result.trainable_params == START and result.pruned_layers == []
    assert [(r.removed, r.target_params, r.metric) for r in result.rounds] == [([], START, None)]


@pytest.mark.parametrize("retrain", ["warm", "fresh", "continue"])
def test_retrain_starts_from_the_supernets_weights_only_when_warm(make_spec, tmp_path, monkeypatch, retrain):
    from safetensors.torch import load_file

    import pruning.pipeline as pipeline

    started: dict = {}
    original = pipeline._retrain_evaluate_export

    def capture(ctx, model, *args, **kwargs):
        started.update({k: v.clone() for k, v in model.trained_state().items() if "lora" in k})
        return original(ctx, model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_retrain_evaluate_export", capture)
    search(make_spec(retrain=retrain, train__steps=12), tmp_path / "out", checkpoint_dir=tmp_path / "ckpt")
    searched = load_file(tmp_path / "ckpt" / "weights-3.safetensors")
    assert started and set(started) <= set(searched)
    same = [torch.equal(started[k], searched[k]) for k in started]
    # warm and continue: every LoRA tensor goes on from the last round; fresh: LoRA's B starts at zero again
    assert all(same) if retrain != "fresh" else not all(same)


@pytest.mark.parametrize("dropout", [False, True])
def test_the_search_trains_without_dropout_unless_asked_and_the_retraining_with_it(make_spec, tmp_path,
                                                                                  monkeypatch, dropout):
    import pruning.pipeline as pipeline

    rates: list[set[float]] = []  # the dropout rates in the model of each training the run started
    original = pipeline.train

    def spy(model, *args, **kwargs):
        rates.append({m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)})
        return original(model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train", spy)
    search(make_spec(schedule__dropout=dropout, space__lora__dropout=0.3), tmp_path / "out")
    *searched, retrained = rates
    assert len(searched) == 3  # the rounds
    assert all(seen == ({0.1, 0.3} if dropout else {0.0}) for seen in searched)
    assert 0.3 in retrained  # the retraining trains as the spec says


@pytest.mark.parametrize("by_length", [True, False])
def test_the_search_and_the_retraining_batch_rows_by_length_as_each_is_asked(make_spec, tmp_path, monkeypatch,
                                                                            by_length):
    import pruning.pipeline as pipeline

    streams = []  # per batch stream the run drew: (rows, by_length)
    original = pipeline.shuffled_batches

    def spy(data, *args, **kwargs):
        streams.append((len(data), kwargs.get("by_length", False)))
        return original(data, *args, **kwargs)

    monkeypatch.setattr(pipeline, "shuffled_batches", spy)
    search(make_spec(schedule__eval_examples=40, schedule__batch_by_length=by_length,
                     train__batch_by_length=not by_length), tmp_path / "out")
    assert streams == [(256 - 40, by_length), (256, not by_length)]  # the search's rows, the retraining's (all)
    assert not TrainSpec().batch_by_length and ScheduleSpec().batch_by_length  # the defaults


def test_continue_trains_the_survivors_for_what_the_search_left_of_the_steps(make_spec, tmp_path, monkeypatch):
    """The final configuration trains train.steps in all: the rounds' 9 steps of 20, then 11 more, decaying from the
    peak learning rate without a second warm-up; the progress counts 20 steps."""
    import pruning.pipeline as pipeline

    retrains = []
    original = pipeline.train

    def recording(model, params, batches, **kwargs):
        if kwargs.get("checkpoint") is not None:  # the retraining (the search's own training checkpoints nothing)
            retrains.append((kwargs["steps"], kwargs["warmup_ratio"]))
        return original(model, params, batches, **kwargs)

    monkeypatch.setattr(pipeline, "train", recording)
    events = []
    spec = make_spec(retrain="continue", train__steps=20)  # 3 rounds of 3 steps, no learning phase
    search(spec, tmp_path / "out", on_progress=events.append)
    assert retrains == [(20 - 9, 0.0)]
    assert events[0].total_steps == events[-1].total_steps == events[-1].done_steps == 20
    trace = json.loads((tmp_path / "out" / "trace.json").read_text())
    assert (trace["searched_steps"], trace["retrain_steps"]) == (9, 11)


def test_continue_keeps_the_total_when_learning_ends_early_and_across_a_resume(make_spec, tmp_path, monkeypatch):
    """A learning phase planned at up to 10 steps ends at once (its check passes): those steps go to the
    retraining, so every event plans the same 40 steps; a search cancelled in round 2 and resumed ends there too."""
    import pruning.pipeline as pipeline

    monkeypatch.setattr(pipeline._Context, "validation_losses",
                        lambda ctx, model: (np.zeros(len(ctx.validation)), np.ones(len(ctx.validation))))
    spec = make_spec(retrain="continue", train__steps=40, schedule__learn_max_share=0.25)
    first, second = [], []
    with pytest.raises(Cancelled):
        search(spec, tmp_path / "out", on_progress=first.append, should_stop=stop_after(4),
               checkpoint_dir=tmp_path / "ckpt")
    search(spec, tmp_path / "out", on_progress=second.append, checkpoint_dir=tmp_path / "ckpt")
    assert {e.total_steps for e in first + second} == {40}
    assert second[-1].done_steps == 40
    trace = json.loads((tmp_path / "out" / "trace.json").read_text())
    assert trace["learn"]["step"] == 0 and (trace["searched_steps"], trace["retrain_steps"]) == (9, 31)
    with pytest.raises(SpecError, match="retrain: 'continue' counts the search's training \\(up to 9 steps\\) "
                                        "within train.steps \\(9\\)"):
        make_spec(retrain="continue", train__steps=9).validate()


@pytest.mark.parametrize("examples", [None, 16])
def test_the_calibration_measures_on_the_examples_asked(make_spec, tmp_path, monkeypatch, examples):
    import pruning.pipeline as pipeline

    sizes = []
    original = pipeline.unit_ablation

    def counting(supernet, data, *args, **kwargs):
        sizes.append(len(data))
        return original(supernet, data, *args, **kwargs)

    monkeypatch.setattr(pipeline, "unit_ablation", counting)
    spec = make_spec(schedule__eval_examples=32, policy__calibration_examples=examples)
    result = search(spec, tmp_path / "out")
    assert sizes and set(sizes) == {examples or 32}
    assert result.rounds[0].type_values is not None  # the types were still weighed


# --- cancellation and checkpoints -------------------------------------------------------------------------------


def test_should_stop_cancels_after_n_steps(make_spec, tmp_path):
    events = []
    with pytest.raises(Cancelled):
        search(make_spec(), tmp_path / "out", on_progress=events.append, should_stop=stop_after(4))
    steps = [(e.round, e.step) for e in events if e.kind == "step"]
    assert steps == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert [e.round for e in events if e.kind == "round"] == [1]
    assert not (tmp_path / "out" / "result.json").exists()


def test_checkpoint_resume_after_cancellation(make_spec, tmp_path):
    spec = make_spec()
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    first: list = []
    with pytest.raises(Cancelled):  # round 1 (3 steps) completes, round 2 is cancelled after one step
        search(spec, out, on_progress=first.append, should_stop=stop_after(4), checkpoint_dir=ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    assert state["round"] == 1
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.json", "weights-1.safetensors"]
    round_one = next(e.record for e in first if e.kind == "round")

    second: list = []
    result = search(spec, out, on_progress=second.append, checkpoint_dir=ckpt)
    assert any(e.kind == "phase" and "resuming after round 1 of 3" in e.message for e in second)
    search_steps = [e for e in second if e.kind == "step" and e.phase == "search"]
    assert search_steps[0].round == 2  # round 1 is not trained again
    assert sorted({e.round for e in search_steps}) == [2, 3]
    # round 1 is reported again on resume (a store that missed it between checkpoint and report gets it), as
    # recorded, then rounds 2 and 3
    resumed_rounds = [e for e in second if e.kind == "round"]
    assert [e.round for e in resumed_rounds] == [1, 2, 3]
    assert resumed_rounds[0].record == round_one
    first_step = next(i for i, e in enumerate(second) if e.kind == "step")
    assert second.index(resumed_rounds[0]) < first_step
    assert phases(second)[-4:] == ["retrain", "evaluate", "export", "done"]
    # the trace holds all three rounds; round 1 is the one recorded before the cancellation
    assert [r.round for r in result.rounds] == [1, 2, 3]
    assert result.rounds[0] == round_one
    assert set(result.rounds[1].units_left) < set(round_one.units_left)
    assert result.trainable_params <= 8000
    trace = json.loads((out / "trace.json").read_text())
    assert [r["round"] for r in trace["rounds"]] == [1, 2, 3]
    assert json.loads((ckpt / "state.json").read_text())["round"] == 3


def test_checkpoint_of_another_spec_is_rejected(make_spec, tmp_path):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Cancelled):
        search(make_spec(), tmp_path / "a", should_stop=stop_after(3), checkpoint_dir=ckpt)
    assert json.loads((ckpt / "state.json").read_text())["round"] == 1
    with pytest.raises(ValueError, match=r"checkpoint in .*ckpt was written for a different spec"):
        search(make_spec(seed=1), tmp_path / "b", checkpoint_dir=ckpt)


# --- the package's lazy entry points -------------------------------------------------------------------------------


def test_pruning_search_stays_the_function_after_the_submodule_is_imported():
    code = ("import pruning.pipeline, pruning.cli, pruning; from pruning import search; "
            "assert callable(pruning.search) and callable(search), type(search)")
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-500:]


def test_progress_counts_the_steps_of_the_whole_run(searched):
    spec, events = searched.spec, searched.events
    planned = spec.schedule.rounds * spec.schedule.steps_per_round + spec.train.steps  # no warm-up, no learning
    assert all(e.total_steps == planned for e in events)
    steps = [e for e in events if e.kind == "step"]
    assert [e.done_steps for e in steps] == list(range(1, planned + 1))
    assert events[-1].done_steps == planned
    retraining = next(i for i, e in enumerate(steps) if e.phase == "retrain")
    assert steps[0].eta_s is None and steps[retraining].eta_s is None  # no pace yet: the retrain sets its own
    assert all(e.eta_s is not None and e.eta_s >= 0 for e in steps[1:retraining] + steps[retraining + 1:])
    assert steps[-1].eta_s == 0


def test_time_left_prices_the_retraining_at_the_search_steps_own_pace():
    """Before the retraining starts, its steps are priced at the search's training steps alone, not at the
    search's pace with its evaluations; the search's own steps left keep that whole pace."""
    from pruning.pipeline import _Reporter

    now = [0.0]
    events = []
    report = _Reporter(events.append, rounds=1, total_steps=10, retrain_steps=6, clock=lambda: now[0])
    report.phase("round")

    def train(on_step, steps):
        for step in range(steps):
            now[0] += 1.0  # a training step takes 1 s
            on_step(step + 1, steps, 0.5)

    train(report.steps(1, 100), 2)
    now[0] += 10.0  # a round's evaluation
    train(report.steps(2, 50), 1)
    # 2 search steps 12 s apart (first step excluded): 6 s a step with evaluations, 1 s a training step
    assert events[-1].eta_s == pytest.approx(6.0 * 1 + 1.0 * 6)
    train(report.steps(2, 50), 1)
    assert events[-1].eta_s == pytest.approx(1.0 * 6)  # only the retraining is left
    report.phase("retrain")
    now[0] += 5.0  # building the survivors
    train(report.steps(None, 50), 3)
    assert events[-1].eta_s == pytest.approx(1.0 * 3)  # its own pace from its first step on


def test_a_reporter_with_continue_moves_unplanned_search_steps_to_the_retraining():
    from pruning.pipeline import _Reporter

    report = _Reporter(None, rounds=1, total_steps=10, retrain_steps=6, within=True)
    report.replan(2)
    assert (report.total, report.retrain_steps) == (10, 8)
    plain = _Reporter(None, rounds=1, total_steps=10, retrain_steps=6)
    plain.replan(2)
    plain.extend(3)
    assert (plain.total, plain.retrain_steps) == (11, 9)


def test_a_learning_phase_that_ends_early_shrinks_the_plan(make_spec, tmp_path):
    spec = make_spec(train__steps=20, schedule__learn_max_share=0.5, schedule__learn_check_every=2,
                     schedule__learn_margin=0.99, schedule__rounds=1, schedule__steps_per_round=1,
                     schedule__unlearned="prune")
    events = []
    search(spec, tmp_path / "out", on_progress=events.append)
    learn = json.loads((tmp_path / "out" / "trace.json").read_text())["learn"]
    assert learn["learned"] is False and learn["step"] == learn["max_steps"] == 10  # a 99% margin is not met
    assert events[0].total_steps == 10 + 1 + 20
    assert events[-1].done_steps == events[-1].total_steps == 31


def test_a_resumed_speed_mode_search_resolves_its_budget_against_the_unpruned_backbone(make_spec, tmp_path):
    from pruning import BackboneSpec

    spec = make_spec(budget="3%", backbone=BackboneSpec(enabled=True, mask_rounds=1, max_drop=None))
    whole = search(spec, tmp_path / "whole")
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Cancelled):  # round 1 pruned the backbone and was checkpointed; round 2 is cancelled
        search(spec, tmp_path / "a", should_stop=stop_after(4), checkpoint_dir=ckpt)
    assert json.loads((ckpt / "state.json").read_text())["backbone"] is not None
    resumed = search(spec, tmp_path / "b", checkpoint_dir=ckpt)
    assert resumed.backbone_params < resumed.backbone_params_before == whole.backbone_params_before
    assert resumed.budget_params == whole.budget_params
    targets = [json.loads((tmp_path / run / "trace.json").read_text())["targets"] for run in ("whole", "b")]
    assert targets[0] == targets[1]
