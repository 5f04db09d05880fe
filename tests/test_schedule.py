"""The budgeted schedule: geometric round targets and cost-aware removals that stop as soon as the target is met."""

from __future__ import annotations

import random

import pytest

from pruning.schedule import choose_removals, round_targets, spread_ranks


def test_round_targets_are_geometric_and_end_at_the_budget():
    # 20800 * (8000/20800)^(1/3) = 15126.6, ^(2/3) = 11000.7
    assert round_targets(20800, 8000, 3) == [15126, 11000, 8000]
    # ratio 1/8: 1000 * (1/8)^(r/3) = 500, 250, then the budget
    assert round_targets(1000, 125, 3) == [500, 250, 125]
    assert round_targets(1000, 10, 2) == [100, 10]


def test_round_targets_edge_cases():
    assert round_targets(1000, 999, 1) == [999]
    assert round_targets(1000, 1000, 3) == [1000, 1000, 1000]  # already within budget: nothing to remove
    assert round_targets(1000, 5000, 2) == [1000, 1000]
    targets = round_targets(123_457, 1_001, 7)
    assert targets[-1] == 1_001 and len(targets) == 7
    assert all(a > b for a, b in zip([123_457] + targets[:-1], targets, strict=True))


def test_choose_removals_is_cost_aware():
    # same importance, but b frees three times the parameters: importance per parameter ranks it first
    importance = {"a": 1.0, "b": 1.0, "c": 2.0}
    params = {"a": 100, "b": 300, "c": 100}
    assert choose_removals(importance, params, 250) == ["b"]
    assert choose_removals(importance, params, 150) == ["b", "a"]
    assert choose_removals(importance, params, 0) == ["b", "a", "c"]
    # a big unit survives only if it is proportionally more important: 3.5/300 > 1/100
    assert choose_removals({"a": 1.0, "b": 3.5, "c": 2.0}, params, 450) == ["a"]


def test_choose_removals_nothing_when_within_target():
    params = {"a": 100, "b": 300}
    assert choose_removals({"a": 1.0, "b": 1.0}, params, 400) == []
    assert choose_removals({"a": 1.0, "b": 1.0}, params, 10_000) == []
    assert choose_removals({}, {}, 0) == []


def test_choose_removals_ties_break_by_key():
    assert choose_removals({"x.1": 1.0, "x.0": 1.0}, {"x.1": 10, "x.0": 10}, 10) == ["x.0"]


@pytest.mark.parametrize("seed", range(20))
def test_choose_removals_stops_as_soon_as_the_target_is_met(seed):
    rng = random.Random(seed)
    keys = [f"u.{i}" for i in range(rng.randint(1, 12))]
    params = {k: rng.choice([1024, 2048, 2128]) for k in keys}
    importance = {k: rng.random() for k in keys}
    total = sum(params.values())
    target = rng.randint(0, total)
    removed = choose_removals(importance, params, target)
    kept = total - sum(params[k] for k in removed)
    assert kept <= target
    assert len(set(removed)) == len(removed)
    if removed:
        assert kept + params[removed[-1]] > target  # the last removal was needed
    mean = total / len(keys)
    order = sorted(keys, key=lambda k: (importance[k] * mean / params[k], k))
    assert removed == order[: len(removed)]  # a prefix of the importance-per-parameter order


def test_spread_ranks_land_within_two_percent_below_the_budget():
    # MiniLM-L6: q, k, v, o take 384 + 384 per rank, FFN in and out 384 + 1536
    per_rank = {f"layer.{layer}.{p}": 768 for layer in range(6) for p in ("q", "k", "v", "o")}
    per_rank |= {f"layer.{layer}.{p}": 1920 for layer in range(6) for p in ("ffn_in", "ffn_out")}
    budget = 6 * 2 * 8 * 768  # LoRA r=8 on q, v: 73,728
    ranks = spread_ranks(per_rank, budget)
    total = sum(ranks[p] * per_rank[p] for p in ranks)
    assert 0.98 * budget <= total <= budget
    assert set(ranks.values()) <= {1, 2} and list(ranks.values()).count(2) > len(ranks) / 2
    lowered = sorted(p for p, r in ranks.items() if r == 1)
    assert all(p.endswith(("ffn_in", "ffn_out")) for p in lowered)  # the largest projections give way first
    assert len({p.split(".")[1] for p in lowered}) >= min(len(lowered), 6) - 1  # spread over depth


def test_spread_ranks_stay_within_what_the_supernet_holds():
    per_rank = {f"layer.{layer}.{p}": 768 for layer in range(2) for p in ("q", "v")}
    ranks = spread_ranks(per_rank, budget=100 * 768, most=dict.fromkeys(per_rank, 8))
    assert set(ranks.values()) == {8}  # the budget would allow 25 each: capped at the supernet's rank
