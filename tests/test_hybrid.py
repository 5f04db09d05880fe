"""The hybrid policy: depth blocks, partitions, rank weights, fusion and the warm-up's criterion choice."""

from __future__ import annotations

import math

import pytest

from pruning.hybrid import (
    DEFAULT_ASSIGNMENT,
    PRUNEPEFT_ASSIGNMENT,
    assign_from_ablation,
    block_of,
    criteria_used,
    fuse,
    partition_units,
    rank_weight,
    uniform_assignment,
)
from pruning.schedule import choose_removals

CUTS = (0.2, 0.5, 0.8)


def test_block_of_six_layers():
    # layer/6 = 0, .17 | .33 | .5, .67 | .83
    assert [block_of(layer, 6, CUTS) for layer in range(6)] == [0, 0, 1, 2, 2, 3]


def test_block_of_twenty_four_layers():
    # cuts at layer 4.8, 12 and 19.2
    assert [block_of(layer, 24, CUTS) for layer in range(24)] == [0] * 5 + [1] * 7 + [2] * 8 + [3] * 4


def test_block_of_other_cuts():
    assert [block_of(layer, 4, (0.5,)) for layer in range(4)] == [0, 0, 1, 1]
    assert [block_of(layer, 3, ()) for layer in range(3)] == [0, 0, 0]


def test_partition_units_by_type_and_block():
    keys = [f"{kind}.{layer}" for layer in range(6) for kind in ("lora", "adapter")]
    assert partition_units(keys, 6, CUTS) == {
        ("lora", 0): ["lora.0", "lora.1"], ("adapter", 0): ["adapter.0", "adapter.1"],
        ("lora", 1): ["lora.2"], ("adapter", 1): ["adapter.2"],
        ("lora", 2): ["lora.3", "lora.4"], ("adapter", 2): ["adapter.3", "adapter.4"],
        ("lora", 3): ["lora.5"], ("adapter", 3): ["adapter.5"],
    }
    assert partition_units(["prefix.3", "prefix.0"], 4, CUTS) == {("prefix", 2): ["prefix.3"],
                                                                  ("prefix", 0): ["prefix.0"]}


@pytest.mark.parametrize("position, expected", [
    (0, 5 / (1 + math.exp(-3))), (1, 5 / (1 + math.exp(-2))), (2, 5 / (1 + math.exp(-1))), (3, 2.5),
    (4, 5 / (1 + math.e)), (6, 5 / (1 + math.exp(3))),
])
def test_rank_weight(position, expected):
    assert rank_weight(position) == pytest.approx(expected, rel=1e-12)


def test_rank_weight_decreases_with_position():
    weights = [rank_weight(p) for p in range(8)]
    assert weights == sorted(weights, reverse=True) and len(set(weights)) == 8


def test_uniform_assignment_and_criteria_used():
    table = uniform_assignment("taylor", ("lora", "prefix"), 3)
    assert table == {"lora": [["taylor"]] * 3, "prefix": [["taylor"]] * 3}
    assert criteria_used(table) == {"taylor"}
    assert criteria_used(PRUNEPEFT_ASSIGNMENT) == {"activation", "threshold", "zeros", "gradient", "weight",
                                                   "taylor", "importance_ratio"}
    # ours drops the two criteria that are constant after a few Adam steps
    assert criteria_used(DEFAULT_ASSIGNMENT) == {"activation", "gradient", "weight", "taylor", "importance_ratio"}
    assert all(len(per_block) == 4 for table in (DEFAULT_ASSIGNMENT, PRUNEPEFT_ASSIGNMENT)
               for per_block in table.values())


def test_zeros_and_threshold_are_constant_after_a_few_adam_steps():
    """Why the default leaves them out: every unit scores exactly 1.0 on both."""
    import torch

    from pruning.criteria import CRITERIA, Signals

    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(8, 64) * 0.01), torch.nn.Parameter(torch.zeros(64, 8))  # LoRA A, B
    optimizer = torch.optim.AdamW([a, b], lr=1e-3)
    for _ in range(3):
        optimizer.zero_grad()
        x, target = torch.randn(4, 64), torch.randn(4, 64)
        (x @ a.T @ b.T - target).pow(2).sum().backward()
        optimizer.step()
    signals = Signals(weights=[a.detach(), b.detach()])
    assert CRITERIA["zeros"].measure(signals) == 1.0
    assert CRITERIA["threshold"].measure(signals) == 1.0


def test_fuse_by_hand():
    scores = {
        "weight": {"adapter.0": 2.0, "adapter.1": 4.0, "adapter.2": -8.0, "lora.0": 3.0, "lora.1": 0.5},
        "taylor": {"adapter.0": 3.0, "adapter.1": 1.0, "adapter.2": 0.0, "lora.0": 0.0, "lora.1": 0.0},
        "zeros": {"adapter.0": 0.5, "adapter.1": 1.0, "adapter.2": 1.0, "lora.0": 1.0, "lora.1": 0.25},
    }
    partitions = {("adapter", 0): ["adapter.0", "adapter.1", "adapter.2"], ("lora", 0): ["lora.0"],
                  ("lora", 3): ["lora.1"]}
    assignment = {"adapter": [["weight", "taylor"]], "lora": [["zeros"], [], [], ["taylor", "zeros"]]}
    w0, w1 = rank_weight(0), rank_weight(1)
    # adapters: percentiles within the type, weight [2/3, 1, 1/3], taylor [1, 2/3, 1/3]
    blend = [(w0 * 2 / 3 + w1 * 1) / (w0 + w1), (w0 * 1 + w1 * 2 / 3) / (w0 + w1), 1 / 3]
    mean = sum(blend) / 3
    # lora.0 (alone in block 0, judged by zeros): zeros among all LoRA units [1.0, 0.25] -> percentile 1
    # lora.1 (alone in block 3, by taylor then zeros): taylor ties [0, 0] -> 0.75 each; zeros -> 0.5
    lora = [1.0, (w0 * 0.75 + w1 * 0.5) / (w0 + w1)]
    fused = fuse(scores, partitions, assignment)
    assert set(fused) == {"adapter.0", "adapter.1", "adapter.2", "lora.0", "lora.1"}
    for key, value in zip(["adapter.0", "adapter.1", "adapter.2"], blend, strict=True):
        assert fused[key] == pytest.approx(value / mean, rel=1e-12)
    assert fused["lora.0"] == pytest.approx(lora[0] / (sum(lora) / 2), rel=1e-12)
    assert fused["lora.1"] == pytest.approx(lora[1] / (sum(lora) / 2), rel=1e-12)
    assert sum(fused[k] for k in ("adapter.0", "adapter.1", "adapter.2")) / 3 == pytest.approx(1.0)
    assert fused["adapter.1"] > fused["adapter.0"] > fused["adapter.2"]  # weight, the first criterion, leads
    assert fused["lora.0"] > 1 > fused["lora.1"]  # singletons are ranked against their type, not fixed at 1


def test_a_unit_alone_in_its_partition_is_not_immune():
    """6 layers cut at 20/50/80%: layer 2 and layer 5 are alone in their blocks. When their criteria say they
    are the least important LoRA units, they are the first LoRA units removed."""
    keys = [f"lora.{layer}" for layer in range(6)]
    partitions = partition_units(keys, 6, (0.2, 0.5, 0.8))
    assert partitions[("lora", 1)] == ["lora.2"] and partitions[("lora", 3)] == ["lora.5"]
    taylor = {"lora.0": 5.0, "lora.1": 4.0, "lora.2": 0.1, "lora.3": 3.0, "lora.4": 2.0, "lora.5": 1.0}
    fused = fuse({"taylor": taylor}, partitions, uniform_assignment("taylor", ["lora"], 4))
    assert min(fused, key=fused.get) == "lora.2"
    assert sorted(fused, key=fused.get)[:2] == ["lora.2", "lora.5"]
    removed = choose_removals(fused, dict.fromkeys(keys, 100), 400)
    assert removed == ["lora.2", "lora.5"]


def test_fuse_weighs_types_by_their_measured_worth():
    scores = {"taylor": {"lora.0": 1.0, "lora.1": 2.0, "adapter.0": 1.0, "adapter.1": 2.0}}
    parts = {("lora", 0): ["lora.0", "lora.1"], ("adapter", 0): ["adapter.0", "adapter.1"]}
    assignment = {"lora": [["taylor"]], "adapter": [["taylor"]]}
    equal = fuse(scores, parts, assignment)
    assert equal["lora.0"] == equal["adapter.0"] and equal["lora.1"] == equal["adapter.1"]
    weighed = fuse(scores, parts, assignment, {"lora": 0.3, "adapter": 0.1})
    assert (weighed["lora.0"] + weighed["lora.1"]) / 2 == pytest.approx(0.3)
    assert (weighed["adapter.0"] + weighed["adapter.1"]) / 2 == pytest.approx(0.1)
    assert weighed["adapter.1"] < weighed["lora.0"]  # the worse type's best unit is below the better type's worst
    assert weighed["lora.1"] / weighed["lora.0"] == pytest.approx(equal["lora.1"] / equal["lora.0"])


def test_fuse_all_tied_scores():
    scores = {"taylor": {"prefix.0": 0.0, "prefix.1": 0.0}, "gradient": {"prefix.0": 1.0, "prefix.1": 3.0}}
    parts = {("prefix", 0): ["prefix.0", "prefix.1"]}
    assert fuse(scores, parts, {"prefix": [["taylor"]]}) == {"prefix.0": 1.0, "prefix.1": 1.0}
    both = fuse(scores, parts, {"prefix": [["taylor", "gradient"]]})
    assert both["prefix.1"] > 1 > both["prefix.0"]  # the tie of taylor leaves gradient to decide


def test_fuse_uses_the_criteria_of_each_block():
    scores = {"weight": {"adapter.0": 1.0, "adapter.3": 1.0, "adapter.1": 2.0, "adapter.2": 1.0},
              "taylor": {"adapter.0": 1.0, "adapter.3": 2.0, "adapter.1": 1.0, "adapter.2": 1.0}}
    parts = {("adapter", 0): ["adapter.0", "adapter.1"], ("adapter", 2): ["adapter.2", "adapter.3"]}
    fused = fuse(scores, parts, {"adapter": [["weight"], [], ["taylor"], []]})
    assert fused["adapter.1"] > fused["adapter.0"]  # weight decides block 0
    assert fused["adapter.3"] > fused["adapter.2"]  # taylor decides block 2


def test_type_values_and_sampling():
    from pruning.calibration import FLOOR, sample_per_type, type_values

    keys = [f"{kind}.{layer}" for layer in range(10) for kind in ("lora", "prefix")]
    chosen = sample_per_type(keys, 4)
    assert [k for k in chosen if k.startswith("lora")] == ["lora.0", "lora.3", "lora.6", "lora.9"]
    assert len(chosen) == 8
    assert sample_per_type(keys[:6], 4) == sorted(keys[:6], key=lambda k: (k.split(".")[0] != "lora", k))
    values = type_values({"lora.0": 0.2, "lora.1": 0.0, "prefix.0": -0.1, "prefix.1": -0.3})
    assert values == {"lora": pytest.approx(0.1), "prefix": FLOOR}


ABLATION_KEYS = ["adapter.0", "adapter.1", "adapter.2"]


def test_assign_from_ablation_picks_the_agreeing_criteria():
    ablation = {"adapter.0": 0.1, "adapter.1": 0.3, "adapter.2": 0.2, "lora.0": 0.5, "lora.1": 0.1, "prefix.0": 1.0}
    scores = {
        "weight": {"adapter.0": 1, "adapter.1": 3, "adapter.2": 2, "lora.0": 1, "lora.1": 2, "prefix.0": 1},  # agrees
        "taylor": {"adapter.0": 3, "adapter.1": 1, "adapter.2": 2, "lora.0": 2, "lora.1": 1, "prefix.0": 1},
        "zeros": {"adapter.0": 1, "adapter.1": 1, "adapter.2": 1, "lora.0": 1, "lora.1": 1, "prefix.0": 1},
        "gradient": {"adapter.0": 1, "adapter.1": 3, "adapter.2": 1, "lora.0": 5, "lora.1": 1, "prefix.0": 1},
    }
    parts = {("adapter", 1): ABLATION_KEYS, ("lora", 0): ["lora.0", "lora.1"], ("prefix", 2): ["prefix.0"]}
    assignment, report = assign_from_ablation(scores, ablation, parts, blocks=4)
    # adapter: weight has rho 1, gradient rho .866 (tie in its ranks), taylor -1, zeros 0 (constant)
    assert assignment["adapter"][1] == ["weight", "gradient"]
    assert report["adapter.1"]["agreement"]["weight"] == pytest.approx(1.0)
    assert report["adapter.1"]["agreement"]["gradient"] == pytest.approx(math.sqrt(3) / 2)
    assert report["adapter.1"]["agreement"]["taylor"] == pytest.approx(-1.0)
    assert report["adapter.1"]["agreement"]["zeros"] == 0.0
    # lora: taylor and gradient agree (rho 1), weight disagrees; top 2 kept
    assert sorted(assignment["lora"][0]) == ["gradient", "taylor"]
    # every other block keeps the fallback table; so does the single-unit prefix partition
    assert assignment["adapter"][0] == DEFAULT_ASSIGNMENT["adapter"][0]
    assert assignment["lora"][1:] == DEFAULT_ASSIGNMENT["lora"][1:]
    assert assignment["prefix"] == DEFAULT_ASSIGNMENT["prefix"]
    assert report["prefix.2"]["chosen"] == DEFAULT_ASSIGNMENT["prefix"][2]
    assert report["adapter.1"]["chosen"] == ["weight", "gradient"]


def test_assign_from_ablation_falls_back_when_nothing_agrees():
    ablation = {"adapter.0": 0.3, "adapter.1": 0.2, "adapter.2": 0.1}
    scores = {"weight": {"adapter.0": 1, "adapter.1": 2, "adapter.2": 3},
              "zeros": {"adapter.0": 1, "adapter.1": 1, "adapter.2": 1}}
    fallback = {"adapter": [["taylor"], ["gradient"], ["weight"], ["zeros"]]}
    assignment, report = assign_from_ablation(scores, ablation, {("adapter", 2): ABLATION_KEYS}, blocks=4, top=1,
                                              fallback=fallback)
    assert assignment == fallback
    assert assignment["adapter"] is not fallback["adapter"]  # the fallback table itself is not modified
    assert report["adapter.2"]["chosen"] == ["weight"]


def test_assign_from_ablation_with_six_blocks():
    keys = [f"adapter.{layer}" for layer in range(10)]
    cuts = (0.1, 0.3, 0.5, 0.7, 0.9)
    parts = partition_units(keys, 10, cuts)
    assert len(parts) == 6
    agreeing = {"weight": {k: float(i) for i, k in enumerate(keys)}}
    assignment, _ = assign_from_ablation(agreeing, {k: float(i) for i, k in enumerate(keys)}, parts, blocks=6)
    assert len(assignment["adapter"]) == 6
    assert all(assignment["adapter"][block] == ["weight"] for block in (1, 2, 3, 4))
    assert assignment["adapter"][0] == assignment["adapter"][5] == ["taylor"]  # single units: the fallback


def test_types_are_measured_against_each_other_only_while_two_are_left():
    from pruning import PolicySpec
    from pruning.hybrid import ImportancePolicy

    policy = ImportancePolicy(PolicySpec(), DEFAULT_ASSIGNMENT, seed=0)
    scores = {name: {k: float(i) for i, k in enumerate(["lora.0", "lora.1", "adapter.0", "adapter.1"])}
              for name in criteria_used(DEFAULT_ASSIGNMENT)}
    measured: list[list[str]] = []

    def ablate(keys: list[str]) -> dict[str, float]:
        measured.append(keys)
        return {k: 0.1 if k.startswith("lora") else 0.01 for k in keys}

    _, worth = policy.importance(["lora.0", "lora.1", "adapter.0", "adapter.1"], 2, scores, ablate)
    assert worth == pytest.approx({"lora": 0.1, "adapter": 0.01}) and len(measured) == 1
    lora_scores = {name: {k: v for k, v in per.items() if k.startswith("lora")} for name, per in scores.items()}
    importance, worth = policy.importance(["lora.0", "lora.1"], 2, lora_scores, ablate)
    assert worth is None and len(measured) == 1  # one type left: no measurement
    assert importance["lora.1"] > importance["lora.0"]


def test_random_pruning_draws_rank_components_at_random_too():
    from pruning import PolicySpec
    from pruning.hybrid import ImportancePolicy

    measured = {("lora.0", "q"): [0.0, 1.0, 2.0, 3.0], ("lora.1", "v"): [5.0, 4.0]}
    assert ImportancePolicy(PolicySpec(), DEFAULT_ASSIGNMENT, seed=0).rank_scores(measured) == measured
    drawn = ImportancePolicy(PolicySpec(assignment="random"), {}, seed=0).rank_scores(measured)
    assert {k: len(v) for k, v in drawn.items()} == {k: len(v) for k, v in measured.items()}
    assert all(0 <= x < 1 for values in drawn.values() for x in values)
