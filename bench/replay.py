"""What one round's type calibration costs with the layer replay and without it (pruning/calibration.py): the
ablations of four units of each type, spread over depth, on the quality benchmark's validation split. The losses
are the same either way (tests/test_calibration.py); this measures the time. Writes results/replay.md.

    python -m bench.replay --tasks sst2,mrpc --repeats 3
"""

from __future__ import annotations

import time

from .common import mean_spread, micro_parser, provenance, publish
from .quality import RESULTS, base_spec


def measure(task: str, repeats: int, data_dir: str, model: str) -> dict:
    import torch

    from pruning.calibration import REPLAY_BYTES, sample_per_type, unit_ablation
    from pruning.pipeline import _Context

    spec = base_spec(task, 0, data_dir, model)
    ctx = _Context.prepare(spec)
    supernet = ctx.supernet()
    keys = sample_per_type(supernet.unit_keys(), spec.policy.calibration_units)
    with torch.no_grad():  # trained-looking units, so no ablation is trivially zero
        for unit in supernet.units.values():
            for parameter in unit.trainable():
                parameter.normal_(0, 0.02)
    times: dict[str, list[float]] = {"recomputed": [], "replayed": []}
    values = {}
    ways = [("recomputed", 0), ("replayed", REPLAY_BYTES)]
    unit_ablation(supernet, ctx.validation, keys[:1], *ctx.eval_batching())  # warm
    for repeat in range(repeats):
        for name, replay_bytes in ways if repeat % 2 == 0 else ways[::-1]:  # neither always goes first
            start = time.perf_counter()
            values[name] = unit_ablation(supernet, ctx.validation, keys, *ctx.eval_batching(),
                                         replay_bytes=replay_bytes)
            times[name].append(time.perf_counter() - start)
    gap = max(abs(values["recomputed"][k] - values["replayed"][k]) for k in keys)
    return {"task": task, "examples": len(ctx.validation), "units": len(keys), "layers": supernet.num_layers,
            "max_length": spec.train.max_length, "largest_difference": gap,
            **{name: mean_spread(t) for name, t in times.items()}}


def main(argv: list[str] | None = None) -> int:
    args = micro_parser(__doc__, tasks="sst2,mrpc").parse_args(argv)
    rows = [measure(task, args.repeats, args.data_dir, args.model) for task in args.tasks.split(",")]
    machine = provenance()
    lines = ["# The calibration's ablations with and without the layer replay", "",
             f"Command: `python -m bench.replay --tasks {args.tasks} --repeats {args.repeats}`  ",
             f"Machine: {machine.get('cpu')}; commit {machine.get('commit')}. Model: {args.model}, the default space "
             f"(LoRA on every projection, adapters, prefixes), seed 0. Seconds for one round's calibration, mean ± "
             f"std over {args.repeats} repeats after one warm-up pass, taking turns to go first.", "",
             "| task (len) | validation examples | units ablated | recomputed s | replayed s | speed-up | largest "
             "loss difference |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        (slow, slow_sd), (fast, fast_sd) = r["recomputed"], r["replayed"]
        lines.append(f"| {r['task']} ({r['max_length']}) | {r['examples']} | {r['units']} of {r['layers']} layers "
                     f"| {slow:.2f} ± {slow_sd:.2f} | {fast:.2f} ± {fast_sd:.2f} | {slow / fast:.2f}x "
                     f"| {r['largest_difference']:.1e} |")
    publish(RESULTS, "replay", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
