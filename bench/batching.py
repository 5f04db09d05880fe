"""What batching costs the search: its training steps with batches of random rows or of rows of similar lengths
(`schedule.batch_by_length`), and an evaluation pass at each batching, rows only (128, the old default; 32) or rows
and a token cap (`train.eval_batch_tokens`, padding included). The search's supernet (the default space, seed 0):
training as the search trains it (without dropout), on the search's rows; evaluation in eval mode, one pass of the
loss over the task's validation split (what the learning gate, each round's metric and each of the calibration's
ablations pay) and over its dev set. Writes results/batching.md.

    python -m bench.batching --tasks sst2,stsb,mrpc,cola --steps 10 --repeats 3
"""

from __future__ import annotations

import itertools
import time

from .common import describe_machine, machine, mean_spread, micro_parser, provenance, publish
from .quality import RESULTS, base_spec

EVAL_BATCHINGS = ((128, None), (32, None), (128, 512), (128, 1024), (128, 2048))  # (rows, tokens)
TRAIN_BATCHINGS = (("random rows", False), ("rows by length", True))


def _name(rows: int, tokens: int | None) -> str:
    return f"{rows} rows" + (f", {tokens} tokens" if tokens else "")


def _padded(batches: list[list[int]], lengths: list[int]) -> float:
    """Tokens computed (rows x each batch's longest) over the tokens the batches hold."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches) / sum(lengths[i] for b in batches for i in b)


def measure(task: str, steps: int, repeats: int, data_dir: str, model: str) -> tuple[list[dict], list[dict]]:
    from pruning.pipeline import _Context
    from pruning.train import (
        batch_indices,
        eval_batches,
        length_grouped_batch_indices,
        mean_loss,
        train,
        without_dropout,
    )

    spec = base_spec(task, 0, data_dir, model)
    ctx = _Context.prepare(spec)
    supernet = ctx.supernet()
    rows, size = ctx.search_train, spec.train.batch_size
    lengths = [len(row) for row in rows.input_ids]
    epoch = len(rows) // size
    streams = {False: batch_indices(len(rows), size, spec.seed),
               True: length_grouped_batch_indices(lengths, size, spec.seed)}
    padding = {by_length: _padded(list(itertools.islice(stream, epoch)), lengths)
               for by_length, stream in streams.items()}
    step_s: dict[bool, list[float]] = {}
    for repeat in range(repeats + 1):  # the first repeat warms up and is dropped
        # the batchings take turns to go first
        for _, by_length in TRAIN_BATCHINGS if repeat % 2 == 0 else TRAIN_BATCHINGS[::-1]:
            batches = ctx.batches(rows, spec.seed + repeat, by_length=by_length)
            start = time.perf_counter()
            with without_dropout(supernet):
                train(supernet, supernet.param_groups(spec.schedule.lr), batches, steps=steps, lr=spec.schedule.lr,
                      problem=ctx.task.problem, device=ctx.device, decay=False)
            if repeat:
                step_s.setdefault(by_length, []).append((time.perf_counter() - start) / steps)
    training = [{"task": task, "batch": size, "rows": len(rows), "mean_length": sum(lengths) / len(rows),
                 "batching": name, "padded": padding[by_length], "seconds": mean_spread(step_s[by_length])}
                for name, by_length in TRAIN_BATCHINGS]

    evaluation = []
    for split, data in (("validation", ctx.validation), ("dev", ctx.dev_data)):
        lengths = [len(row) for row in data.input_ids]
        times: dict[tuple, list[float]] = {}
        for repeat in range(repeats + 1):
            for batching in EVAL_BATCHINGS if repeat % 2 == 0 else EVAL_BATCHINGS[::-1]:
                start = time.perf_counter()
                mean_loss(supernet, data, batching[0], ctx.pad_id, ctx.device, batching[1])
                if repeat:
                    times.setdefault(batching, []).append(time.perf_counter() - start)
        for most_rows, tokens in EVAL_BATCHINGS:
            batches = eval_batches(data.input_ids, most_rows, tokens)
            evaluation.append({"task": task, "split": split, "examples": len(data),
                               "mean_length": sum(lengths) / len(data), "batching": _name(most_rows, tokens),
                               "batches": len(batches), "padded": _padded(batches, lengths),
                               "seconds": mean_spread(times[most_rows, tokens])})
    return training, evaluation


def main(argv: list[str] | None = None) -> int:
    args = micro_parser(__doc__, tasks="sst2,stsb,mrpc,cola", steps=10).parse_args(argv)
    measured = [measure(task, args.steps, args.repeats, args.data_dir, args.model) for task in args.tasks.split(",")]
    training = [row for rows, _ in measured for row in rows]
    evaluation = [row for _, rows in measured for row in rows]
    lines = ["# What batching costs the search", "",
             f"Command: `python -m bench.batching --tasks {args.tasks} --steps {args.steps} "
             f"--repeats {args.repeats}`  ",
             f"Machine: {describe_machine(machine())}; commit {provenance()['commit']}. Model: {args.model}, the "
             f"search's supernet (default space, seed 0). Seconds: mean ± std over {args.repeats} repeats after one "
             "warm-up repeat, the batchings taking turns to go first. Padded: tokens computed (rows x each batch's "
             "longest) / tokens held.", "",
             f"Training as the search trains (without dropout), batches of {training[0]['batch']} rows: seconds per "
             f"step over {args.steps} steps; padded over one epoch of the search's rows.", "",
             "| task | search rows (mean length) | batches of | padded | step s | vs random rows |",
             "|---|---|---|---|---|---|"]
    for r in training:
        base = next(b for b in training if b["task"] == r["task"] and b["batching"] == TRAIN_BATCHINGS[0][0])
        mean, spread = r["seconds"]
        lines.append(f"| {r['task']} | {r['rows']} ({r['mean_length']:.1f}) | {r['batching']} | {r['padded']:.2f} "
                     f"| {mean:.3f} ± {spread:.3f} | {base['seconds'][0] / mean:.2f}x |")
    lines += ["", "Evaluation, batches of rows of similar lengths (shortest first): seconds per pass of the loss over "
              "the split. The search scores its validation split (256 rows carved from train) once per learning "
              "check and round, and once more per calibration ablation (up to 12 a round).", "",
              "| task | split (rows, mean length) | batching | batches | padded | seconds | vs 128 rows |",
              "|---|---|---|---|---|---|---|"]
    for r in evaluation:
        base = next(b for b in evaluation if b["task"] == r["task"] and b["split"] == r["split"]
                    and b["batching"] == _name(*EVAL_BATCHINGS[0]))
        mean, spread = r["seconds"]
        lines.append(f"| {r['task']} | {r['split']} ({r['examples']}, {r['mean_length']:.1f}) | {r['batching']} "
                     f"| {r['batches']} | {r['padded']:.2f} | {mean:.3f} ± {spread:.3f} "
                     f"| {base['seconds'][0] / mean:.2f}x |")
    publish(RESULTS, "batching", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
