"""Quality and cost of the search against fixed PEFT methods and other searches (issue: the search engine).

    python -m bench.quality --data-dir ../shared/data/glue --tasks sst2,mrpc,cola,stsb,rte --seeds 0,1,2

On all-MiniLM-L6-v2, every method trains its final configuration with the same steps, data, seeds and evaluation
(per-task settings in bench/common.py):

    lora        LoRA r=8 on q,v in all layers (the reference; its parameter count is everyone's budget)
    adapter     bottleneck adapter (d=16) after the FFN of all layers
    prefix      prefix (p=16) in all layers
    random      the supernet pruned to the budget in random order (same rounds and retraining as peftsearch)
    autopeft    AutoPEFT-style random search: 8 configurations sampled from the supernet at the budget, each
                trained fully, the best on dev kept
    peftsearch  the hybrid pruning search, then retraining

Each run is a subprocess (its own peak memory); finished runs are kept in results/quality.jsonl and skipped on a
rerun, so an interrupted benchmark resumes. The report (quality.json, quality.md) is rebuilt from all finished runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

from .common import DEFAULT_GLUE, TASKS, Store, machine, mean_spread, run_child, write_report

METHODS = ("lora", "adapter", "prefix", "random", "autopeft", "peftsearch")
RESULTS = Path(__file__).parent / "results"
AUTOPEFT_CANDIDATES = 8


def lora_budget(model: str, rank: int = 8) -> int:
    """Parameters of LoRA rank `rank` on q and v of every layer: each is A (r x h) + B (h x r)."""
    from transformers import AutoConfig

    from pruning.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(model))
    return config.num_hidden_layers * 2 * rank * 2 * config.hidden_size


def base_spec(task: str, seed: int, data_dir: str, model: str):
    from pruning import ScheduleSpec, SearchSpec, TaskSpec, TrainSpec

    setting = TASKS[task]
    return SearchSpec(
        model=model,
        task=TaskSpec(glue=task, data_dir=data_dir, max_train_examples=setting.max_train_examples),
        budget=lora_budget(model),
        train=TrainSpec(steps=setting.steps, max_length=setting.max_length, batch_size=32, lr=1e-3),
        # Low fidelity: 4 rounds of steps/40 supernet steps, 10% of the final training's steps in all.
        schedule=ScheduleSpec(rounds=4, steps_per_round=max(5, setting.steps // 40), eval_examples=128),
        seed=seed,
    )


def sample_configurations(unit_params: dict[str, int], budget: int, count: int, seed: int) -> list[list[str]]:
    """AutoPEFT's search space as on/off per (module type, layer): random unit sets filled up to the budget."""
    rng = random.Random(seed)
    configs = []
    for _ in range(count):
        keys = list(unit_params)
        rng.shuffle(keys)
        chosen, total = [], 0
        for key in keys:
            if total + unit_params[key] <= budget:
                chosen.append(key)
                total += unit_params[key]
        configs.append(sorted(chosen))
    return configs


def run_method(method: str, task: str, seed: int, data_dir: str, model: str) -> dict:
    import pruning
    from pruning import AdapterSpec, PolicySpec, PrefixSpec, SpaceSpec

    spec = base_spec(task, seed, data_dir, model)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        if method in ("lora", "adapter", "prefix"):
            space = SpaceSpec(types=(method,), adapter=AdapterSpec(size=16), prefix=PrefixSpec(length=16))
            result = pruning.fit(dataclasses.replace(spec, space=space), tmp)
            search_wall, candidates = 0.0, None
        elif method in ("random", "peftsearch"):
            if method == "random":
                spec = dataclasses.replace(spec, policy=PolicySpec(assignment="random"))
            result = pruning.search(spec, tmp)
            search_wall, candidates = result.search_wall_s, None
        elif method == "autopeft":
            unit_params = _supernet_unit_params(spec)
            results = []
            for i, units in enumerate(sample_configurations(unit_params, spec.budget, AUTOPEFT_CANDIDATES, seed)):
                results.append(pruning.fit(spec, f"{tmp}/candidate{i}", units))
            result = max(results, key=lambda r: r.metric)
            search_wall = time.monotonic() - start  # every candidate is a full training: it all is search
            candidates = [{"metric": r.metric, "params": r.trainable_params} for r in results]
        else:
            raise ValueError(f"unknown method {method!r}")
    return {
        "task": task, "method": method, "seed": seed, "model": model, "metric_name": result.metric_name,
        "metric": result.metric,
        "metrics": result.metrics, "trainable_params": result.trainable_params, "budget": spec.budget,
        "search_wall_s": search_wall, "retrain_wall_s": 0.0 if method == "autopeft" else result.retrain_wall_s,
        "total_wall_s": time.monotonic() - start, "peak_memory_mb": result.peak_memory_mb,
        "steps": spec.train.steps, "search_steps": spec.schedule.rounds * spec.schedule.steps_per_round,
        "units": result.configuration["units"], "candidates": candidates,
    }


def _supernet_unit_params(spec) -> dict[str, int]:
    from pruning.data import load_task
    from pruning.models import load_model
    from pruning.supernet import Supernet

    task = load_task(dataclasses.replace(spec.task, max_train_examples=1))
    return Supernet(load_model(spec.model, task.num_labels, task.problem), spec.space).unit_params()


def report(store: Store, command: str) -> tuple[dict, str]:
    rows = store.rows
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    table: dict = {}
    for task in tasks:
        for method in METHODS:
            runs = [r for r in rows if r["task"] == task and r["method"] == method]
            if not runs:
                continue
            mean, spread = mean_spread([100 * r["metric"] for r in runs])
            table.setdefault(task, {})[method] = {
                "metric_name": runs[0]["metric_name"], "mean": mean, "std": spread, "seeds": len(runs),
                "trainable_params": round(mean_spread([r["trainable_params"] for r in runs])[0]),
                "search_wall_s": mean_spread([r["search_wall_s"] for r in runs])[0],
                "retrain_wall_s": mean_spread([r["retrain_wall_s"] for r in runs])[0],
                "total_wall_s": mean_spread([r["total_wall_s"] for r in runs])[0],
                "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
            }
    # Averages compare methods only over tasks where all of them ran (the 8-candidate search may cover fewer).
    fixed = [m for m in METHODS if m != "autopeft"]
    common = [t for t in tasks if all(m in table[t] for m in fixed)]
    average = {m: mean_spread([table[t][m]["mean"] for t in common])[0] for m in fixed} if common else {}
    # The targets against LoRA need only LoRA and peftsearch: over every task where both ran.
    paired = [t for t in tasks if "lora" in table[t] and "peftsearch" in table[t]]
    paired_average = {m: mean_spread([table[t][m]["mean"] for t in paired])[0]
                      for m in ("lora", "peftsearch")} if paired else {}
    with_autopeft = [t for t in common if "autopeft" in table[t]]
    autopeft_average = {m: mean_spread([table[t][m]["mean"] for t in with_autopeft])[0]
                        for m in ("autopeft", "peftsearch")} if with_autopeft else {}
    data = {"machine": machine(), "command": command, "model": rows[0]["model"] if rows else None,
            "tasks": {t: dataclasses.asdict(TASKS[t]) for t in tasks}, "results": table,
            "average_over": common, "average": average, "paired_over": paired, "paired_average": paired_average,
            "autopeft_over": with_autopeft, "autopeft_average": autopeft_average,
            "targets": _targets(table, paired, paired_average, with_autopeft, autopeft_average)}
    return data, _markdown(data)


def _targets(table: dict, paired: list[str], paired_average: dict, with_autopeft: list[str],
             autopeft_average: dict) -> dict:
    targets = {}
    if paired:
        search = sum(table[t]["peftsearch"]["search_wall_s"] for t in paired)
        retrain = sum(table[t]["peftsearch"]["retrain_wall_s"] for t in paired)
        over_lora = paired_average["peftsearch"] - paired_average["lora"]
        params_ok = all(table[t]["peftsearch"]["trainable_params"] <= table[t]["lora"]["trainable_params"]
                        for t in paired)
        targets["peftsearch_minus_lora_points"] = {"value": over_lora, "target": ">= 0.5", "met": over_lora >= 0.5}
        targets["params_at_most_lora"] = {"value": params_ok, "met": params_ok}
        targets["search_over_retrain_wall"] = {"value": search / retrain, "target": "<= 0.2",
                                               "met": search / retrain <= 0.2}
    if with_autopeft:
        ours_search = sum(table[t]["peftsearch"]["search_wall_s"] for t in with_autopeft)
        ours_total = sum(table[t]["peftsearch"]["total_wall_s"] for t in with_autopeft)
        autopeft = sum(table[t]["autopeft"]["total_wall_s"] for t in with_autopeft)
        gap = autopeft_average["peftsearch"] - autopeft_average["autopeft"]
        targets["autopeft_over_peftsearch_search_wall"] = {"value": autopeft / ours_search, "target": ">= 10",
                                                           "met": autopeft / ours_search >= 10}
        targets["autopeft_over_peftsearch_total_wall"] = {"value": autopeft / ours_total, "target": ">= 10",
                                                          "met": autopeft / ours_total >= 10}
        targets["peftsearch_minus_autopeft_points"] = {"value": gap, "target": ">= 0", "met": gap >= 0}
    return targets


def _markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# Quality and cost: peftsearch against fixed PEFT methods and other searches",
        "",
        f"Command: `{data['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads)"
        + (f", GPU {m['gpu']}" if "gpu" in m else "") + f", transformers {m.get('transformers')}, "
        f"peft {m.get('peft')}  ",
        f"Model: {data['model']}. Metric: the task's primary dev metric x 100, mean ± std over seeds. "
        "Wall times are per run (mean over seeds); search = pruning rounds (autopeft: all 8 trainings), "
        "retrain = training the final configuration.",
        "",
        "| task (steps, len) | method | metric | params | search s | retrain s | total s | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, methods in data["results"].items():
        setting = data["tasks"][task]
        for method, r in methods.items():
            lines.append(f"| {task} ({setting['steps']}, {setting['max_length']}) | {method} | "
                         f"{r['metric_name']} {r['mean']:.2f} ± {r['std']:.2f} (n={r['seeds']}) | "
                         f"{r['trainable_params']:,} | {r['search_wall_s']:.0f} | {r['retrain_wall_s']:.0f} | "
                         f"{r['total_wall_s']:.0f} | {r['peak_memory_mb']:.0f} |")
    if data["average"]:
        lines += ["", f"Average over {', '.join(data['average_over'])} (the tasks every fixed method ran):", ""]
        lines += [f"- {method}: {value:.2f}" for method, value in data["average"].items()]
    if data["paired_average"]:
        lines += ["", f"LoRA against peftsearch over {', '.join(data['paired_over'])} (the targets' tasks):", ""]
        lines += [f"- {method}: {value:.2f}" for method, value in data["paired_average"].items()]
    if data["autopeft_average"]:
        lines += ["", f"peftsearch against the 8-candidate search, over {', '.join(data['autopeft_over'])}:", ""]
        lines += [f"- {method}: {value:.2f}" for method, value in data["autopeft_average"].items()]
    if data["targets"]:
        lines += ["", "Targets:", ""]
        for name, t in data["targets"].items():
            value = t["value"] if isinstance(t["value"], bool) else f"{t['value']:.2f}"
            lines.append(f"- {name}: {value} (target {t.get('target', 'yes')}) — {'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=str(DEFAULT_GLUE))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs")
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(run_method(job["method"], job["task"], job["seed"], job["data_dir"], job["model"])))
        return 0
    command = "python -m bench.quality " + shlex.join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only")
    store = Store(args.results / "quality.jsonl")
    if not args.report_only:
        # Seed-major order, the expensive 8-candidate search last: a partial run already compares the methods.
        methods = args.methods.split(",")
        seeds = [int(s) for s in args.seeds.split(",")]
        order = [(seed, task, method) for last in (False, True) for seed in seeds for task in args.tasks.split(",")
                 for method in methods if (method == "autopeft") == last]
        for seed, task, method in order:
            key = {"task": task, "method": method, "seed": seed}
            if store.done(key):
                continue
            row = run_child("bench.quality", {**key, "data_dir": args.data_dir, "model": args.model})
            store.add(row)
            print(f"{task} {method} seed {seed}: {row['metric_name']} {row['metric']:.4f}, "
                  f"{row['trainable_params']:,} params, {row['total_wall_s']:.0f}s", flush=True)
            _write(args.results, store, command)
    _write(args.results, store, command)
    return 0


def _write(results: Path, store: Store, command: str) -> None:
    write_report(results, "quality", *report(store, command))


if __name__ == "__main__":
    raise SystemExit(main())
