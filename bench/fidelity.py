"""How the search's choices depend on its length: the configuration a search ends on (which units survive, which
rank each LoRA projection keeps) at several round lengths, compared with the longest run's, and with another seed's
at the same length (the noise floor: how much two equally long searches disagree anyway). Search phase only: each
run stops where the retraining would begin, so a run costs its search and nothing more.

    python -m bench.fidelity --tasks sst2,mrpc --steps-per-round 4,8,15,30,60 --seeds 0,1

At the quality benchmark's task settings and budget (bench/common.py), with the product's default space, policy and
schedule except `schedule.steps_per_round`. Rows are kept in results/fidelity.jsonl (a rerun skips finished ones);
the report is results/fidelity.md.

Agreement of two configurations: the share of the budget they place in the same slots, sum over slots of
min(params_a, params_b) / max(total_a, total_b), a slot being a LoRA projection of one layer (its parameters:
rank x (in + out)) or a whole adapter or prefix. 1.0: the same configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import tempfile
from pathlib import Path

from .common import DEFAULT_GLUE, TASKS, Store, machine, mean_spread, provenance, run_child, write_report
from .quality import RESULTS, base_spec


def run_search(task: str, seed: int, steps_per_round: int, data_dir: str, model: str) -> dict:
    import pruning
    from pruning.result import Cancelled

    spec = base_spec(task, seed, data_dir, model)
    spec = dataclasses.replace(spec, schedule=dataclasses.replace(pruning.ScheduleSpec(),
                                                                  steps_per_round=steps_per_round))
    retraining = []

    def on_progress(event) -> None:
        if event.kind == "phase" and event.phase == "retrain":
            retraining.append(True)

    with tempfile.TemporaryDirectory() as tmp:
        try:
            pruning.search(spec, f"{tmp}/out", on_progress=on_progress, should_stop=lambda: bool(retraining),
                           checkpoint_dir=f"{tmp}/checkpoint")
        except Cancelled:
            pass
        state = json.loads(Path(f"{tmp}/checkpoint/state.json").read_text())
    return {"task": task, "seed": seed, "steps_per_round": steps_per_round, "model": model,
            "configuration": slots(spec, state["units"], state["lora_ranks"] or {}),
            "types": sorted({key.split(".")[0] for key in state["units"]}),
            "search_wall_s": state["search_wall_s"], "learn_step": state["learn"]["step"],
            "learned": state["learn"]["learned"], "train_steps": spec.train.steps,
            "rounds": [{"round": r["round"], "params": r["trainable_params"], "metric": r["metric"],
                        "type_values": r["type_values"]} for r in state["records"]]}


def slots(spec, units: list[str], lora_ranks: dict[str, int]) -> dict[str, int]:
    """Parameters per slot: rank x per-rank parameters for each LoRA projection, the whole unit otherwise."""
    from .quality import _per_rank_params, _supernet_unit_params

    per_rank = _per_rank_params(spec)
    whole = _supernet_unit_params(spec)
    out = {path: rank * per_rank[path] for path, rank in lora_ranks.items()}
    out.update({key: whole[key] for key in units if not key.startswith("lora.")})
    return out


def by_role(configuration: dict[str, int]) -> dict[str, int]:
    """The same parameters summed over layers: per LoRA projection role (the module path after the layer
    index) and per whole-unit type."""
    out: dict[str, int] = {}
    for slot, params in configuration.items():
        parts = slot.split(".")
        digit = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        role = ".".join(parts[digit + 1:]) if "layer" in parts else parts[0]
        out[role] = out.get(role, 0) + params
    return out


def agreement(a: dict[str, int], b: dict[str, int]) -> float:
    shared = sum(min(a.get(slot, 0), b.get(slot, 0)) for slot in set(a) | set(b))
    return shared / max(sum(a.values()), sum(b.values()), 1)


def _agree(runs: dict, a: tuple, b: tuple, grain=lambda configuration: configuration) -> float:
    return agreement(grain(runs[a]["configuration"]), grain(runs[b]["configuration"]))


def report(store: Store, command: str) -> tuple[dict, str]:
    rows = store.rows
    lora = Store(RESULTS / "quality.jsonl").rows  # what the searches' cost is measured against
    tasks = sorted({r["task"] for r in rows})
    table: dict = {}
    for task in tasks:
        runs = {(r["seed"], r["steps_per_round"]): r for r in rows if r["task"] == task}
        longest = max(s for _, s in runs)
        lengths = sorted({s for _, s in runs})
        per_length = {}
        for length in lengths:
            seeds = sorted(seed for seed, s in runs if s == length)
            pairs_longest = [((seed, length), (seed, longest)) for seed in seeds
                             if (seed, longest) in runs and length != longest]
            pairs_seeds = [((a, length), (b, length)) for i, a in enumerate(seeds) for b in seeds[i + 1:]]
            to_longest = [_agree(runs, *pair) for pair in pairs_longest]
            between = [_agree(runs, *pair) for pair in pairs_seeds]
            roles_longest = [_agree(runs, *pair, grain=by_role) for pair in pairs_longest]
            roles_between = [_agree(runs, *pair, grain=by_role) for pair in pairs_seeds]
            walls = [runs[seed, length]["search_wall_s"] for seed in seeds]
            per_length[length] = {
                "seeds": seeds, "agreement_with_longest": mean_spread(to_longest)[0] if to_longest else None,
                "agreement_between_seeds": mean_spread(between)[0] if between else None,
                "role_agreement_with_longest": mean_spread(roles_longest)[0] if roles_longest else None,
                "role_agreement_between_seeds": mean_spread(roles_between)[0] if roles_between else None,
                "search_wall_s": mean_spread(walls)[0], "train_steps": runs[seeds[0], length]["train_steps"],
                "learn_steps": mean_spread([runs[seed, length]["learn_step"] for seed in seeds])[0],
                "types_left": sorted({kind for seed in seeds for kind in runs[seed, length]["types"]}),
            }
        retrain = [r["retrain_wall_s"] for r in lora if r["task"] == task and r["method"] == "lora"
                   and r["steps"] == TASKS[task].steps]
        table[task] = {"longest": longest, "lengths": per_length,
                       "lora_retrain_wall_s": mean_spread(retrain)[0] if retrain else None}
    data = {"machine": machine(), "command": command, "results": table}
    return data, _markdown(data)


def _markdown(data: dict) -> str:
    m = data["machine"]
    lines = ["# Search fidelity: how the chosen configuration moves with the search's length", "",
             f"Command: `{data['command']}`  ",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads)  ",
             "Agreement: the share of the budget two configurations place in the same slots (LoRA projection of a "
             "layer, or a whole adapter or prefix); 1.00 = the same configuration; per role: the same with each "
             "projection role's (and unit type's) parameters summed over layers. Against the longest run of the "
             "same seed, and between seeds at the same length (the noise floor). Search phase only; its wall time "
             "against the retraining of LoRA r=8 on q, v at the task's steps (results/quality.jsonl).", "",
             "| task | steps per round | seeds | agreement with longest | between seeds | per role: with longest | "
             "per role: between seeds | learn steps | search s | search / LoRA retrain | types kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ratio(a, b):
        return a / b if b else None

    def fmt(value) -> str:
        return "—" if value is None else f"{value:.2f}"

    for task, t in data["results"].items():
        for length, r in t["lengths"].items():
            lines.append(f"| {task} | {length} | {','.join(map(str, r['seeds']))} | "
                         f"{fmt(r['agreement_with_longest'])} | {fmt(r['agreement_between_seeds'])} | "
                         f"{fmt(r['role_agreement_with_longest'])} | {fmt(r['role_agreement_between_seeds'])} | "
                         f"{r['learn_steps']:.0f} | {r['search_wall_s']:.0f} | "
                         f"{fmt(ratio(r['search_wall_s'], t['lora_retrain_wall_s']))} | {', '.join(r['types_left'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=str(DEFAULT_GLUE))
    parser.add_argument("--tasks", default="sst2,mrpc")
    parser.add_argument("--steps-per-round", default="4,8,15,30,60")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(run_search(job["task"], job["seed"], job["steps_per_round"], job["data_dir"],
                                    job["model"])))
        return 0
    command = "python -m bench.fidelity " + shlex.join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only")
    store = Store(args.results / "fidelity.jsonl")
    if not args.report_only:
        lengths = sorted((int(s) for s in args.steps_per_round.split(",")), reverse=True)  # longest first
        for seed in (int(s) for s in args.seeds.split(",")):
            for task in args.tasks.split(","):
                for length in lengths:
                    key = {"task": task, "seed": seed, "steps_per_round": length}
                    if store.done(key):
                        continue
                    row = run_child("bench.fidelity", {**key, "data_dir": args.data_dir, "model": args.model})
                    store.add({**row, **provenance()})
                    print(f"{task} seed {seed} {length} steps/round: {row['search_wall_s']:.0f}s", flush=True)
                    write_report(args.results, "fidelity", *report(store, command))
    write_report(args.results, "fidelity", *report(store, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
