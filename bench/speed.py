"""Speed mode (Light-PEFT backbone pruning + LoRA rank pruning) against plain LoRA (issue: backbone early pruning).

    python -m bench.speed --data-dir ../shared/data/glue --tasks sst2,mrpc,cola,stsb,rte --seeds 0,1,2

Per task and seed, side by side in one run, on all-MiniLM-L6-v2:

    lora   LoRA r=8 on q,v, the task's steps (bench/common.py)
    speed  peftsearch with backbone pruning on (defaults: the quality guard at max_drop 1 point), same budget and
           steps

then, for the two exported models: training step time (batch 32, length 128, random tokens), inference
throughput (batch 32/64 x length 64/128) and batch-1 latency (length 64/128), measured in one process with the
models interleaved so that machine noise hits both alike; and the training's peak memory above the loaded model,
each model in a fresh process. Inference is timed twice: on the model as `pruning.load` gives it (the LoRA a
branch beside each projection) and served, the LoRA folded into the weights (`pruning.fold_lora`, what peft's
merge_and_unload does); the targets judge the served form, where q,v LoRA costs nothing and speed mode's LoRA on
every projection costs nothing either. Backbone parameters are reported two ways: the transformer layers (what
head/neuron pruning acts on) and the whole backbone including the embedding table (a lookup that costs no compute).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from .common import (
    DEFAULT_GLUE,
    TASKS,
    Store,
    describe_machine,
    machine,
    mean_spread,
    provenance,
    run_child,
    write_report,
)
from .quality import base_spec, fixed_space

METHODS = ("lora", "speed")
RESULTS = Path(__file__).parent / "results"
SHAPES = [(32, 64), (32, 128), (64, 64), (64, 128)]
LATENCY_LENGTHS = (64, 128)  # batch 1: what one request waits, where depth counts more than width
FORMS = (("served", "folded_"), ("as loaded", ""))  # inference timed per form: its report name, its keys' prefix
INFERENCE_KEYS = tuple(f"{prefix}{key}" for _, prefix in FORMS for key in ("throughput", "latency_ms"))
TRAIN_SHAPE = (32, 128)


def run_method(method: str, task: str, seed: int, data_dir: str, model: str, out: str) -> dict:
    import pruning
    from pruning import BackboneSpec

    spec = base_spec(task, seed, data_dir, model)
    if method == "lora":  # the quality benchmark's: r=8 on q,v, the budget speed mode searches at
        result = pruning.fit(dataclasses.replace(spec, space=fixed_space("lora")), out)
    elif method == "speed":
        result = pruning.search(dataclasses.replace(spec, backbone=BackboneSpec(enabled=True)), out)
    else:
        raise ValueError(f"unknown method {method!r}")
    record = result.configuration["backbone"] or {}
    layers_before = record.get("layer_params_before")
    layers_after = record.get("layer_params_after", layers_before)
    return {
        "task": task, "method": method, "seed": seed, "model": model, "metric_name": result.metric_name,
        "metric": result.metric,
        "trainable_params": result.trainable_params, "backbone_params": result.backbone_params,
        "backbone_params_before": result.backbone_params_before,
        "layer_params_before": layers_before, "layer_params_after": layers_after,
        "retrain_step_s": result.retrain_wall_s / spec.train.steps, "search_wall_s": result.search_wall_s,
        "lora_ranks": result.configuration["lora_ranks"], "guard": record.get("guard"),
        "prior": result.configuration.get("prior"), "out": out,
    }


def timings(out_dirs: dict[str, str], model: str, rounds: int = 5) -> dict[str, dict]:
    """Training step time and inference throughput of several exported models, measured in this process with
    the models interleaved (A, B, A, B, ...), so that any slow drift of the machine hits them alike. Inference is
    timed as loaded (`throughput`, `latency_ms`) and with the LoRA folded into the weights (`folded_...`)."""
    import torch

    import pruning

    nets = {name: pruning.load(path, model) for name, path in out_dirs.items()}
    folded = {name: pruning.fold_lora(pruning.load(path, model)) for name, path in out_dirs.items()}
    forms = {prefix: folded if prefix else nets for _, prefix in FORMS}
    train: dict[str, list[float]] = {name: [] for name in nets}
    samples: dict[str, dict[str, dict[str, list[float]]]] = {name: {} for name in nets}
    for _ in range(rounds):
        for name in nets:
            train[name].append(_train_step_s(nets[name], steps=3))
            for form, by_name in forms.items():
                for b, length in SHAPES:
                    samples[name].setdefault(f"{form}throughput", {}).setdefault(f"{b}x{length}", []).append(
                        _throughput(by_name[name], b, length))
                for length in LATENCY_LENGTHS:
                    samples[name].setdefault(f"{form}latency_ms", {}).setdefault(f"1x{length}", []).append(
                        1000 / _throughput(by_name[name], 1, length))
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    return {name: {"train_step_s": median(train[name]),
                   **{key: {shape: median(v) for shape, v in by_shape.items()}
                      for key, by_shape in samples[name].items()},
                   "threads": torch.get_num_threads()} for name in nets}


def memory(out_dir: str, model: str) -> dict:
    """Peak memory of training steps above the loaded model, in this (fresh) process."""
    import pruning

    net = pruning.load(out_dir, model)
    device = next(net.parameters()).device
    before = _rss_mb() if device.type == "cpu" else 0.0
    _train_step_s(net, steps=3)
    return {"train_peak_mb": _peak_mb(device) - before}


def _tokens(net, batch: int, length: int) -> dict:
    import torch

    device = next(net.parameters()).device
    vocab = net.model.config.vocab_size
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch, length), device=device)  # past the special tokens
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _train_step_s(net, steps: int) -> float:
    """Median time of a training step of the final configuration (its trainable parameters, AdamW)."""
    import torch

    params = net.trainable_parameters()
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    batch = _tokens(net, *TRAIN_SHAPE)
    net.train()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        logits = net(**batch).float()
        loss = logits.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _sync(logits.device)
        times.append(time.perf_counter() - start)
    net.eval()
    return sorted(times[1:])[len(times[1:]) // 2]  # the first step allocates


def _throughput(net, batch: int, length: int, seconds: float = 1.0) -> float:
    import torch

    inputs = _tokens(net, batch, length)
    with torch.no_grad():
        net(**inputs)
        _sync(inputs["input_ids"].device)
        start, runs = time.perf_counter(), 0
        while runs < 3 or time.perf_counter() - start < seconds:
            net(**inputs)
            runs += 1
        _sync(inputs["input_ids"].device)
    return batch * runs / (time.perf_counter() - start)


def _rss_mb() -> float:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def report(store: Store, command: str) -> tuple[dict, str]:
    rows = store.rows
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    table: dict = {}
    for task in tasks:
        for method in METHODS:
            runs = [r for r in rows if r["task"] == task and r["method"] == method]
            if not runs:
                continue
            entry = {"metric_name": runs[0]["metric_name"], "seeds": len(runs)}
            entry["mean"], entry["std"] = mean_spread([100 * r["metric"] for r in runs])
            for key in ("train_step_s", "retrain_step_s", "train_peak_mb", "backbone_params",
                        "backbone_params_before", "trainable_params"):
                entry[key] = mean_spread([r[key] for r in runs])[0]
            entry["layers_removed_share"] = mean_spread(
                [1 - r["layer_params_after"] / r["layer_params_before"] if r["layer_params_before"] else 0.0
                 for r in runs])[0]
            entry["backbone_removed_share"] = mean_spread(
                [1 - r["backbone_params"] / r["backbone_params_before"] for r in runs])[0]
            for key in INFERENCE_KEYS:  # rows measured before a form was timed lack it: None
                timed = [r for r in runs if r.get(key)]
                entry[key] = {shape: mean_spread([r[key][shape] for r in timed])[0]
                              for shape in timed[0][key]} if timed else None
            table.setdefault(task, {})[method] = entry
    complete = [t for t in tasks if all(m in table[t] for m in METHODS)]
    summary = _summary(table, complete)
    data = {"machine": machine(), "command": command, "model": rows[0]["model"] if rows else None,
            "tasks": {t: dataclasses.asdict(TASKS[t]) for t in tasks},
            "results": table, "complete": complete, "summary": summary,
            "cpus": sorted({r.get("cpu") or "not recorded" for r in rows}),
            "guards": [{"task": r["task"], "seed": r["seed"], "guard": r.get("guard"), "prior": r.get("prior")}
                       for r in rows if r["method"] == "speed"]}
    return data, _markdown(data)


def _summary(table: dict, complete: list[str]) -> dict:
    if not complete:
        return {}

    def ratio(key: str, invert: bool = False) -> float:
        values = [table[t]["lora"][key] / table[t]["speed"][key] for t in complete]
        value = mean_spread(values)[0]
        return 1 / value if invert else value

    per_task = {t: table[t]["speed"]["mean"] - table[t]["lora"]["mean"] for t in complete}
    metric_delta = min(per_task.values())  # the bar holds on every task, not on the average
    layers_removed = mean_spread([table[t]["speed"]["layers_removed_share"] for t in complete])[0]
    backbone_removed = mean_spread([table[t]["speed"]["backbone_removed_share"] for t in complete])[0]
    def speedups(key: str, inverse: bool = False) -> dict[str, float] | None:
        """Per shape, speed mode's speed-up over LoRA (a throughput's ratio; a latency's inverse ratio), mean over
        the tasks where both have `key`."""
        timed = [t for t in complete if table[t]["lora"][key] and table[t]["speed"][key]]
        if not timed:
            return None
        gain = (lambda lora, speed: lora / speed) if inverse else (lambda lora, speed: speed / lora)
        return {shape: mean_spread([gain(table[t]["lora"][key][shape], table[t]["speed"][key][shape])
                                    for t in timed])[0] for shape in table[timed[0]]["lora"][key]}

    inference = speedups("folded_throughput")
    served = "folded_" if inference else ""  # rows timed only as loaded: judge those
    inference = inference or speedups("throughput")
    train_speedup = ratio("train_step_s")
    retrain_speedup = ratio("retrain_step_s")
    memory = mean_spread([table[t]["speed"]["train_peak_mb"] / table[t]["lora"]["train_peak_mb"] - 1
                          for t in complete])[0]
    latency = speedups(f"{served}latency_ms", inverse=True)
    measured = {f"{name}_as_loaded": {"value": min(values.values()), "per_shape": values, "target": "measured",
                                      "met": None}
                for name, values in (("inference_speedup", speedups("throughput")),
                                     ("batch1_latency_speedup", speedups("latency_ms", inverse=True)))
                if served and values}
    return {
        "layer_params_removed": {"value": layers_removed, "target": ">= 0.30", "met": layers_removed >= 0.30},
        "backbone_params_removed_incl_embeddings": {"value": backbone_removed, "target": ">= 0.35",
                                                    "met": backbone_removed >= 0.35},
        "metric_minus_lora_points_worst_task": {"value": metric_delta, "per_task": per_task, "target": ">= -1.0",
                                                "met": metric_delta >= -1.0},
        "inference_speedup": {"value": min(inference.values()), "per_shape": inference, "target": ">= 1.4",
                              "met": min(inference.values()) >= 1.4},
        "train_step_speedup": {"value": train_speedup, "target": ">= 1.3", "met": train_speedup >= 1.3},
        "retrain_step_speedup_real_data": {"value": retrain_speedup, "target": ">= 1.3", "met": retrain_speedup >= 1.3},
        "train_peak_memory_change": {"value": memory, "target": "<= -0.25", "met": memory <= -0.25},
        **({"batch1_latency_speedup": {"value": min(latency.values()), "per_shape": latency, "target": "measured",
                                       "met": None}} if latency else {}),
        **measured,
    }


def _markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# Speed mode (backbone + rank pruning) against plain LoRA",
        "",
        f"Command: `{data['command']}`  ",
        f"Report made on: {describe_machine(m)}  ",
        f"Model: {data['model']}. Metric x 100, mean ± std over seeds. Step time and peak memory (above the loaded "
        f"model) at batch {TRAIN_SHAPE[0]}, length {TRAIN_SHAPE[1]}; real-data step = the final training's wall "
        "time per step on the task's data.",
        "",
        "| task | method | metric | layers removed | backbone removed | step s | real-data step s | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, methods in data["results"].items():
        for method, r in methods.items():
            lines.append(
                f"| {task} | {method} | {r['metric_name']} {r['mean']:.2f} ± {r['std']:.2f} (n={r['seeds']}) | "
                f"{100 * r['layers_removed_share']:.1f}% | {100 * r['backbone_removed_share']:.1f}% | "
                f"{r['train_step_s']:.3f} | {r['retrain_step_s']:.3f} | {r['train_peak_mb']:.0f} |")
    lines += [
        "",
        "Inference, random tokens: throughput in examples/s, batch-1 latency in ms; served = the LoRA folded into "
        "the weights (`pruning.fold_lora`), as loaded = `pruning.load`'s model, the LoRA a branch beside each "
        "projection.",
        "",
        "| task | method | form | " + " | ".join(f"ex/s {b}x{n}" for b, n in SHAPES)
        + " | " + " | ".join(f"ms 1x{n}" for n in LATENCY_LENGTHS) + " |",
        "|---|---|---|" + "---|" * (len(SHAPES) + len(LATENCY_LENGTHS)),
    ]
    for task, methods in data["results"].items():
        for method, r in methods.items():
            for form, prefix in FORMS:
                if not r[f"{prefix}throughput"]:
                    continue
                latency = r[f"{prefix}latency_ms"]
                lines.append(
                    f"| {task} | {method} | {form} | "
                    + " | ".join(f"{r[f'{prefix}throughput'][f'{b}x{n}']:.0f}" for b, n in SHAPES) + " | "
                    + " | ".join("—" if not latency else f"{latency[f'1x{n}']:.1f}" for n in LATENCY_LENGTHS)
                    + " |")
    guarded = [r for r in data["guards"] if r["guard"] or r.get("prior")]
    if guarded:
        lines += ["", "Speed mode's quality guard (share of the layers' parameters asked for and reached, and why "
                      "it stopped; stages scored on the validation split carved from train), or why it pruned "
                      "nothing:", ""]
        lines += [f"- {r['task']} seed {r['seed']}: " + (
            f"asked {100 * r['guard']['asked_share']:.1f}%, reached {100 * r['guard']['reached_share']:.1f}%: "
            f"{r['guard']['stopped']}" if r["guard"] else f"kept the search's prior: {r['prior']}") for r in guarded]
    lines += ["", "CPUs the runs were on (step times and throughput compare only within one): "
              + "; ".join(data["cpus"]) + "."]
    if data["summary"]:
        lines += ["", f"Targets (mean over {', '.join(data['complete'])}):", ""]
        for name, t in data["summary"].items():
            verdict = "no target" if t["met"] is None else "met" if t["met"] else "MISSED"
            lines.append(f"- {name}: {t['value']:.3f} (target {t['target']}) — {verdict}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=str(DEFAULT_GLUE))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        if job["kind"] == "timings":
            print(json.dumps(timings(job["out_dirs"], job["model"])))
        elif job["kind"] == "memory":
            print(json.dumps(memory(job["out"], job["model"])))
        else:
            print(json.dumps(run_method(job["method"], job["task"], job["seed"], job["data_dir"], job["model"],
                                        job["out"])))
        return 0
    command = "python -m bench.speed " + shlex.join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only")
    store = Store(args.results / "speed.jsonl")
    if not args.report_only:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for task in args.tasks.split(","):
                if all(store.done({"task": task, "method": m, "seed": seed}) for m in METHODS):
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    rows = {m: run_child("bench.speed", {"kind": "train", "method": m, "task": task, "seed": seed,
                                                         "data_dir": args.data_dir, "model": args.model,
                                                         "out": f"{tmp}/{m}"}) for m in METHODS}
                    measured = run_child("bench.speed", {"kind": "timings", "model": args.model,
                                                         "out_dirs": {m: f"{tmp}/{m}" for m in METHODS}})
                    for m in METHODS:
                        mem = run_child("bench.speed", {"kind": "memory", "out": f"{tmp}/{m}", "model": args.model})
                        row = {**rows[m], **measured[m], **mem}
                        row.pop("out")
                        store.add({**row, **provenance()})
                        print(f"{task} {m} seed {seed}: {row['metric_name']} {row['metric']:.4f}, "
                              f"step {row['train_step_s']:.3f}s, {row['train_peak_mb']:.0f} MiB", flush=True)
                _write(args.results, store, command)
    _write(args.results, store, command)
    return 0


def _write(results: Path, store: Store, command: str) -> None:
    write_report(results, "speed", *report(store, command))


if __name__ == "__main__":
    raise SystemExit(main())
