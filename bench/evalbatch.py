"""What an evaluation pass costs at each batching: rows only (128, the old default; 32) or rows and a token cap
(`train.eval_batch_tokens`, padding included). The search's supernet (the default space, seed 0) in eval mode, one
pass of the training loss over the task's validation split (what the learning gate, each round's metric and each
of the calibration's ablations pay) and over its dev set. Writes results/eval.md.

    python -m bench.evalbatch --tasks sst2,stsb,mrpc --repeats 3
"""

from __future__ import annotations

import argparse
import time

from .common import DEFAULT_GLUE, describe_machine, machine, mean_spread, provenance
from .quality import RESULTS, base_spec

BATCHINGS = ((128, None), (32, None), (128, 512), (128, 1024), (128, 2048))  # (rows, tokens)


def _name(rows: int, tokens: int | None) -> str:
    return f"{rows} rows" + (f", {tokens} tokens" if tokens else "")


def measure(task: str, repeats: int, data_dir: str, model: str) -> list[dict]:
    from pruning.pipeline import _Context
    from pruning.train import eval_batches, mean_loss

    spec = base_spec(task, 0, data_dir, model)
    ctx = _Context.prepare(spec)
    supernet = ctx.supernet()
    out = []
    for split, data in (("validation", ctx.validation), ("dev", ctx.dev_data)):
        lengths = [len(row) for row in data.input_ids]
        times: dict[tuple, list[float]] = {}
        for repeat in range(repeats + 1):  # the first repeat warms up and is dropped
            for batching in BATCHINGS if repeat % 2 == 0 else BATCHINGS[::-1]:  # none always goes first
                start = time.perf_counter()
                mean_loss(supernet, data, batching[0], ctx.pad_id, ctx.device, batching[1])
                if repeat:
                    times.setdefault(batching, []).append(time.perf_counter() - start)
        for rows, tokens in BATCHINGS:
            batches = eval_batches(data.input_ids, rows, tokens)
            padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
            out.append({"task": task, "split": split, "examples": len(data), "mean_length": sum(lengths) / len(data),
                        "batching": _name(rows, tokens), "batches": len(batches), "padded": padded / sum(lengths),
                        "seconds": mean_spread(times[rows, tokens])})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="sst2,stsb,mrpc")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=str(DEFAULT_GLUE))
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    args = parser.parse_args(argv)
    rows = [row for task in args.tasks.split(",") for row in measure(task, args.repeats, args.data_dir, args.model)]
    lines = ["# What an evaluation pass costs at each batching", "",
             f"Command: `python -m bench.evalbatch --tasks {args.tasks} --repeats {args.repeats}`  ",
             f"Machine: {describe_machine(machine())}; commit {provenance()['commit']}. Model: {args.model}, the "
             "search's supernet (default space, seed 0) in eval mode; seconds per pass of the loss over the split, "
             f"mean ± std over {args.repeats} repeats after one warm-up repeat, taking turns to go first. Batches "
             "hold rows of similar lengths (shortest first); padded = tokens computed (rows x each batch's longest) "
             "/ real tokens. The search scores its validation split (256 rows carved from train) once per learning "
             "check and round, and once more per calibration ablation (up to 12 a round).", "",
             "| task | split (rows, mean length) | batching | batches | padded | seconds | vs 128 rows |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next(b for b in rows if b["task"] == r["task"] and b["split"] == r["split"]
                    and b["batching"] == _name(*BATCHINGS[0]))
        mean, spread = r["seconds"]
        lines.append(f"| {r['task']} | {r['split']} ({r['examples']}, {r['mean_length']:.1f}) | {r['batching']} "
                     f"| {r['batches']} | {r['padded']:.2f} | {mean:.3f} ± {spread:.3f} "
                     f"| {base['seconds'][0] / mean:.2f}x |")
    (RESULTS / "eval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
