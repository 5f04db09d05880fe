"""Light-PEFT speed mode: masks, structural pruning, LoRA rank pruning, and their export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

import pruning
from pruning import BackboneSpec, ScheduleSpec, SearchSpec, SpaceSpec, TaskSpec, TrainSpec
from pruning.arch import backbone_parameter_count, layer_parameter_count
from pruning.backbone import choose_ranks, plan_pruning
from pruning.backbone.guard import run_guard, stage_specs
from pruning.backbones import load_model
from pruning.supernet import Supernet
from tests.helpers import stop_after


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 900, (4, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[3, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _supernet(tiny_model, masks=True, **kwargs) -> Supernet:
    torch.manual_seed(0)
    net = Supernet(load_model(str(tiny_model), 2, "classification"), SpaceSpec(), masks=masks, **kwargs).eval()
    with torch.no_grad():  # make every unit contribute, so slicing mistakes show in the logits
        for p in net.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def test_gradients_reach_the_masks(tiny_model):
    net = _supernet(tiny_model)
    net(**_batch()).sum().backward()
    for mask in [*net.masks.heads, *net.masks.neurons]:
        assert mask.grad is not None and mask.grad.abs().sum() > 0
    assert {id(p) for p in net.masks.parameters()} <= {id(p) for p in net.trainable_parameters()}


def test_mask_scores_magnitude_and_accumulated_taylor(tiny_model):
    net = _supernet(tiny_model)
    masks = net.masks
    with torch.no_grad():
        masks.heads[0].copy_(torch.tensor([1.0, -0.5, 0.25, 2.0]))
    grads = []
    for seed in (0, 1):
        net.zero_grad()
        net(**_batch(seed)).sum().backward()
        grads.append(masks.heads[0].grad.clone())
        masks.after_backward()
    heads, neurons = masks.scores("magnitude")
    assert torch.equal(heads[0], torch.tensor([1.0, 0.5, 0.25, 2.0]))
    assert len(heads) == len(neurons) == 4 and neurons[0].shape == (128,)
    heads, _ = masks.scores("taylor")
    expected = sum((masks.heads[0].detach() * g).abs() for g in grads) / 2  # |.| per step, then the mean
    torch.testing.assert_close(heads[0], expected)


def test_pruning_zero_masked_heads_and_neurons_leaves_logits_unchanged(tiny_model):
    net = _supernet(tiny_model)
    heads = {0: [0, 2], 1: [1, 2, 3], 2: [], 3: [0, 1, 2, 3]}  # layer 2 loses every head
    neurons = {0: list(range(0, 128, 2)), 1: list(range(100)), 2: list(range(5)), 3: []}
    with torch.no_grad():
        for layer in range(4):
            h, n = net.masks.heads[layer], net.masks.neurons[layer]
            h.uniform_(0.5, 1.5)
            n.uniform_(0.5, 1.5)
            h[[i for i in range(4) if i not in heads[layer]]] = 0.0
            n[[i for i in range(128) if i not in neurons[layer]]] = 0.0
    batch = _batch()
    before = net(**batch)
    layers_before = layer_parameter_count(net.model, net.arch)
    record = net.prune_backbone(heads, neurons)
    after = net(**batch)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # the matrices really shrank: q rows = kept heads * head_dim, FFN columns = kept neurons
    layer0 = net.model.bert.encoder.layer[0]
    assert layer0.attention.self.query.get_base_layer().weight.shape == (2 * 16, 64)
    assert layer0.output.dense.weight.shape == (64, 64)
    assert net.model.bert.encoder.layer[3].output.dense.weight.shape == (64, 0)
    assert net.masks is None
    assert "prefix.2" not in net.unit_keys()  # a layer without heads has nothing to prefix
    assert net.unit("prefix.0").keys.shape[0] == 2
    assert record["removed_layers"] == []
    assert record["layer_params_after"] == layer_parameter_count(net.model, net.arch) < layers_before


def test_a_layer_without_heads_and_neurons_is_reported_removed(tiny_model):
    net = _supernet(tiny_model)
    heads = {0: [0, 1, 2, 3], 1: [], 2: [1], 3: [0]}
    neurons = {0: list(range(128)), 1: [], 2: [3], 3: [4]}
    with torch.no_grad():
        for layer in range(4):
            keep_h = torch.zeros(4)
            keep_h[heads[layer]] = 1.0
            keep_n = torch.zeros(128)
            keep_n[neurons[layer]] = 1.0
            net.masks.heads[layer].copy_(keep_h)
            net.masks.neurons[layer].copy_(keep_n)
    before = net(**_batch())
    record = net.prune_backbone(heads, neurons)
    torch.testing.assert_close(net(**_batch()), before, rtol=1e-5, atol=1e-5)
    assert record["removed_layers"] == [1]


def test_plan_pruning_ratios_and_target():
    scores = ([torch.tensor([0.9, 0.1, 0.5]), torch.tensor([0.2, 0.8, 0.7])],
              [torch.tensor([0.3, 0.9, 0.1, 0.6]), torch.tensor([0.05, 0.95, 0.4, 0.8])])
    heads, neurons = plan_pruning(*scores, BackboneSpec(head_ratio=1 / 3, neuron_ratio=0.25), 100, 10, 10_000)
    assert heads == {0: [0, 2], 1: [1, 2]}  # per layer: the weakest third of each layer's heads
    assert neurons == {0: [0, 1, 3], 1: [1, 2, 3]}  # globally: 0.05 and 0.1 go
    # target: heads and neurons ranked together by mask magnitude, removed until the layers hold <= 9_880:
    # the 0.05 neuron (-10), the 0.1 head (-100), the 0.1 neuron (-10), then stop
    heads, neurons = plan_pruning(*scores, BackboneSpec(target_params=9_880), 100, 10, 10_000)
    assert neurons == {0: [0, 1, 3], 1: [1, 2, 3]}
    assert heads == {0: [0, 2], 1: [0, 1, 2]}


def test_choose_ranks_prunes_globally_and_keeps_one_per_module():
    importance = {("lora.0", "q"): torch.tensor([0.1, 0.2, 0.9, 0.05]),
                  ("lora.1", "v"): torch.tensor([0.01, 0.02, 0.03, 0.04])}
    kept = choose_ranks(importance, 0.5)
    # four of eight ranks go: the four weakest are all lora.1's, but it keeps its best one, so the fourth
    # removal falls on lora.0's weakest (0.05)
    assert kept == {("lora.0", "q"): [0, 1, 2], ("lora.1", "v"): [3]}


def test_rank_importance_is_the_first_order_loss_change_of_removing_the_component(tiny_model):
    """The same quantity for a narrow (q: 64 -> 64) and a wide (ffn_out: 128 -> 64) projection: the derivative of
    the loss along shrinking one rank component, measured here by central differences."""
    from pruning.backbone import RankTracker

    net = _supernet(tiny_model, masks=False).double()  # the loss changes by ~1e-8: below float32's resolution
    batch, labels = _batch(), torch.tensor([0, 1, 1, 0])

    def loss() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(net(**batch), labels)

    tracker = RankTracker(net.units.values())
    loss().backward()
    tracker.after_backward()
    importance = tracker.importance()
    for role in ("q", "ffn_out"):
        lora_a, _ = net.unit("lora.1").ab(role)
        for rank in (0, 5):
            changes = []
            with torch.no_grad():
                for factor in (1 + 1e-3, 1 - 1e-3):
                    lora_a.weight[rank] *= factor
                    changes.append(float(loss()))
                    lora_a.weight[rank] /= factor
            derivative = (changes[0] - changes[1]) / 2e-3  # d loss / d (scale of component `rank`)
            assert importance["lora.1", role][rank].item() == pytest.approx(abs(derivative), rel=1e-3)


def test_lora_rank_slicing_matches_the_kept_ranks(tiny_model):
    net = _supernet(tiny_model, masks=False)
    unit = net.unit("lora.1")
    lora_a, lora_b = unit.ab("q")
    x = torch.randn(3, 64)
    keep = [0, 3, 5]
    expected = (x @ lora_a.weight[keep].T) @ lora_b.weight[:, keep].T
    params_before = net.peft_params()
    net.prune_ranks({("lora.1", "q"): keep})
    lora_a, lora_b = unit.ab("q")
    torch.testing.assert_close(lora_b(lora_a(x)), expected)
    assert unit.ranks() == {"q": 3, "k": 8, "v": 8, "o": 8, "ffn_in": 8, "ffn_out": 8}
    assert net.peft_params() == params_before - 5 * (64 + 64)
    assert net.lora_ranks()["bert.encoder.layer.1.attention.self.query"] == 3


def test_head_pruning_slices_lora_on_pruned_projections(tiny_model):
    space = SpaceSpec(lora=pruning.LoraSpec(targets=("q", "v", "o", "ffn_in", "ffn_out")))
    torch.manual_seed(0)
    net = Supernet(load_model(str(tiny_model), 2, "classification"), space, masks=True).eval()
    with torch.no_grad():
        for p in net.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
        net.masks.heads[0][1] = 0.0
        net.masks.neurons[0][:64] = 0.0
    before = net(**_batch())
    net.prune_backbone({0: [0, 2, 3], 1: [0, 1, 2, 3], 2: [0, 1, 2, 3], 3: [0, 1, 2, 3]},
                       {0: list(range(64, 128)), 1: list(range(128)), 2: list(range(128)), 3: list(range(128))})
    torch.testing.assert_close(net(**_batch()), before, rtol=1e-5, atol=1e-5)
    layer0 = net.model.bert.encoder.layer[0]
    assert layer0.attention.output.dense.lora_A["default"].weight.shape == (8, 48)
    assert layer0.attention.self.query.lora_B["default"].weight.shape == (48, 8)
    assert layer0.intermediate.dense.lora_B["default"].weight.shape == (64, 8)
    assert layer0.output.dense.lora_A["default"].weight.shape == (8, 64)


def test_switched_off_masks_act_as_zero_and_come_back_with_their_values(tiny_model):
    net = _supernet(tiny_model)
    with torch.no_grad():
        for mask in [*net.masks.heads, *net.masks.neurons]:
            mask.uniform_(0.5, 1.5)
    batch, learned = _batch(), [m.detach().clone() for m in [*net.masks.heads, *net.masks.neurons]]
    before = net(**batch)
    heads = {0: [0, 2], 1: [1, 2, 3], 2: [], 3: [0, 1, 2, 3]}
    neurons = {0: list(range(0, 128, 2)), 1: list(range(100)), 2: [], 3: list(range(128))}
    net.masks.keep_only(heads, neurons)
    off = net(**batch)
    with torch.no_grad():  # the same model with those masks at 0
        zeroed = [m.clone() for m in learned]
        for layer in range(4):
            zeroed[layer][[i for i in range(4) if i not in heads[layer]]] = 0.0
            zeroed[4 + layer][[i for i in range(128) if i not in neurons[layer]]] = 0.0
        for mask, value in zip([*net.masks.heads, *net.masks.neurons], zeroed, strict=True):
            mask.copy_(value)
        net.masks.keep_only(None, None)
        torch.testing.assert_close(net(**batch), off)
        for mask, value in zip([*net.masks.heads, *net.masks.neurons], learned, strict=True):
            mask.copy_(value)
    assert not torch.allclose(off, before)
    torch.testing.assert_close(net(**batch), before)  # all on again: the learned values are intact


def test_guard_stages_scale_the_ratios_and_the_target_and_are_nested():
    speed = BackboneSpec(enabled=True, head_ratio=0.5, neuron_ratio=0.4, stages=4)
    assert [(s.head_ratio, round(s.neuron_ratio, 6)) for s in stage_specs(speed, 1000)] == [
        (0.125, 0.1), (0.25, 0.2), (0.375, 0.3), (0.5, 0.4)]
    assert [s.target_params for s in stage_specs(BackboneSpec(target_params=600, stages=2), 1000)] == [800, 600]
    scores = ([torch.rand(4), torch.rand(4)], [torch.rand(50), torch.rand(50)])
    kept = [plan_pruning(*scores, s, 100, 10, 10_000) for s in stage_specs(speed, 10_000)]
    for earlier, later in zip(kept, kept[1:], strict=False):
        for layer in range(2):
            assert set(later[0][layer]) <= set(earlier[0][layer]) and set(later[1][layer]) <= set(earlier[1][layer])


@pytest.mark.parametrize("name, references, metrics, accepted, tried", [
    ("accuracy", [0.90] * 4, [0.905, 0.895, 0.885, 0.80], 1, 3),  # stage 3 falls 1.5 points: stage 2 is kept
    ("accuracy", [0.90] * 2, [0.85, 0.90], -1, 1),  # the first stage already falls too far: nothing is removed
    ("f1", [0.80] * 3, [0.80, 0.795, 0.791], 2, 3),  # every stage within 1 point: the target is reached
    ("loss", [2.0] * 2, [2.01, 2.03], 0, 2),  # lower is better: 1.5 % worse than 2.0 is too much
    # the unpruned twin goes on learning: stage 3 is above the metric before pruning, but 2 points below its twin's
    ("accuracy", [0.90, 0.92, 0.94], [0.905, 0.915, 0.92], 1, 3),
])
def test_the_guard_keeps_the_last_stage_within_max_drop(name, references, metrics, accepted, tried):
    plans = [f"plan{i}" for i in range(len(metrics))]
    seen = []

    def try_plan(plan):
        seen.append(plan)
        return metrics[len(seen) - 1], references[len(seen) - 1], None

    index, stages, why = run_guard(plans, [900 - 100 * i for i in range(len(plans))], try_plan, name, max_drop=1.0)
    assert (index, len(stages), seen) == (accepted, tried, plans[:tried])  # no stage is tried past the failure
    assert [s["metric"] for s in stages] == metrics[:tried]
    assert all(s["drop"] <= 1.0 for s in stages[:accepted + 1])
    if tried < len(plans) or stages[-1]["drop"] > 1.0:
        assert stages[-1]["drop"] > 1.0 and f"stage {tried} of {len(plans)}" in why
    else:
        assert why == "reached the target within max_drop"


def test_a_guard_stop_gives_the_drops_standard_error():
    _, stages, why = run_guard(["plan"], [900], lambda plan: (0.88, 0.90, 1.7), "accuracy", max_drop=1.0)
    assert stages[0]["drop_se"] == 1.7
    assert why.startswith("stage 1 of 1 fell 2.00 points (its standard error on these examples: 1.70) below")


def test_the_drops_standard_error_is_the_paired_one():
    from pruning.data.metrics import drop_standard_error

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    reference = np.where(rng.random(400) < 0.85, labels, 1 - labels)  # right on about 85 %
    assert drop_standard_error("accuracy", labels, reference, reference.copy()) == 0.0  # the same predictions
    changed = reference.copy()
    flipped = rng.choice(400, 40, replace=False)
    changed[flipped] = 1 - changed[flipped]
    # accuracy: the drop is the mean of per-example differences in {-1, 0, 1}; its standard error, in points
    differences = (reference == labels).astype(float) - (changed == labels)
    analytic = 100 * differences.std(ddof=1) / np.sqrt(400)
    assert drop_standard_error("accuracy", labels, reference, changed) == pytest.approx(analytic, rel=0.2)
    # the examples both get right or wrong cancel: far below two independent samples' spread
    unpaired = 100 * np.sqrt(2 * 0.85 * 0.15 / 400)
    assert drop_standard_error("accuracy", labels, reference, changed) < unpaired
    assert drop_standard_error("pearson", labels.astype(float), reference + 0.0, changed + 0.0) > 0


def test_a_guarded_search_removes_the_last_stage_its_validation_metric_accepts(tiny_model, toy_task, tmp_path,
                                                                              monkeypatch):
    """The validation metric is scripted: it falls 1 point per 10 % of heads switched off, so with max_drop 3
    the first stage (1 head of 4 per layer) passes and the second (2 of 4) does not."""
    from pruning import pipeline

    def scripted_metric(ctx, model, data):
        scored.append(len(data))
        if model.masks is None:
            return 0.9, None
        on = [model.masks.get_buffer(f"on{layer}") for layer in range(len(model.masks.heads))]
        return 0.9 - 0.1 * float(1 - torch.cat(on).mean()), None

    scored = []
    monkeypatch.setattr(pipeline._Context, "guard_scores", scripted_metric)
    train, dev = toy_task
    spec = SearchSpec(model=str(tiny_model), task=TaskSpec(train=str(train), dev=str(dev)), budget=9000,
                      schedule=ScheduleSpec(rounds=2, steps_per_round=3, eval_examples=32, max_train_examples=100,
                                            unlearned="prune"),  # the tiny model learns nothing in 1 step
                      train=TrainSpec(steps=4, batch_size=16),
                      backbone=BackboneSpec(enabled=True, head_ratio=0.75, neuron_ratio=0.3, max_drop=3.0,
                                            stages=3, stage_steps=2, rank_ratio=0.0, guard_examples=80))
    events = []
    result = pruning.search(spec, tmp_path / "out", on_progress=events.append)
    record = result.configuration["backbone"]
    guard = record["guard"]
    assert guard["reference"] == pytest.approx(0.9) and guard["accepted_stage"] == 1
    assert guard["examples"] == 80 and scored.count(80) == 1 + 2 * 2  # before the stages; 2 stages, each twinned
    assert [s["reference"] for s in guard["stages"]] == [pytest.approx(0.9)] * 2  # the unpruned twin's, per stage
    assert [round(s["drop"], 6) for s in guard["stages"]] == [2.5, 5.0]  # stage 3 was never tried
    assert guard["stopped"].startswith("stage 2 of 3 fell 5.00 points") and "kept stage 1" in guard["stopped"]
    assert all(len(kept) == 3 for kept in record["heads"].values())  # stage 1: a quarter of the heads
    assert sum(len(k) for k in record["neurons"].values()) == 4 * 128 - int(4 * 128 * 0.1)
    assert guard["reached_share"] < guard["asked_share"]
    removed = 1 - record["layer_params_after"] / record["layer_params_before"]
    assert removed == pytest.approx(guard["reached_share"], abs=0.01)
    # the stages' recovery steps are reported, and the plan shrinks by the stage never tried
    assert events[-1].done_steps == events[-1].total_steps == spec.planned_steps() - 2
    learned = json.loads((Path(result.out_dir) / "trace.json").read_text())
    assert learned["searched_steps"] == learned["learn"]["step"] + 2 * 3 + 2 * 2  # rounds, then 2 stages tried
    card = (Path(result.out_dir) / "README.md").read_text()
    assert f"asked {guard['asked_share']:.1%}, guard: stage 2 of 3 fell" in card

    # cancelled in round 2 and resumed: the stages tried before are counted done, the one never tried is not planned
    resumed = []
    with pytest.raises(pruning.Cancelled):
        pruning.search(spec, tmp_path / "again", checkpoint_dir=tmp_path / "ckpt",
                       should_stop=stop_after(learned["learn"]["step"] + 3 + 2 * 2 + 1))
    pruning.search(spec, tmp_path / "again", checkpoint_dir=tmp_path / "ckpt", on_progress=resumed.append)
    assert resumed[-1].done_steps == resumed[-1].total_steps == spec.planned_steps() - 2


@pytest.fixture(scope="module")
def speed_result(tiny_model, toy_task, tmp_path_factory):
    train, dev = toy_task
    spec = SearchSpec(model=str(tiny_model), task=TaskSpec(train=str(train), dev=str(dev)), budget=9000,
                      schedule=ScheduleSpec(rounds=3, steps_per_round=6, unlearned="prune"),  # pruned, learned or not
                      train=TrainSpec(steps=12, batch_size=16),
                      backbone=BackboneSpec(enabled=True, mask_rounds=2, rank_ratio=0.5, save_backbone=True,
                                            max_drop=None))  # one step to the target (the guard: below)
    out = tmp_path_factory.mktemp("speed")
    return spec, pruning.search(spec, out)


def test_speed_mode_search_prunes_backbone_and_ranks(speed_result, tiny_model):
    spec, result = speed_result
    record = result.configuration["backbone"]
    assert [r.backbone_params for r in result.rounds] == [None, result.backbone_params, None]
    assert result.backbone_params == record["backbone_params_after"] < result.backbone_params_before
    assert all(len(kept) == 3 for kept in record["heads"].values())  # a third of 4 heads -> 1 removed per layer
    assert sum(len(k) for k in record["neurons"].values()) == 4 * 128 - int(4 * 128 * spec.backbone.neuron_ratio)
    ranks = result.configuration["lora_ranks"]
    assert ranks and all(1 <= r <= 8 for r in ranks.values()) and min(ranks.values()) < 8
    assert result.trainable_params <= result.budget_params


def test_speed_mode_export_load_reproduces_metric_and_parameter_count(speed_result, tiny_model):
    spec, result = speed_result
    model = pruning.load(result.out_dir, str(tiny_model))
    assert backbone_parameter_count(model.model, model.arch) == result.backbone_params
    assert model.peft_params() == result.trainable_params
    assert pruning.evaluate(result.out_dir, str(tiny_model)) == result.metrics


def test_stock_peft_loads_the_rank_pruned_lora_onto_the_pruned_backbone(speed_result, tiny_model):
    from peft import PeftModel

    from pruning.backbone import apply_backbone_record
    from pruning.export import WEIGHTS

    spec, result = speed_result
    out = Path(result.out_dir)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["rank_pattern"]  # pruned ranks travel as peft's rank_pattern

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=2)
    apply_backbone_record(base, result.configuration["backbone"], load_file(out / WEIGHTS))
    peft_model = PeftModel.from_pretrained(base, out)
    ours = pruning.load(out, str(tiny_model))
    ours_params = dict(ours.model.named_parameters())
    for name, param in peft_model.named_parameters():
        if ".lora_" in name:
            source = name.removeprefix("base_model.model.")
            torch.testing.assert_close(param, ours_params[source])


def test_saved_pruned_backbone_loads_without_the_base_model(speed_result, tiny_model):
    spec, result = speed_result
    with_base = pruning.load(result.out_dir, str(tiny_model))
    alone = pruning.load(result.out_dir)  # no base: the saved pruned backbone
    batch = _batch()
    torch.testing.assert_close(alone(**batch), with_base(**batch))
    assert backbone_parameter_count(alone.model, alone.arch) == result.backbone_params


def test_folding_the_lora_into_a_pruned_backbone_drops_its_branches_and_computes_the_same(speed_result, tiny_model):
    spec, result = speed_result
    model = pruning.load(result.out_dir, str(tiny_model))
    batch = _batch()
    before = model(**batch)
    others = [key for key in model.unit_keys() if not key.startswith("lora.")]
    assert len(others) < len(model.unit_keys())  # it has LoRA units to fold
    folded = pruning.fold_lora(model)
    assert folded.unit_keys() == others
    assert not [name for name, _ in folded.model.named_modules() if "lora_" in name]
    torch.testing.assert_close(folded(**batch), before, rtol=0, atol=1e-5)


def test_the_masks_learn_for_their_share_of_the_steps_before_the_backbone_is_pruned(tiny_model, toy_task, tmp_path,
                                                                                    monkeypatch):
    from pruning.backbone import RankTracker

    train, dev = toy_task
    spec = SearchSpec(model=str(tiny_model), task=TaskSpec(train=str(train), dev=str(dev)), budget=9000,
                      schedule=ScheduleSpec(rounds=2, steps_per_round=2, unlearned="prune"),
                      train=TrainSpec(steps=40, batch_size=16),
                      backbone=BackboneSpec(enabled=True, mask_share=0.5, max_drop=None, rank_ratio=0.5))
    trained_when_pruned, ranked_over = [], []  # the steps the masks' and the ranks' importance accumulated
    plan, importance = pruning.backbone.Planner.of.__func__, RankTracker.importance

    def of(cls, supernet, score):
        trained_when_pruned.append(supernet.masks._steps)
        return plan(cls, supernet, score)

    def rank_importance(tracker):
        ranked_over.append(set(tracker.steps.values()))
        return importance(tracker)

    monkeypatch.setattr(pruning.backbone.Planner, "of", classmethod(of))
    monkeypatch.setattr(RankTracker, "importance", rank_importance)
    events = []
    result = pruning.search(spec, tmp_path / "out", on_progress=events.append)
    trace = json.loads((Path(result.out_dir) / "trace.json").read_text())
    learned = trace["learn"]["step"]
    assert trace["learn"]["mask_steps"] == 20 - learned - 2 > 0  # half of 40 steps, less learning and one round
    assert trained_when_pruned == [20] and ranked_over[0] == {20}  # (later: the rank grain's, of one round)
    estimate = [e for e in events if e.phase == "estimate" and e.kind == "step"]
    assert len(estimate) == 20 - learned - 2
    assert trace["searched_steps"] == 20 + 2  # the second round trains after the pruning
    assert events[-1].done_steps == events[-1].total_steps  # the plan followed what ran

    # killed in the first round, before the pruning, and resumed: the estimation is not trained again, what the
    # importance had accumulated comes back with the checkpoint, and the plan still adds up
    trained_when_pruned.clear(), ranked_over.clear()
    with pytest.raises(pruning.Cancelled):
        pruning.search(spec, tmp_path / "again", checkpoint_dir=tmp_path / "ckpt", should_stop=stop_after(20 - 1))
    assert trained_when_pruned == []
    resumed = []
    again = pruning.search(spec, tmp_path / "again", checkpoint_dir=tmp_path / "ckpt", on_progress=resumed.append)
    assert not [e for e in resumed if e.phase == "estimate"]
    assert trained_when_pruned == [20] and ranked_over[0] == {20}
    assert resumed[-1].done_steps == resumed[-1].total_steps
    assert again.configuration["backbone"]["layer_params_after"] < again.configuration["backbone"]["layer_params_before"]


@pytest.mark.parametrize("problem", ["classification", "regression", "completion"])
def test_the_distillation_term_is_zero_at_the_teachers_outputs_and_pulls_towards_them(problem):
    from pruning.train import distill_loss

    torch.manual_seed(0)
    shape = {"classification": (4, 3), "regression": (4, 1), "completion": (4, 7)}[problem]  # completion: per token
    target = torch.randn(shape)
    assert float(distill_loss(target.clone(), target, problem)) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(shape, requires_grad=True)
    loss = distill_loss(student, target, problem)
    assert float(loss.detach()) > 0
    loss.backward()
    with torch.no_grad():
        assert float(distill_loss(student - 0.1 * student.grad, target, problem)) < float(loss.detach())
    if problem == "completion":  # a batch with no labelled token: nothing to learn, not a NaN
        nothing = torch.zeros(0, 7, requires_grad=True)
        assert float(distill_loss(nothing, nothing.detach(), problem).detach()) == 0.0


def test_speed_mode_distils_the_unpruned_supernet_and_a_resumed_retrain_gets_it_back(tiny_model, toy_task, tmp_path,
                                                                                    monkeypatch):
    from pruning import pipeline

    train, dev = toy_task
    spec = SearchSpec(model=str(tiny_model), task=TaskSpec(train=str(train), dev=str(dev)), budget=9000,
                      schedule=ScheduleSpec(rounds=2, steps_per_round=2, unlearned="prune"),
                      train=TrainSpec(steps=12, batch_size=16),
                      backbone=BackboneSpec(enabled=True, head_ratio=0.5, stages=2, stage_steps=1, distill=0.5))
    teachers = []  # (phase, the teacher's logits on a batch) of every training run given one
    real_train = pipeline.train

    def train(model, *args, teacher=None, **kwargs):
        if teacher is not None:
            assert teacher.weight == 0.5 and not any(p.requires_grad for p in teacher.model.parameters())
            assert teacher.model is not model and teacher.model.masks is not None  # the masked, unpruned supernet
            with torch.no_grad():
                teachers.append(teacher.model(**_batch()).clone())
        return real_train(model, *args, teacher=teacher, **kwargs)

    monkeypatch.setattr(pipeline, "train", train)
    result = pruning.search(spec, tmp_path / "out")
    guard = result.configuration["backbone"]["guard"]
    # each stage's recovery and its unpruned twin's, the round after, the retrain
    assert len(teachers) == 2 * len(guard["stages"]) + 1 + 1
    assert all(torch.equal(t, teachers[0]) for t in teachers)  # one frozen teacher throughout
    assert all(s["drop_se"] >= 0 for s in guard["stages"])  # classification: each drop has its standard error
    assert result.configuration["backbone"]["layer_params_after"] < result.configuration["backbone"][
        "layer_params_before"]  # the student is pruned, the teacher is not (it still has its masks)

    # killed in the retrain and resumed: the teacher comes back from the checkpoint, the same
    first = list(teachers)
    teachers.clear()
    searched = json.loads((Path(result.out_dir) / "trace.json").read_text())["searched_steps"]
    with pytest.raises(pruning.Cancelled):
        pruning.search(spec, tmp_path / "again", checkpoint_dir=tmp_path / "ckpt", should_stop=stop_after(searched + 2))
    teachers.clear()
    again = pruning.search(spec, tmp_path / "again", checkpoint_dir=tmp_path / "ckpt")
    assert len(teachers) == 1 and torch.equal(teachers[0], first[0])
    assert again.configuration["backbone"] == result.configuration["backbone"]


def test_the_guard_scores_the_validation_split_then_train_rows_the_search_never_trained_on(tiny_model, toy_task):
    from pruning.pipeline import _Context

    train, dev = toy_task
    spec = SearchSpec(model=str(tiny_model), task=TaskSpec(train=str(train), dev=str(dev)),
                      schedule=ScheduleSpec(eval_examples=32, max_train_examples=100))
    ctx = _Context.prepare(spec)
    rows = lambda data: [tuple(ids) for ids in data.input_ids]  # noqa: E731
    assert ctx.guard_split(None) is ctx.validation and ctx.guard_split(32) is ctx.validation
    fewer = rows(ctx.guard_split(20))
    assert len(fewer) == 20 and set(fewer) <= set(rows(ctx.validation)) and fewer != rows(ctx.validation)[:20]
    scored = ctx.guard_split(120)
    assert len(scored) == 120 and rows(scored)[:32] == rows(ctx.validation)
    assert set(rows(scored)) <= set(rows(ctx.train_data)) and not set(rows(scored)) & set(rows(ctx.search_train))
    assert len(ctx.guard_split(10_000)) == 256 - 100  # every train row the search did not train on
