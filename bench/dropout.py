"""What dropout costs a training step: the search's supernet (the default space: LoRA on every projection,
adapters, prefixes) and all-linear LoRA at the budget, each trained with the spec's dropout (the backbone's 0.1 and
LoRA's 0.1) and without any (`pruning.train.without_dropout`, the search's default since schedule.dropout).
Real batches of the quality benchmark's task, seed 0. Writes results/dropout.md.

    python -m bench.dropout --tasks sst2 --steps 5 --repeats 3
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

from .common import describe_machine, machine, mean_spread, micro_parser, provenance, publish
from .quality import ALL_LINEAR, RESULTS, _per_rank_params, base_spec


def measure(task: str, steps: int, repeats: int, data_dir: str, model: str) -> list[dict]:
    from pruning import SpaceSpec
    from pruning.pipeline import _Context
    from pruning.schedule import spread_ranks
    from pruning.train import train, without_dropout

    spec = base_spec(task, 0, data_dir, model)
    ctx = _Context.prepare(spec)
    ranks = spread_ranks(_per_rank_params(spec), spec.budget)
    alllinear = _Context.prepare(dataclasses.replace(spec, space=SpaceSpec(
        types=("lora",), lora=dataclasses.replace(spec.space.lora, targets=ALL_LINEAR))))
    models = {"supernet": ctx.supernet(), "all-linear LoRA": alllinear.supernet(lora_ranks=ranks)}
    times: dict[tuple[str, str], list[float]] = {}
    ways = [("with dropout", lambda _net: contextlib.nullcontext()), ("without", without_dropout)]
    for repeat in range(repeats + 1):  # the first repeat warms up and is dropped
        for name, net in models.items():
            for way, context in ways if repeat % 2 == 0 else ways[::-1]:  # neither always goes first
                batches = ctx.batches(ctx.search_train, spec.seed + repeat)
                start = time.perf_counter()
                with context(net):
                    train(net, [p for p in net.parameters() if p.requires_grad], batches, steps=steps,
                          lr=spec.train.lr, problem=ctx.task.problem, device=ctx.device)
                if repeat:
                    times.setdefault((name, way), []).append((time.perf_counter() - start) / steps)
    return [{"task": task, "model": name, "batch": spec.train.batch_size, "max_length": spec.train.max_length,
             "params": sum(p.numel() for p in net.parameters() if p.requires_grad),
             **{way: mean_spread(times[name, way]) for way, _ in ways}}
            for name, net in models.items()]


def main(argv: list[str] | None = None) -> int:
    args = micro_parser(__doc__, tasks="sst2", steps=5).parse_args(argv)
    rows = [row for task in args.tasks.split(",")
            for row in measure(task, args.steps, args.repeats, args.data_dir, args.model)]
    lines = ["# What dropout costs a training step", "",
             f"Command: `python -m bench.dropout --tasks {args.tasks} --steps {args.steps} --repeats {args.repeats}`  ",
             f"Machine: {describe_machine(machine())}; commit {provenance()['commit']}. Model: {args.model}, "
             f"seed 0, the quality benchmark's batches. Seconds per step (forward, backward, AdamW), mean ± std over "
             f"{args.repeats} repeats of {args.steps} steps after one warm-up repeat, taking turns to go first. "
             "With dropout: the backbone's own (0.1) and LoRA's (0.1); without: every `nn.Dropout` at 0, as the "
             "search trains its supernet by default (`schedule.dropout`).", "",
             "| task (batch x len) | model | trainable params | with dropout s | without s | speed-up |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        (on, on_sd), (off, off_sd) = r["with dropout"], r["without"]
        lines.append(f"| {r['task']} ({r['batch']} x {r['max_length']}) | {r['model']} | {r['params']:,} "
                     f"| {on:.3f} ± {on_sd:.3f} | {off:.3f} ± {off_sd:.3f} | {on / off:.2f}x |")
    publish(RESULTS, "dropout", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
