"""The search: iterative hybrid pruning of a PEFT supernet down to a parameter budget (PrunePEFT), then retraining
and evaluating the surviving configuration.

    load -> [warmup] -> search rounds (train, score, remove) -> retrain -> evaluate -> export

`fit` is the retrain phase alone: train and evaluate one fixed configuration. The benchmarks' baselines use it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import export
from .arch import backbone_parameter_count, layer_parameter_count
from .backbone import RankTracker, choose_ranks, plan_pruning
from .checkpoint import Checkpoint
from .data import TaskData, load_task
from .hybrid import (
    DEFAULT_ASSIGNMENT,
    PRUNEPEFT_ASSIGNMENT,
    Assignment,
    criteria_used,
    fuse,
    partition_units,
    uniform_assignment,
)
from .importance import ImportanceTracker
from .models import load_model, load_tokenizer, peak_memory_mb, resolve_device, seed_everything
from .result import ProgressEvent, RemovedUnit, RoundRecord, SearchResult
from .schedule import choose_removals, round_targets
from .spec import SearchSpec, budget_params
from .supernet import Supernet
from .train import Encoded, encode, evaluate, shuffled_batches, train
from .warmup import derive_assignment

ProgressCallback = Callable[[ProgressEvent], None]
StopCheck = Callable[[], bool]


class _Reporter:
    """Turns the engine's phases, steps and rounds into ProgressEvents for the caller."""

    def __init__(self, on_progress: ProgressCallback | None, rounds: int):
        self.on_progress = on_progress
        self.rounds = rounds
        self.start = time.monotonic()
        self.phase_name = "load"

    def emit(self, **fields) -> None:
        if self.on_progress is not None:
            self.on_progress(ProgressEvent(phase=self.phase_name, rounds=self.rounds,
                                           elapsed_s=time.monotonic() - self.start, **fields))

    def phase(self, name: str, message: str = "") -> None:
        self.phase_name = name
        self.emit(kind="phase", message=message)

    def steps(self, round: int | None, params: int) -> Callable[[int, int, float], None]:
        def on_step(step: int, steps: int, loss: float) -> None:
            self.emit(kind="step", round=round, step=step, steps=steps, loss=loss, trainable_params=params)

        return on_step


@dataclass
class _Context:
    """What every phase needs: the task, tokenised data, device, and a way to build a fresh supernet."""

    spec: SearchSpec
    task: TaskData
    train_data: Encoded
    dev_data: Encoded
    pad_id: int
    device: torch.device

    @classmethod
    def prepare(cls, spec: SearchSpec) -> _Context:
        device = resolve_device(spec.device)
        task = load_task(spec.task, seed=spec.seed)
        tokenizer = load_tokenizer(spec.model)

        def enc(examples):
            return encode(tokenizer, examples, spec.train.max_length, task.problem)

        return cls(spec, task, enc(task.train), enc(task.dev), tokenizer.pad_token_id, device)

    def supernet(self, units: list[str] | None = None, lora_ranks: dict[str, int] | None = None,
                 masks: bool = False, backbone: dict | None = None,
                 scales: dict[str, torch.Tensor] | None = None) -> Supernet:
        model = load_model(self.spec.model, self.task.num_labels, self.task.problem, self.pad_id)
        return Supernet(model, self.spec.space, units, lora_ranks, masks=masks, backbone=backbone,
                        scales=scales).to(self.device)

    def batches(self, data: Encoded, seed: int):
        return shuffled_batches(data, self.spec.train.batch_size, seed, self.pad_id, self.device)

    def evaluate(self, model, data: Encoded) -> dict[str, float]:
        return evaluate(model, data, self.task.metric_names, self.spec.train.eval_batch_size, self.pad_id,
                        self.device)


def search(spec: SearchSpec, out_dir: str | Path, *, on_progress: ProgressCallback | None = None,
           should_stop: StopCheck | None = None, checkpoint_dir: str | Path | None = None) -> SearchResult:
    """Search a PEFT configuration for `spec` and write the result directory `out_dir` (see export.py).

    `on_progress` receives every phase change, training step and finished round; `should_stop` is polled between
    steps and raises `Cancelled` when true; with `checkpoint_dir`, every round is checkpointed there and a new
    call with the same spec resumes after the last completed round."""
    spec = spec.validate()
    schedule, policy = spec.schedule, spec.policy
    report = _Reporter(on_progress, schedule.rounds)
    report.phase("load", f"loading {spec.model} and {spec.task.name}")
    seed_everything(spec.seed)
    ctx = _Context.prepare(spec)
    search_train = ctx.train_data.subset(_sample(len(ctx.train_data), schedule.max_train_examples, spec.seed))
    search_dev = ctx.dev_data.subset(_sample(len(ctx.dev_data), schedule.eval_examples, spec.seed))

    checkpoint = Checkpoint(checkpoint_dir, spec)
    saved = checkpoint.load()
    search_start = time.monotonic()
    speed = spec.backbone
    if saved is None:
        supernet = ctx.supernet(masks=speed.enabled)
        state = {"round": 0, "records": [], "start_params": supernet.peft_params(), "assignment": None,
                 "warmup": None, "search_wall_s": 0.0, "backbone": None, "lora_ranks": None}
        if policy.assignment == "warmup":
            report.phase("warmup", f"deriving the criteria per partition on {policy.warmup_examples} examples")
            probe = ctx.supernet()
            state["assignment"], state["warmup"] = derive_assignment(
                probe, search_train, spec, ctx.pad_id, ctx.device, len(policy.block_cuts) + 1,
                on_step=report.steps(None, probe.peft_params()), should_stop=should_stop)
            del probe
    else:
        state, tensors = saved
        supernet = ctx.supernet(state["units"], state["lora_ranks"], masks=speed.enabled and not state["backbone"],
                                backbone=state["backbone"], scales=tensors)
        supernet.load_trained_state(tensors)
        report.emit(kind="phase", message=f"resuming after round {state['round']} of {schedule.rounds}")
    prior_wall = state["search_wall_s"]  # spent before a resume
    assignment = state["assignment"] or _resolve_assignment(policy.assignment, spec)
    backbone_before = backbone_parameter_count(supernet.model, supernet.arch)
    budget = budget_params(spec.budget, backbone_before)
    targets = round_targets(state["start_params"], budget, schedule.rounds)
    records = [RoundRecord.from_dict(r) for r in state["records"]]
    rng = random.Random(spec.seed)

    report.phase("search", f"{schedule.rounds} rounds from {state['start_params']:,} to {budget:,} parameters")
    batches = ctx.batches(search_train, spec.seed + state["round"])
    rank_tracker = RankTracker(supernet.units.values()) if supernet.masks is not None and speed.rank_ratio else None
    for index in range(state["round"], schedule.rounds):
        round_start = time.monotonic()
        units = list(supernet.units.values())
        tracker = ImportanceTracker(units, criteria_used(assignment), policy.accumulate, policy.ema_beta)
        masks = supernet.masks
        with tracker:
            loss = train(supernet, supernet.param_groups(schedule.lr, speed.mask_lr), batches, steps=schedule.steps_per_round,
                         lr=schedule.lr, problem=ctx.task.problem, device=ctx.device, warmup_ratio=0.1,
                         weight_decay=spec.train.weight_decay, decay=False,
                         trackers=[t for t in (tracker, rank_tracker, masks) if t is not None],
                         extra_loss=_mask_penalty(masks, speed.mask_penalty),
                         on_step=report.steps(index + 1, supernet.peft_params()), should_stop=should_stop)
        metric = ctx.evaluate(supernet, search_dev)[ctx.task.primary_metric] if len(search_dev) else None
        scores = tracker.scores()
        if policy.assignment == "random":
            importance = {u.key: rng.random() for u in units}
        else:
            parts = partition_units(supernet.unit_keys(), supernet.num_layers, policy.block_cuts)
            importance = fuse(scores, parts, assignment)
        backbone_params = None
        if masks is not None and index + 1 == speed.mask_rounds:
            _prune_backbone(supernet, speed, rank_tracker)
            rank_tracker = None
            backbone_params = backbone_parameter_count(supernet.model, supernet.arch)
        params = supernet.unit_params()
        removed = choose_removals(importance, params, targets[index])
        supernet.remove(removed)
        record = RoundRecord(
            round=index + 1, units_left=supernet.unit_keys(), trainable_params=supernet.peft_params(),
            target_params=targets[index], metric_name=ctx.task.primary_metric, metric=metric, train_loss=loss,
            removed=[RemovedUnit(key, params[key], importance[key],
                                 {name: per_unit[key] for name, per_unit in scores.items()}) for key in removed],
            wall_s=time.monotonic() - round_start, backbone_params=backbone_params)
        records.append(record)
        state.update(round=index + 1, records=[_record_dict(r) for r in records], units=supernet.unit_keys(),
                     assignment=assignment, search_wall_s=prior_wall + time.monotonic() - search_start,
                     backbone=supernet.backbone_record, lora_ranks=supernet.lora_ranks())
        checkpoint.save(state, supernet.trained_state())
        report.emit(kind="round", round=index + 1, trainable_params=record.trainable_params, metric=metric,
                    loss=loss, record=record)
    search_wall = prior_wall + time.monotonic() - search_start

    survivors = supernet.unit_keys()
    if spec.retrain == "fresh":
        rebuild = {"lora_ranks": supernet.lora_ranks(), "backbone": supernet.backbone_record,
                   "scales": supernet.backbone_scales}
        del supernet
        seed_everything(spec.seed)
        final = ctx.supernet(survivors, **rebuild)
    else:
        final = supernet
    result = _retrain_evaluate_export(ctx, final, out_dir, report, should_stop, budget=budget,
                                      backbone_before=backbone_before, records=records,
                                      trace_extra={"assignment": assignment, "warmup": state["warmup"],
                                                   "start_params": state["start_params"], "targets": targets})
    result.search_wall_s = search_wall
    export.write_result(out_dir, result)
    report.phase("done", f"{result.metric_name} {result.metric:.4f} with {result.trainable_params:,} parameters")
    return result


def fit(spec: SearchSpec, out_dir: str | Path, units: list[str] | None = None, *,
        on_progress: ProgressCallback | None = None, should_stop: StopCheck | None = None) -> SearchResult:
    """Train and evaluate one fixed configuration (default: the whole supernet of `spec.space`), no search."""
    spec = spec.validate()
    report = _Reporter(on_progress, 0)
    report.phase("load", f"loading {spec.model} and {spec.task.name}")
    seed_everything(spec.seed)
    ctx = _Context.prepare(spec)
    model = ctx.supernet(units)
    backbone_before = backbone_parameter_count(model.model, model.arch)
    result = _retrain_evaluate_export(ctx, model, out_dir, report, should_stop,
                                      budget=budget_params(spec.budget, backbone_before),
                                      backbone_before=backbone_before, records=[], trace_extra={})
    export.write_result(out_dir, result)
    report.phase("done", f"{result.metric_name} {result.metric:.4f} with {result.trainable_params:,} parameters")
    return result


def _retrain_evaluate_export(ctx: _Context, model: Supernet, out_dir, report: _Reporter, should_stop,
                             *, budget: int, backbone_before: int, records: list[RoundRecord],
                             trace_extra: dict) -> SearchResult:
    spec = ctx.spec
    report.phase("retrain", f"training {len(model.unit_keys())} units for {spec.train.steps} steps")
    start = time.monotonic()
    train(model, model.param_groups(spec.train.lr), ctx.batches(ctx.train_data, spec.seed), steps=spec.train.steps,
          lr=spec.train.lr, problem=ctx.task.problem, device=ctx.device, warmup_ratio=spec.train.warmup_ratio,
          weight_decay=spec.train.weight_decay, on_step=report.steps(None, model.peft_params()),
          should_stop=should_stop)
    retrain_wall = time.monotonic() - start
    report.phase("evaluate", f"{len(ctx.dev_data)} dev examples")
    metrics = ctx.evaluate(model, ctx.dev_data)
    report.phase("export", str(out_dir))
    configuration = export.save(out_dir, model, spec=spec, task=ctx.task, metrics=metrics, records=records,
                                trace_extra=trace_extra)
    return SearchResult(
        out_dir=str(out_dir), task=ctx.task.name, metric_name=ctx.task.primary_metric,
        metric=metrics[ctx.task.primary_metric], metrics=metrics, trainable_params=model.peft_params(),
        head_params=sum(p.numel() for p in model.head_parameters()), budget_params=budget,
        backbone_params=backbone_parameter_count(model.model, model.arch), backbone_params_before=backbone_before,
        configuration=configuration, pruned_layers=configuration["pruned_layers"], rounds=records,
        search_wall_s=0.0, retrain_wall_s=retrain_wall, peak_memory_mb=peak_memory_mb(ctx.device),
        device=str(ctx.device))


def _mask_penalty(masks, coefficient: float):
    return None if masks is None else (lambda: coefficient * masks.l1())


def _prune_backbone(supernet: Supernet, speed, rank_tracker: RankTracker | None) -> None:
    """The end of the mask rounds: remove heads/neurons by their learned masks, then the weakest LoRA ranks."""
    config, arch = supernet.model.config, supernet.arch
    hidden, head_dim = config.hidden_size, arch.head_dim(config)
    head_params = 3 * (head_dim * hidden + head_dim) + head_dim * hidden  # q, k, v rows (+bias), o columns
    neuron_params = len(arch.ffn_in) * (hidden + 1) + hidden
    heads, neurons = plan_pruning(*supernet.masks.scores(speed.score), speed, head_params, neuron_params,
                                  layer_parameter_count(supernet.model, arch))
    supernet.prune_backbone(heads, neurons)
    if rank_tracker is not None:
        supernet.prune_ranks(choose_ranks(rank_tracker.importance(), speed.rank_ratio))


def _resolve_assignment(name: str, spec: SearchSpec) -> Assignment:
    """A validated `policy.assignment` other than "warmup" as a table (random needs none)."""
    if name == "random":
        return {}
    if name in ("default", "prunepeft"):
        return DEFAULT_ASSIGNMENT if name == "default" else PRUNEPEFT_ASSIGNMENT
    return uniform_assignment(name, spec.space.types, len(spec.policy.block_cuts) + 1)


def _sample(n: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def _record_dict(record: RoundRecord) -> dict:
    import dataclasses

    return dataclasses.asdict(record)
