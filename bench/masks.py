"""How long speed mode's backbone masks must learn before their ranking settles (issue 12: estimation that ranks).

    python -m bench.masks --tasks sst2,stsb --seeds 0 --chunks 10

On all-MiniLM-L6-v2 with the quality benchmark's task settings and budget, the supernet with speed mode's masks
trains as a search trains it (chunks of one search round's steps, each with a fresh optimizer, the masks under their
L1 penalty at their own learning rate). After every chunk, each ranking (the masks' magnitude, Light-PEFT's; their
first-order Taylor importance accumulated since the start) chooses what speed mode's ratios would remove: a third
of each layer's heads, 40% of the FFN neurons. Reported per chunk, for each ranking: the share of the removed heads
and neurons the previous chunk's choice also removed (`with previous`), and the share the last chunk's choice also
removes (`with last`). A ranking has settled where `with previous` stays near 1. Steps are also given as a share
of the task's train.steps, the unit in which speed mode's estimation length would be set. Rows go to
results/masks.jsonl (resumable by task and seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
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
from .quality import base_spec

RESULTS = Path(__file__).parent / "results"
SCORES = ("magnitude", "taylor")


def removed(plan, planner) -> set[tuple[str, int, int]]:
    """What a plan removes: ('head', layer, i) and ('neuron', layer, i)."""
    heads, neurons = plan
    gone = {("head", layer, i) for layer, scores in enumerate(planner.head_scores) for i in range(len(scores))
            if i not in heads[layer]}
    return gone | {("neuron", layer, i) for layer, scores in enumerate(planner.neuron_scores)
                   for i in range(len(scores)) if i not in neurons[layer]}


def agreement(a: set, b: set) -> float:
    """The share of `a`'s removals that `b` makes too (the ratios make both the same size)."""
    return len(a & b) / len(a) if a else 1.0


def trace_masks(spec, chunks: int) -> dict:
    """Train `spec`'s masked supernet `chunks` rounds' steps, recording each ranking's removals after every chunk."""
    from pruning import BackboneSpec
    from pruning.backbone import Planner
    from pruning.pipeline import _Context, _train_supernet

    spec = dataclasses.replace(spec, backbone=BackboneSpec(enabled=True)).validate()
    ctx = _Context.prepare(spec)
    supernet = ctx.supernet(masks=True)
    batches = ctx.batches(ctx.search_train, spec.seed)
    steps = spec.round_steps()
    choices: dict[str, list[set]] = {score: [] for score in SCORES}
    for _ in range(chunks):
        _train_supernet(ctx, supernet, batches, steps, None, None, None)
        for score in SCORES:
            planner = Planner.of(supernet, score)
            choices[score].append(removed(planner.plan(spec.backbone), planner))
    trace = {score: [{"steps": (i + 1) * steps, "share_of_train_steps": (i + 1) * steps / spec.train.steps,
                      "with_previous": agreement(chosen, runs[i - 1]) if i else None,
                      "with_last": agreement(chosen, runs[-1])}
                     for i, chosen in enumerate(runs)] for score, runs in choices.items()}
    between = [agreement(a, b) for a, b in zip(choices["magnitude"], choices["taylor"], strict=True)]
    return {"seed": spec.seed, "train_steps": spec.train.steps, "round_steps": steps,
            "removed": len(choices["magnitude"][-1]), "trace": trace, "magnitude_with_taylor": between}


def report(store: Store, command: str) -> tuple[dict, str]:
    rows = store.rows
    lines = ["# How long the backbone masks learn before their ranking settles", "",
             f"Command: `{command}`  ", f"Machine: {describe_machine(machine())}  ",
             "Per chunk of one search round's steps: the share of the heads and neurons a ranking removes (speed "
             "mode's ratios) that the previous chunk's choice also removed, and that the last chunk's removes; "
             "mean over seeds. `magnitude = taylor`: the two rankings' agreement at that point.", ""]
    data: dict = {"command": command, "machine": machine(), "tasks": {}}
    for task in dict.fromkeys(r["task"] for r in rows):
        runs = [r for r in rows if r["task"] == task]
        first = runs[0]
        lines += [f"## {task} (train.steps {first['train_steps']}, {first['removed']} heads and neurons removed, "
                  f"seeds {', '.join(str(r['seed']) for r in runs)})", "",
                  "| steps | share of train.steps | magnitude: with previous | magnitude: with last | "
                  "taylor: with previous | taylor: with last | magnitude = taylor |", "|---|---|---|---|---|---|---|"]
        table = []
        for i, point in enumerate(first["trace"]["magnitude"]):
            cells = {}
            for score in SCORES:
                for key in ("with_previous", "with_last"):
                    values = [r["trace"][score][i][key] for r in runs if r["trace"][score][i][key] is not None]
                    cells[f"{score}_{key}"] = mean_spread(values)[0] if values else None
            cells["magnitude_with_taylor"] = mean_spread([r["magnitude_with_taylor"][i] for r in runs])[0]
            table.append({"steps": point["steps"], "share_of_train_steps": point["share_of_train_steps"], **cells})
            lines.append(f"| {point['steps']} | {point['share_of_train_steps']:.2f} | " + " | ".join(
                "—" if cells[k] is None else f"{cells[k]:.2f}"
                for k in ("magnitude_with_previous", "magnitude_with_last", "taylor_with_previous",
                          "taylor_with_last", "magnitude_with_taylor")) + " |")
        data["tasks"][task] = table
        lines.append("")
    return data, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=str(DEFAULT_GLUE))
    parser.add_argument("--tasks", default="sst2,stsb")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--chunks", type=int, default=10, help="search rounds' worth of steps to trace")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        spec = base_spec(job["task"], job["seed"], job["data_dir"], job["model"])
        print(json.dumps({"task": job["task"], "model": job["model"], **trace_masks(spec, job["chunks"])}))
        return 0
    command = "python -m bench.masks " + shlex.join(argv if argv is not None else sys.argv[1:])
    store = Store(args.results / "masks.jsonl")
    for seed in (int(s) for s in args.seeds.split(",")):
        for task in args.tasks.split(","):
            if task not in TASKS:
                parser.error(f"unknown task {task!r} (tasks: {', '.join(TASKS)})")
            if store.done({"task": task, "seed": seed}):
                continue
            row = run_child("bench.masks", {"task": task, "seed": seed, "data_dir": args.data_dir,
                                            "model": args.model, "chunks": args.chunks})
            store.add({**row, **provenance()})
            print(f"{task} seed {seed}: {json.dumps(row['trace']['magnitude'][-1])}", flush=True)
    write_report(args.results, "masks", *report(store, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
