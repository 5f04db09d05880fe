"""Importance criteria against hand-computed values, and the ImportanceTracker's accumulation over a round."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pruning.criteria import CRITERIA, Criterion, Signals
from pruning.importance import Accumulator, ImportanceTracker
from pruning.modules.base import Unit

W = [torch.tensor([[1.0, -2.0], [0.0, 3.0]])]  # mean(w^2) = 14/4, one exact zero of four
G = [torch.tensor([[0.5, 1.0], [-4.0, -1.0]])]


def measure(name: str, **signals) -> float:
    return CRITERIA[name].measure(Signals(**signals))


def test_registry_has_the_seven_criteria_with_their_timing():
    assert {name: c.when for name, c in CRITERIA.items()} == {
        "weight": "end", "zeros": "end", "threshold": "end",
        "taylor": "step", "gradient": "step",
        "activation": "forward", "importance_ratio": "forward",
    }
    assert all(c.name == name and c.doc for name, c in CRITERIA.items())


def test_weight_is_the_mean_squared_weight():
    assert measure("weight", weights=W) == pytest.approx(14 / 4, rel=1e-7)
    # over several tensors: the mean over all their elements, not the mean of per-tensor means
    two = [torch.tensor([2.0]), torch.tensor([0.0, 0.0, 0.0])]
    assert measure("weight", weights=two) == pytest.approx(4 / 4)


def test_zeros_is_one_minus_the_share_of_exact_zeros():
    assert measure("zeros", weights=W) == pytest.approx(1 - 1 / 4)
    assert measure("zeros", weights=[torch.tensor([1e-30, -1e-30])]) == 1.0
    assert measure("zeros", weights=[torch.zeros(3), torch.ones(1)]) == pytest.approx(1 - 3 / 4)


def test_threshold_counts_tiny_weights_as_zero():
    weights = [torch.tensor([[1.0, -2.0], [1e-7, 3.0]])]
    assert measure("zeros", weights=weights) == 1.0  # 1e-7 is not exactly zero ...
    assert measure("threshold", weights=weights) == pytest.approx(1 - 1 / 4)  # ... but is below 1e-6
    assert measure("threshold", weights=[torch.tensor([-1e-7, 2e-6, -5e-7, 1.0])]) == pytest.approx(1 - 2 / 4)


def test_taylor_is_the_mean_absolute_weight_times_gradient():
    # |w*g| = [0.5, 2, 0, 3]
    assert measure("taylor", weights=W, grads=G) == pytest.approx(5.5 / 4)


def test_gradient_is_the_mean_absolute_gradient():
    assert measure("gradient", weights=W, grads=G) == pytest.approx(6.5 / 4)


def test_activation_is_the_mean_absolute_delta():
    delta = torch.tensor([[1.0, -3.0], [0.0, 2.0], [-2.0, 0.0]])
    assert measure("activation", weights=[], delta=delta, base=torch.ones(3, 2)) == pytest.approx(8 / 6)


def test_importance_ratio_is_the_mean_over_tokens_of_the_norm_ratio():
    delta = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5, 1
    base = torch.tensor([[0.0, 10.0], [2.0, 0.0]])  # norms 10, 2
    assert measure("importance_ratio", weights=[], delta=delta, base=base) == pytest.approx((5 / 10 + 1 / 2) / 2)
    # a zero base does not divide by zero
    assert math.isfinite(measure("importance_ratio", weights=[], delta=delta, base=torch.zeros(2, 2)))


# --- accumulation ----------------------------------------------------------------------------------------------


def test_accumulator_mean_and_bias_corrected_ema():
    mean, ema = Accumulator("mean"), Accumulator("ema", beta=0.5)
    assert mean.value == 0.0 and ema.value == 0.0
    for v in (1.0, 2.0, 3.0):
        mean.add(v)
        ema.add(v)
    assert mean.value == pytest.approx(2.0)
    # m1 = .5, m2 = .25 + 1 = 1.25, m3 = .625 + 1.5 = 2.125; corrected by 1 - .5^3
    assert ema.value == pytest.approx(2.125 / 0.875)
    one = Accumulator("ema", beta=0.9)
    one.add(7.0)
    assert one.value == pytest.approx(7.0)  # bias correction: a single value is itself
    with pytest.raises(ValueError, match="mean"):
        Accumulator("median")


class Fake(Unit):
    """A unit with one parameter vector whose gradients and recorded outputs the tests set by hand."""

    kind = "adapter"

    def __init__(self, layer: int, values: list[float]):
        super().__init__(layer)
        self.w = nn.Parameter(torch.tensor(values))


def step(tracker: ImportanceTracker, unit: Fake, grad: list[float]) -> None:
    unit.w.grad = torch.tensor(grad)
    tracker.after_backward()


def test_step_criteria_take_absolute_values_per_step_then_average():
    unit = Fake(0, [1.0, 2.0])
    tracker = ImportanceTracker([unit], ["taylor", "gradient"])
    with tracker:
        step(tracker, unit, [1.0, 1.0])  # |w*g| mean 1.5, |g| mean 1
        step(tracker, unit, [-1.0, -1.0])  # the same magnitudes; summed first they would cancel to 0
        step(tracker, unit, [0.0, 4.0])  # |w*g| mean 4, |g| mean 2
    scores = tracker.scores()
    assert scores["taylor"]["adapter.0"] == pytest.approx((1.5 + 1.5 + 4) / 3)
    assert scores["gradient"]["adapter.0"] == pytest.approx((1 + 1 + 2) / 3)


def test_step_criteria_with_ema():
    unit = Fake(1, [1.0])
    tracker = ImportanceTracker([unit], ["gradient"], accumulate="ema", beta=0.5)
    with tracker:
        for g in (1.0, -2.0, 3.0):
            step(tracker, unit, [g])
    assert tracker.scores()["gradient"]["adapter.1"] == pytest.approx(2.125 / 0.875)


def test_a_unit_without_gradients_is_skipped_for_that_step():
    unit = Fake(0, [1.0])
    tracker = ImportanceTracker([unit], ["gradient"])
    with tracker:
        step(tracker, unit, [2.0])
        unit.w.grad = None
        tracker.after_backward()
    assert tracker.scores()["gradient"]["adapter.0"] == pytest.approx(2.0)


def test_forward_criteria_count_real_tokens_only_and_average_calls_within_a_step():
    unit = Fake(2, [1.0])
    tracker = ImportanceTracker([unit], ["activation", "importance_ratio"])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    pad = 100.0
    delta = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [pad, pad]],
                          [[1.0, 1.0], [pad, pad], [pad, pad]]])
    base = torch.tensor([[[2.0, 0.0], [2.0, 0.0], [1e-3, 0.0]],
                         [[2.0, 0.0], [1e-3, 0.0], [1e-3, 0.0]]])
    with tracker:
        assert unit.recorder is not None
        tracker.before_forward(mask)
        unit.record(delta, base)  # step 1, call 1: activation 1 over the 3 real tokens
        unit.record(3 * delta, base)  # step 1, call 2 (e.g. the v projection): activation 3
        step(tracker, unit, [0.0])
        tracker.before_forward(mask)
        unit.record(4 * delta, base)  # step 2: activation 4
        step(tracker, unit, [0.0])
    scores = tracker.scores()
    assert scores["activation"]["adapter.2"] == pytest.approx(((1 + 3) / 2 + 4) / 2)
    ratio = math.sqrt(2) / 2  # ||(1, 1)|| / ||(2, 0)||
    assert scores["importance_ratio"]["adapter.2"] == pytest.approx(((ratio + 3 * ratio) / 2 + 4 * ratio) / 2)


def test_forward_without_a_mask_uses_every_token():
    unit = Fake(0, [1.0])
    tracker = ImportanceTracker([unit], ["activation"])
    with tracker:
        tracker.before_forward(None)
        unit.record(torch.tensor([[[1.0], [3.0]]]), torch.ones(1, 2, 1))
        step(tracker, unit, [0.0])
    assert tracker.scores()["activation"]["adapter.0"] == pytest.approx(2.0)


def test_end_criteria_read_the_weights_at_scoring_time():
    unit = Fake(3, [1.0, -2.0, 0.0, 3.0])
    tracker = ImportanceTracker([unit], ["weight", "zeros", "threshold"])
    with tracker:
        pass
    with torch.no_grad():
        unit.w[2] = 1e-7
    assert tracker.scores() == {"threshold": {"adapter.3": pytest.approx(0.75)},
                                "weight": {"adapter.3": pytest.approx((1 + 4 + 1e-14 + 9) / 4)},
                                "zeros": {"adapter.3": 1.0}}


def test_a_fresh_tracker_starts_at_zero_and_recorders_are_detached_after_the_round():
    units = [Fake(0, [1.0]), Fake(1, [2.0])]
    first = ImportanceTracker(units, ["gradient", "activation"])
    with first:
        assert all(u.recorder is not None for u in units)
        first.before_forward(None)
        for u in units:
            u.record(torch.ones(1, 1, 1), torch.ones(1, 1, 1))
            u.w.grad = torch.tensor([5.0])
        first.after_backward()
        units[0].record(torch.ones(1, 1, 1), torch.ones(1, 1, 1))  # pending at the end: dropped
    assert all(u.recorder is None for u in units)
    assert first.scores()["gradient"] == {"adapter.0": 5.0, "adapter.1": 5.0}
    units[0].record(torch.ones(1, 1, 1), torch.ones(1, 1, 1))  # no recorder: nothing happens

    second = ImportanceTracker(units, ["gradient", "activation"])
    with second:
        pass
    assert second.scores() == {"activation": {"adapter.0": 0.0, "adapter.1": 0.0},
                               "gradient": {"adapter.0": 0.0, "adapter.1": 0.0}}


def test_step_only_criteria_do_not_install_recorders():
    unit = Fake(0, [1.0])
    with ImportanceTracker([unit], ["taylor"]):
        assert unit.recorder is None


def test_unknown_criterion_is_rejected():
    with pytest.raises(ValueError, match=r"unknown criteria \['magnitude'\]"):
        ImportanceTracker([], ["weight", "magnitude"])


def test_tracker_on_the_supernet_records_every_unit_on_real_tokens(load_bare, batch, monkeypatch):
    """End to end on the tiny model: one training step with every criterion gives every unit a score, and the
    forward criteria see exactly the real tokens of a padded batch."""
    from pruning.spec import LoraSpec, SpaceSpec
    from pruning.supernet import Supernet

    monkeypatch.setitem(CRITERIA, "tokens", Criterion("tokens", "forward", lambda s: float(s.delta.shape[0]), ""))
    supernet = Supernet(load_bare(), SpaceSpec(lora=LoraSpec(dropout=0.0)))
    tracker = ImportanceTracker(supernet.units.values(), CRITERIA)
    with tracker:
        supernet.train()
        tracker.before_forward(batch["attention_mask"])
        supernet(**batch).sum().backward()
        tracker.after_backward()
    scores = tracker.scores()
    real = float(batch["attention_mask"].sum())
    assert real < batch["attention_mask"].numel()  # the batch does hold padding
    assert scores["tokens"] == {key: real for key in supernet.unit_keys()}
    assert set(scores) == set(CRITERIA)
    assert all(set(per_unit) == set(supernet.unit_keys()) for per_unit in scores.values())
    # a new prefix changes the attention output; new LoRA (B = 0) and adapters (up = 0) add exactly nothing
    for key in supernet.unit_keys():
        kind = key.split(".")[0]
        assert (scores["activation"][key] > 0) == (kind == "prefix"), key
        assert scores["gradient"][key] > 0, key
        assert scores["weight"][key] > 0, key
