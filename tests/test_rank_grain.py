"""LoRA at rank granularity (space.lora.rank_step): projections shrink a few rank components at a time, by rank
importance, in competition with whole units; the result still exports as one stock-peft adapter."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import HIDDEN, LAYERS

import pruning
from pruning import SpaceSpec, search
from pruning.result import format_round
from pruning.schedule import choose_removals, kept_ranks, rank_chunks

PER_RANK = HIDDEN + HIDDEN  # a row of A (in) and a column of B (out) of a hidden x hidden projection


def test_rank_chunks_share_a_units_importance_by_rank_importance():
    scores = {("lora.0", "q"): [0.1, 0.3, 0.0, 0.2], ("lora.0", "v"): [0.4, 0.0, 0.0, 0.0]}
    per_rank = {("lora.0", "q"): 10, ("lora.0", "v"): 10}
    importance, params = rank_chunks({"lora.0": 2.0}, scores, per_rank, step=2)
    # q sorted [0, .1, .2, .3]: chunks {0, .1} and {.2, .3}; v sorted [0, 0, 0, .4]: {0, 0} and {0, .4}
    assert importance == pytest.approx({"lora.0/q/0": 0.2, "lora.0/q/1": 1.0, "lora.0/v/0": 0.0,
                                        "lora.0/v/1": 0.8})
    assert sum(importance.values()) == pytest.approx(2.0)  # the unit's importance, shared out
    assert params == dict.fromkeys(importance, 20)
    # the least important chunks go first, against an adapter of 30 parameters and importance 1.5
    chosen = choose_removals({**importance, "adapter.0": 1.5}, {**params, "adapter.0": 30}, target=60)
    assert chosen == ["lora.0/v/0", "lora.0/q/0", "lora.0/v/1"]
    assert kept_ranks(chosen[:2], scores, 2) == {("lora.0", "q"): [1, 3], ("lora.0", "v"): [0, 3]}
    assert kept_ranks(chosen, scores, 2) == {("lora.0", "q"): [1, 3], ("lora.0", "v"): []}


def test_rank_chunks_of_an_untrained_unit_share_evenly():
    importance, _ = rank_chunks({"lora.1": 1.0}, {("lora.1", "q"): [0.0] * 4}, {("lora.1", "q"): 8}, step=2)
    assert importance == {"lora.1/q/0": 0.5, "lora.1/q/1": 0.5}


def test_shrinking_a_rank_equals_masking_it(load_bare, make_spec, batch):
    from pruning.supernet import Supernet

    torch.manual_seed(0)
    net = Supernet(load_bare(), make_spec().space, ["lora.1"]).eval()  # no LoRA dropout
    unit = net.unit("lora.1")
    with torch.no_grad():
        for role in unit.targets:
            for linear in unit.ab(role):
                linear.weight.normal_()
    assert unit.num_params() == 2 * 8 * PER_RANK
    keep = [0, 2, 3, 5, 7]
    lora_a, _ = unit.ab("q")
    with torch.no_grad():
        saved = lora_a.weight.clone()
        lora_a.weight[[r for r in range(8) if r not in keep]] = 0  # the masked model
        masked = net(**batch)
        lora_a.weight.copy_(saved)
    net.prune_ranks({("lora.1", "q"): keep})
    assert unit.ranks() == {"q": 5, "v": 8}
    assert unit.num_params() == (5 + 8) * PER_RANK
    torch.testing.assert_close(net(**batch), masked, rtol=0, atol=1e-6)
    net.prune_ranks({("lora.1", "q"): []})  # rank 0: the projection is its frozen base again
    assert unit.ranks() == {"v": 8} and unit.num_params() == 8 * PER_RANK
    assert type(net.model.bert.encoder.layer[1].attention.self.query) is torch.nn.Linear
    net.prune_ranks({("lora.1", "v"): []})
    assert net.unit_keys() == []


@pytest.fixture(scope="module")
def rank_searched(make_spec, tmp_path_factory):
    spec = make_spec(space=SpaceSpec(types=("lora", "prefix"), lora=pruning.LoraSpec(
        targets=("q", "k", "v", "o"), rank_step=2)), budget=6000, schedule__rounds=2, schedule__steps_per_round=4)
    out = tmp_path_factory.mktemp("rank-grain") / "out"
    events = []
    return spec, search(spec, out, on_progress=events.append), out


def test_a_search_at_rank_granularity_meets_the_budget(rank_searched):
    spec, result, out = rank_searched
    assert result.trainable_params <= 6000
    shrunk = [u for r in result.rounds for u in r.removed if u.role is not None]
    assert shrunk, "no projection shrank"
    for unit in shrunk:
        before, after = unit.ranks
        assert unit.unit.startswith("lora.") and 0 <= after < before and (before - after) % 2 == 0
        assert unit.params == (before - after) * PER_RANK
    record = next(r for r in result.rounds if any(u.role for u in r.removed))
    unit = next(u for u in record.removed if u.role)  # the log line names the projection and its ranks
    assert f"{unit.unit} {unit.role} {unit.ranks[0]}->{unit.ranks[1]}" in format_round(record, spec.schedule.rounds)
    ranks = result.configuration["lora_ranks"]
    assert ranks and all(0 < r <= 8 and r % 2 == 0 for r in ranks.values())
    assert len(set(ranks.values())) > 1 or len(ranks) < 4 * LAYERS  # the grain was used, not all-or-nothing
    layers = {u: e for e in result.configuration["layers"] for u in [e["layer"]]}
    lora_params = sum(r * PER_RANK for r in ranks.values())
    prefix_params = sum(2 * 8 * HIDDEN for e in layers.values() if "prefix" in e["modules"])
    assert result.trainable_params == lora_params + prefix_params


def test_a_rank_pruned_result_reloads_and_stock_peft_reproduces_its_lora(rank_searched, tiny_model, batch):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    spec, result, out = rank_searched
    ours = pruning.load(out, tiny_model)
    assert ours.lora_ranks() == result.configuration["lora_ranks"]
    assert pruning.evaluate(out, tiny_model) == result.metrics
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == sorted(result.configuration["lora_ranks"])
    assert {p: r for p, r in adapter_config["rank_pattern"].items()} == {
        p: r for p, r in result.configuration["lora_ranks"].items() if r != 8}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
        stock = PeftModel.from_pretrained(base, str(out)).eval()
    for unit in list(ours.units.values()):
        if unit.kind != "lora":
            unit.set_enabled(False)  # what stock peft holds: the LoRA part
    with torch.no_grad():
        torch.testing.assert_close(stock(**batch).logits, ours(**batch), rtol=0, atol=1e-6)


def test_speed_mode_with_rank_granularity_prunes_ranks_once_by_its_own_tracker(make_spec, tmp_path):
    """While the backbone masks learn, rank chunks are not removed (speed mode prunes ranks when the masks are
    done, by its own tracker of the whole mask phase; it crashed on ranks the round before had sliced)."""
    spec = make_spec(space=SpaceSpec(types=("lora", "adapter"), lora=pruning.LoraSpec(rank_step=2)),
                     backbone=pruning.BackboneSpec(enabled=True, mask_rounds=2, rank_ratio=0.5),
                     schedule__rounds=3, budget=6000)
    result = search(spec, tmp_path / "out")
    first, second, third = result.rounds
    assert all(u.role is None for r in (first, second) for u in r.removed)  # whole units while masks learn
    assert second.backbone_params is not None
    ranks = result.configuration["lora_ranks"]
    assert ranks and result.trainable_params <= 6000
    assert any(r < 8 for r in ranks.values())  # speed mode's rank pruning happened
