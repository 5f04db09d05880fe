"""One search with spec overrides on a GLUE task, at the quality benchmark's task settings and budget but the
product's default schedule: how a change of the search space or policy moves the result, before it becomes a
default. Rows are appended to results/variants.jsonl.

    python -m bench.variant alllinear-rank2 sst2 '{"space.lora.targets": ["q","k","v","o","ffn_in","ffn_out"],
                                                  "space.lora.rank_step": 2}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from .common import DEFAULT_GLUE, provenance
from .quality import RESULTS, base_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("task")
    parser.add_argument("overrides", help="JSON object: dotted spec field -> value")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=str(DEFAULT_GLUE))
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    args = parser.parse_args(argv)

    import pruning
    from pruning import SearchSpec

    data = base_spec(args.task, args.seed, args.data_dir, args.model).to_dict()
    data["schedule"] = {}  # the product's default schedule, not the benchmark's shorter one
    overrides = json.loads(args.overrides)
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    spec = SearchSpec.from_dict(data)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        result = pruning.search(spec, tmp)
    ranks: dict[str, int] = {}
    for path, rank in (result.configuration.get("lora_ranks") or {}).items():
        role = path.split(".layer.")[1].split(".", 1)[1]  # e.g. attention.self.value
        ranks[role] = ranks.get(role, 0) + rank
    row = {"name": args.name, "task": args.task, "seed": args.seed, "overrides": overrides,
           "metric_name": result.metric_name, "metric": result.metric, "params": result.trainable_params,
           "units": result.configuration["units"], "rank_per_role": ranks, "search_wall_s": result.search_wall_s,
           "retrain_wall_s": result.retrain_wall_s, "total_wall_s": time.monotonic() - start,
           "rounds": [{"round": r.round, "params": r.trainable_params, "metric": r.metric,
                       "type_values": r.type_values} for r in result.rounds],
           "backbone": _backbone_outcome(result.configuration["backbone"]), **provenance()}
    with Path(RESULTS / "variants.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0


def _backbone_outcome(record: dict | None) -> dict | None:
    """Speed mode's pruning in brief: the share of the layers' parameters removed, asked for, and why it stopped."""
    if not record:
        return None
    guard = record.get("guard") or {}
    return {"removed_share": 1 - record["layer_params_after"] / record["layer_params_before"],
            "asked_share": guard.get("asked_share"), "stopped": guard.get("stopped")}


if __name__ == "__main__":
    raise SystemExit(main())
