"""The quality benchmark's report: what it averages over and which targets it declares met; the all-linear
baseline's matched ranks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.common import TASKS
from bench.quality import report


def run(task, method, metric, params=1000, search=0.0, retrain=100.0, seed=0, **extra):
    return {"task": task, "method": method, "seed": seed, "model": "m", "metric_name": "accuracy", "metric": metric,
            "trainable_params": params, "search_wall_s": search, "retrain_wall_s": retrain,
            "total_wall_s": search + retrain, "peak_memory_mb": 1.0, "steps": TASKS[task].steps, **extra}


def test_runs_at_another_step_budget_are_left_out_and_counted():
    rows = [run("cola", "lora", 0.3), run("cola", "peftsearch", 0.1, steps=TASKS["cola"].steps // 2)]
    data, markdown = report(SimpleNamespace(rows=rows), "cmd")
    assert list(data["results"]["cola"]) == ["lora"] and data["stale_rows"] == 1
    assert "Left out: 1 finished runs at another step budget" in markdown


def test_targets_compare_peftsearch_with_each_method_over_every_task_both_ran():
    rows = [run("sst2", m, 0.8) for m in ("adapter", "prefix", "random")]
    rows += [run("sst2", "lora", 0.80), run("sst2", "peftsearch", 0.82, params=900, search=10),
             run("mrpc", "lora", 0.84), run("mrpc", "peftsearch", 0.83, params=900, search=10, retrain=200),
             run("mrpc", "lora", 0.86, seed=1), run("mrpc", "peftsearch", 0.87, seed=1, params=900),
             run("sst2", "alllinear", 0.815)]
    data, markdown = report(SimpleNamespace(rows=rows), "cmd")
    assert data["average_over"] == ["sst2"]  # only sst2 has every fixed method that ran
    lora = data["versus"]["lora"]
    assert lora["tasks"] == ["sst2", "mrpc"]
    assert lora["points"] == pytest.approx((2.0 + 0.0) / 2)  # sst2 +2; mrpc: means 85 against 85
    assert lora["per_seed"] == {"sst2": {0: pytest.approx(2.0)}, "mrpc": {0: pytest.approx(-1.0), 1: pytest.approx(1.0)}}
    assert data["versus"]["alllinear"]["tasks"] == ["sst2"]
    targets = data["targets"]
    assert targets["peftsearch_minus_lora_points"]["met"]  # +1.0 exactly meets >= 1.0
    assert targets["peftsearch_minus_alllinear_points"]["value"] == pytest.approx(0.5)
    assert targets["params_at_most_lora"]["met"]
    assert targets["search_over_retrain_wall"]["value"] == pytest.approx((10 + 5) / (100 + 150))  # task means
    assert "peftsearch_minus_lora_points: 1.00 (target >= 1.0) — met" in markdown
    assert "peftsearch minus lora, over sst2, mrpc: +1.00 points (per seed: sst2: seed 0 +2.00; " \
           "mrpc: seed 0 -1.00, seed 1 +1.00)" in markdown


def test_the_searches_that_kept_their_prior_are_named():
    unlearned = {"learn": {"learned": False}, "rounds": []}
    rows = [run("cola", "peftsearch", 0.2, seed=2, **unlearned), run("cola", "peftsearch", 0.2, **unlearned),
            run("cola", "peftsearch", 0.2, seed=1, learn={"learned": True}, rounds=[{"round": 1}]),
            run("sst2", "peftsearch", 0.8, learn={"learned": False}, rounds=[{"round": 1}]),  # pruned anyway
            run("cola", "lora", 0.2)]
    data, markdown = report(SimpleNamespace(rows=rows), "cmd")
    assert data["prior_kept"] == {"peftsearch": {"cola": [0, 2]}}
    assert "peftsearch kept its prior (LoRA on every projection at the budget; no round ran: the supernet had " \
           "not learned the task by the end of its learning phase) on: cola seeds 0, 2." in markdown


def test_more_params_than_lora_fails_the_params_target():
    rows = [run("sst2", "lora", 0.80), run("sst2", "peftsearch", 0.90, params=1001)]
    targets = report(SimpleNamespace(rows=rows), "cmd")[0]["targets"]
    assert targets["peftsearch_minus_lora_points"]["met"] and not targets["params_at_most_lora"]["met"]


def test_the_8_candidate_search_targets_and_how_it_selected():
    rows = [run("sst2", "peftsearch", 0.82, search=10, retrain=100), run("sst2", "autopeft", 0.81, search=900,
                                                                        retrain=0, selected_on="validation"),
            run("mrpc", "peftsearch", 0.80), run("mrpc", "autopeft", 0.85, search=900, retrain=0)]
    data, markdown = report(SimpleNamespace(rows=rows), "cmd")
    targets = data["targets"]
    assert not targets["beats_autopeft_on_every_task"]["met"]  # mrpc is lost
    assert targets["autopeft_over_peftsearch_total_wall"]["value"] == pytest.approx(1800 / 210)
    assert data["autopeft_selected_on"] == ["dev", "validation"]  # the mrpc row predates the validation split
    assert "the dev set it reports (optimistic), the validation split" in markdown


def test_adalora_is_driven_so_that_its_ranks_move(make_spec):
    """update_and_allocate runs after every optimizer step: the final rank pattern is not the initial one, and the
    budget lands near target_r per module; its learning rate is the one best on the validation split."""
    from bench.adalora import LEARNING_RATES, fit_adalora

    spec = make_spec(train__steps=60, train__lr=1e-2)
    fitted = fit_adalora(spec, target_r=4)
    initial, final = fitted["initial_ranks"], fitted["final_ranks"]
    assert set(initial) == set(final) and len(initial) == 8  # q and v of 4 layers
    assert set(initial.values()) == {6}  # init_r = 1.5 x target_r
    assert final != initial and sum(final.values()) <= 4 * len(final)
    assert fitted["trainable_params"] == sum(final.values()) * (64 + 64 + 1)
    assert 0 <= fitted["metric"] <= 1 and set(fitted["metrics"]) == {"accuracy", "f1"}
    candidates = fitted["candidates"]
    assert [c["lr"] for c in candidates] == list(LEARNING_RATES)
    chosen = [c for c in candidates if c.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["validation_metric"] == max(c["validation_metric"] for c in candidates)


def test_adalora_learning_rates_chosen_are_reported():
    rows = [run("sst2", "adalora", 0.8, seed=s, candidates=[{"lr": 1e-3, "validation_metric": 0.5},
                                                           {"lr": lr, "validation_metric": 0.8, "chosen": True}])
            for s, lr in ((1, 0.01), (0, 0.003))]
    data, markdown = report(SimpleNamespace(rows=rows), "cmd")
    assert data["adalora_lr"] == {"tried": [0.001, 0.003, 0.01], "chosen": {"sst2": {0: 0.003, 1: 0.01}}}
    assert "(of 0.001, 0.003, 0.01): sst2 seed 0 0.003, seed 1 0.01." in markdown


def test_the_longer_lora_is_compared_and_labelled_with_its_steps():
    rows = [run("sst2", "lora_long", 0.83, trained_steps=420), run("sst2", "peftsearch", 0.82)]
    data, markdown = report(SimpleNamespace(rows=rows), "cmd")
    assert data["versus"]["lora_long"]["points"] == pytest.approx(-1.0)
    assert "| sst2 (300, 64) | lora_long (420 steps) | accuracy 83.00" in markdown


def test_the_mask_trace_compares_each_rankings_removals_across_chunks(make_spec):
    from bench.masks import report as masks_report
    from bench.masks import trace_masks

    row = trace_masks(make_spec(), chunks=3)
    assert row["round_steps"] == 3 and row["removed"] > 0
    for score in ("magnitude", "taylor"):
        points = row["trace"][score]
        assert [p["steps"] for p in points] == [3, 6, 9] and points[0]["with_previous"] is None
        assert points[-1]["with_last"] == 1.0 and all(0 <= p["with_last"] <= 1 for p in points)
        assert all(0 <= p["with_previous"] <= 1 for p in points[1:])
    assert len(row["magnitude_with_taylor"]) == 3
    data, markdown = masks_report(SimpleNamespace(rows=[{"task": "toy", **row}]), "cmd")
    assert [p["steps"] for p in data["tasks"]["toy"]] == [3, 6, 9]
    assert "| 9 | " in markdown


def test_the_speed_report_says_why_each_speed_run_pruned_what_it_did():
    from bench.speed import INFERENCE_KEYS, LATENCY_LENGTHS, SHAPES
    from bench.speed import report as speed_report

    timed = {key: {f"1x{n}": 10.0 for n in LATENCY_LENGTHS} if key.endswith("latency_ms")
             else {f"{b}x{n}": 100.0 for b, n in SHAPES} for key in INFERENCE_KEYS}

    def speed_run(task, method, metric, seed=0, layers_after=None, guard=None, prior=None):
        return {"task": task, "method": method, "seed": seed, "model": "m", "metric_name": "f1", "metric": metric,
                "trainable_params": 900, "backbone_params": 100, "backbone_params_before": 100,
                "layer_params_before": None if layers_after is None else 80, "layer_params_after": layers_after,
                "retrain_step_s": 1.0, "search_wall_s": 10.0, "train_step_s": 1.0, "train_peak_mb": 10.0,
                "guard": guard, "prior": prior, **timed}

    guard = {"asked_share": 0.375, "reached_share": 0.25, "stopped": "stage 3 of 4 fell 2.00 points"}
    rows = [speed_run("sst2", "lora", 0.80), speed_run("sst2", "speed", 0.81, layers_after=60, guard=guard),
            speed_run("mrpc", "lora", 0.84), speed_run("mrpc", "speed", 0.85, prior="the supernet had not learned")]
    data, markdown = speed_report(SimpleNamespace(rows=rows), "cmd")
    assert data["results"]["mrpc"]["speed"]["layers_removed_share"] == 0.0  # nothing pruned counts, as nothing
    assert data["results"]["sst2"]["speed"]["layers_removed_share"] == pytest.approx(0.25)
    assert "- sst2 seed 0: asked 37.5%, reached 25.0%: stage 3 of 4 fell 2.00 points" in markdown
    assert "- mrpc seed 0: kept the search's prior: the supernet had not learned" in markdown
