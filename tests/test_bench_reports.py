"""The quality benchmark's report: what it averages over and which targets it declares met."""

from __future__ import annotations

from types import SimpleNamespace

from bench.quality import report


def run(task, method, metric, params=1000, search=0.0, retrain=100.0, seed=0):
    return {"task": task, "method": method, "seed": seed, "model": "m", "metric_name": "accuracy", "metric": metric,
            "trainable_params": params, "search_wall_s": search, "retrain_wall_s": retrain,
            "total_wall_s": search + retrain, "peak_memory_mb": 1.0}


def test_targets_compare_lora_and_peftsearch_over_every_task_both_ran():
    rows = [run("sst2", m, 0.8) for m in ("adapter", "prefix", "random")]
    rows += [run("sst2", "lora", 0.80), run("sst2", "peftsearch", 0.82, params=900, search=10),
             run("mrpc", "lora", 0.84), run("mrpc", "peftsearch", 0.83, params=900, search=10, retrain=200),
             run("mrpc", "lora", 0.86, seed=1)]  # a second seed: mrpc's LoRA mean is 85
    data, markdown = report(SimpleNamespace(rows=rows), "cmd")
    assert data["average_over"] == ["sst2"]  # only sst2 has every fixed method
    assert data["paired_over"] == ["sst2", "mrpc"]
    assert abs(data["paired_average"]["lora"] - 82.5) < 1e-9 and abs(data["paired_average"]["peftsearch"] - 82.5) < 1e-9
    targets = data["targets"]
    assert abs(targets["peftsearch_minus_lora_points"]["value"]) < 1e-9
    assert not targets["peftsearch_minus_lora_points"]["met"]  # 0 points: the target is +0.5
    assert targets["params_at_most_lora"]["met"]
    assert abs(targets["search_over_retrain_wall"]["value"] - 20 / 300) < 1e-9
    assert "peftsearch_minus_lora_points: 0.00 (target >= 0.5) — MISSED" in markdown


def test_more_params_than_lora_fails_the_params_target():
    rows = [run("sst2", "lora", 0.80), run("sst2", "peftsearch", 0.90, params=1001)]
    targets = report(SimpleNamespace(rows=rows), "cmd")[0]["targets"]
    assert targets["peftsearch_minus_lora_points"]["met"] and not targets["params_at_most_lora"]["met"]
