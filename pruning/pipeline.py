"""The search: iterative hybrid pruning of a PEFT supernet down to a parameter budget (PrunePEFT), then retraining
and evaluating the surviving configuration.

    load -> [warmup] -> learn -> search rounds (train, score, remove) -> retrain -> evaluate -> export

`fit` is the retrain phase alone: train and evaluate one fixed configuration. The benchmarks' baselines use it.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import set_seed

from . import export
from .arch import backbone_parameter_count
from .backbone import Planner, RankTracker, choose_ranks
from .backbone.guard import run_guard, stage_specs
from .backbones import checkpoint_activations, load_model, load_tokenizer, peak_memory_mb, resolve_device
from .calibration import unit_ablation
from .checkpoint import (
    DEFAULT_CHECKPOINT_EVERY,
    Checkpoint,
    CheckpointEvery,
    SearchState,
    TrainCheckpoint,
    spec_fingerprint,
)
from .completion import completion_metric_names, example_generation
from .data import TaskData, compute_metrics, load_task
from .data.metrics import LOWER_IS_BETTER, drop_standard_error, ratio_standard_error
from .hybrid import (
    Assignment,
    ImportancePolicy,
    default_assignment,
    prunepeft_assignment,
    uniform_assignment,
)
from .importance import ImportanceTracker
from .regression import fold, standardise_head
from .result import ProgressEvent, RemovedUnit, RoundRecord, SearchResult, pareto_front
from .schedule import choose_removals, kept_ranks, rank_chunks, round_targets, spread_ranks
from .spec import MIN_VALIDATION, SearchSpec, budget_params
from .supernet import Supernet
from .train import (
    Encoded,
    Teacher,
    chance_example_losses,
    encode,
    evaluate,
    example_losses,
    mean_of,
    predict,
    shuffled_batches,
    train,
    without_dropout,
)
from .warmup import derive_assignment

ProgressCallback = Callable[[ProgressEvent], None]
StopCheck = Callable[[], bool]
TEACHER = "teacher/"  # the prefix of the distillation teacher's tensors in a search checkpoint
TRACKED = "tracked/"  # and of speed mode's importance sums (masks' Taylor, LoRA ranks') while they accumulate


class _Reporter:
    """Turns the engine's phases, steps and rounds into ProgressEvents for the caller, with the steps done and
    planned in the whole run and the time left. The search's steps left go at the pace of its steps so far
    (evaluations and calibrations included); the retraining's, until it starts, at the median of the search's
    latest training steps alone (a retraining step is a plain training step, with no evaluation or calibration
    between steps, so the search's pace over-estimates it), and once it starts at its own pace.

    With `within` (retrain: continue) the search's steps count within the retraining's: a step the search plans
    but does not take (a learning phase that ends early, a guard stage never tried) goes to the retraining, and
    the total stays."""

    def __init__(self, on_progress: ProgressCallback | None, rounds: int, total_steps: int, retrain_steps: int,
                 within: bool = False, clock: Callable[[], float] = time.monotonic):
        self.on_progress = on_progress
        self.within = within
        self.rounds = rounds
        self.clock = clock
        self.start = clock()
        self.phase_name = "load"
        self.total, self.done, self.retrain_steps = total_steps, 0, retrain_steps
        self.first_step: tuple[float, int] | None = None  # (when, done) after this process's first step
        self.last_step: float | None = None  # when the last step of the current training call ended
        self.step_s: deque[float] = deque(maxlen=20)  # the latest steps' durations, within one training call

    def emit(self, **fields) -> None:
        if self.on_progress is not None:
            self.on_progress(ProgressEvent(phase=self.phase_name, rounds=self.rounds,
                                           elapsed_s=self.clock() - self.start, done_steps=self.done,
                                           total_steps=self.total, eta_s=self.eta_s(), **fields))

    def eta_s(self) -> float | None:
        if self.first_step is None or self.done <= self.first_step[1]:
            return None
        since, done_then = self.first_step
        pace = (self.clock() - since) / (self.done - done_then)
        left = max(self.total - self.done, 0)
        if self.phase_name == "retrain" or not self.step_s:
            return round(pace * left, 1)
        retraining = min(left, self.retrain_steps)
        return round(pace * (left - retraining) + statistics.median(self.step_s) * retraining, 1)

    def skip(self, steps: int) -> None:
        """Planned steps that will not run (rounds done before a resume, a learning phase that ended early)."""
        self.done += steps

    def replan(self, unused: int) -> None:
        """Planned steps of the search that will not run (negative: steps beyond the plan)."""
        if self.within:
            self.retrain_steps += unused
        else:
            self.total -= unused

    def extend(self, steps: int) -> None:
        """Steps beyond the plan (the prior's retraining: the search's steps trained a supernet it discards)."""
        self.total += steps
        self.retrain_steps += steps

    def phase(self, name: str, message: str = "") -> None:
        self.phase_name = name
        if name == "retrain":
            self.first_step = None  # its pace is measured afresh
        self.emit(kind="phase", message=message)

    def round(self, record: RoundRecord) -> None:
        self.emit(kind="round", round=record.round, trainable_params=record.trainable_params,
                  metric=record.metric, loss=record.train_loss, record=record)

    def steps(self, round: int | None, params: int) -> Callable[[int, int, float], None]:
        self.last_step = None  # a new training call: the time since the last one's end was spent elsewhere

        def on_step(step: int, steps: int, loss: float) -> None:
            self.done += 1
            now = self.clock()
            if self.first_step is None:  # the pace is measured from the end of the first step on
                self.first_step = (now, self.done)
            if self.last_step is not None:
                self.step_s.append(now - self.last_step)
            self.last_step = now
            self.emit(kind="step", round=round, step=step, steps=steps, loss=loss, trainable_params=params)

        return on_step


@dataclass
class _Context:
    """What every phase needs: the task, tokenised data, device, and a way to build a fresh supernet.

    The search never sees the dev set: it trains on `search_train` and measures on `validation`, both carved
    from train (disjoint). The retrain uses all of train; dev is scored once, at the end."""

    spec: SearchSpec
    task: TaskData
    train_data: Encoded
    dev_data: Encoded
    search_train: Encoded
    validation: Encoded
    pad_id: int
    device: torch.device
    outside_validation: list[int]  # train rows not in the validation split
    validation_rows: list[int]  # train rows of the validation split
    unsearched: list[int]  # train rows neither in the validation split nor in the search's training
    tokenizer: object  # the model's, for the text of an example generation
    chance_measured: tuple[np.ndarray, np.ndarray, float] | None = None  # chance_losses(): measured once
    teacher: Teacher | None = None  # speed mode's distillation teacher, from the backbone's pruning on

    @classmethod
    def prepare(cls, spec: SearchSpec) -> _Context:
        device = resolve_device(spec.device)
        task = load_task(spec.task, seed=spec.seed)
        tokenizer = load_tokenizer(spec.model)

        def enc(examples):
            return encode(tokenizer, examples, spec.train.max_length, task.problem)

        train_data, dev_data = enc(task.train), enc(task.dev)
        if task.problem == "completion":  # exact match joins the metrics when the answers are short
            task.metric_names = completion_metric_names(dev_data)
        held_out = _sample(len(train_data), min(spec.schedule.eval_examples, len(train_data) // 4), spec.seed)
        rest = sorted(set(range(len(train_data))) - set(held_out))
        search_rows = [rest[i] for i in _sample(len(rest), spec.schedule.max_train_examples, spec.seed)]
        unsearched = sorted(set(rest) - set(search_rows))
        return cls(spec, task, train_data, dev_data, train_data.subset(search_rows),
                   train_data.subset(held_out), tokenizer.pad_token_id, device, rest, held_out, unsearched, tokenizer)

    def copy(self, supernet: Supernet) -> Supernet:
        """Another supernet with the same units, ranks, masks and trained weights (a model loaded afresh: no
        tensor or hook is shared)."""
        copy = self.supernet(supernet.unit_keys(), supernet.lora_ranks(), masks=supernet.masks is not None)
        copy.load_trained_state(supernet.trained_state())
        return copy

    def freeze_teacher(self, model: Supernet) -> None:
        """Make `model` speed mode's distillation teacher, frozen (a copy of the masked supernet, or its
        checkpointed state rebuilt)."""
        self.teacher = Teacher(model.requires_grad_(False).eval(), self.spec.backbone.distill)

    def checkpoint_tensors(self, supernet: Supernet, ranks: RankTracker | None) -> dict[str, torch.Tensor]:
        """What a search checkpoint holds: the supernet's trained tensors, the teacher's, and the importance
        speed mode has accumulated so far (both prefixed)."""
        tensors = supernet.trained_state()
        if self.teacher is not None:
            tensors.update({f"{TEACHER}{name}": t for name, t in self.teacher.model.trained_state().items()})
        if supernet.masks is not None:
            tensors.update({f"{TRACKED}masks/{name}": t for name, t in supernet.masks.tracked_state().items()})
        if ranks is not None:
            tensors.update({f"{TRACKED}ranks/{name}": t for name, t in ranks.state().items()})
        return tensors

    def pop_teacher(self) -> Teacher | None:
        """The teacher, which this context no longer holds (the retraining is its last use)."""
        teacher, self.teacher = self.teacher, None
        return teacher

    def guard_split(self, examples: int | None) -> Encoded:
        """Speed mode's guard scores on the validation split, then (beyond it) a seeded sample of the train rows
        the search never trained on, `examples` in all (as many as there are); fewer: a seeded sample of the
        validation split; None: the validation split."""
        wanted = 0 if examples is None else examples - len(self.validation_rows)
        if wanted <= 0 or not self.unsearched:
            return self.validation_sample(examples)
        extra = [self.unsearched[i] for i in _sample(len(self.unsearched), wanted, self.spec.seed)]
        return self.train_data.subset(self.validation_rows + extra)

    def validation_sample(self, examples: int | None) -> Encoded:
        """A seeded sample of `examples` rows of the validation split (None, or as many as it has: all of it)."""
        if examples is None or examples >= len(self.validation):
            return self.validation
        return self.validation.subset(_sample(len(self.validation), examples, self.spec.seed))

    def train_without_validation(self) -> Encoded:
        return self.train_data.subset(self.outside_validation)

    def supernet(self, units: list[str] | None = None, lora_ranks: dict[str, int] | None = None,
                 masks: bool = False, backbone: dict | None = None,
                 scales: dict[str, torch.Tensor] | None = None) -> Supernet:
        model = load_model(self.spec.model, self.task.num_labels, self.task.problem, self.pad_id,
                           load_in_4bit=self.spec.train.load_in_4bit, device=self.device)
        if self.task.problem == "regression":
            standardise_head(model, [self.train_data.labels[i] for i in self.outside_validation])
        if self.spec.train.gradient_checkpointing:
            checkpoint_activations(model)
        return Supernet(model, self.spec.space, units, lora_ranks, masks=masks, backbone=backbone,
                        scales=scales).to(self.device)

    def batches(self, data: Encoded, seed: int, skip: int = 0, by_length: bool = False):
        return shuffled_batches(data, self.spec.train.batch_size, seed, self.pad_id, self.device, skip=skip,
                                by_length=by_length)

    def eval_batching(self) -> tuple[int, int, torch.device, int | None]:
        """What every evaluation function takes after its data: batch rows, pad id, device, batch tokens."""
        train = self.spec.train
        return train.eval_batch_size, self.pad_id, self.device, train.eval_tokens(self.device.type)

    def evaluate(self, model, data: Encoded) -> dict[str, float]:
        return evaluate(model, data, self.task.metric_names, *self.eval_batching())

    def validation_metric(self, model, data: Encoded | None = None) -> float | None:
        """The primary metric on the validation split (or on `data`: the guard's); None without examples."""
        data = self.validation if data is None else data
        return self.evaluate(model, data)[self.task.primary_metric] if len(data) else None

    def guard_scores(self, model, data: Encoded) -> tuple[float, np.ndarray | None]:
        """Speed mode's guard: the primary metric on `data` and the predictions it scored (None for a completion,
        whose metric is not computed from one prediction per example), so that a drop gets a standard error."""
        if self.task.problem == "completion":
            return self.validation_metric(model, data), None
        predictions = predict(model, data, *self.eval_batching())
        primary = self.task.primary_metric
        return compute_metrics([primary], predictions, np.asarray(data.labels))[primary], predictions

    def chance(self, supernet: Supernet) -> tuple[float | None, float | None]:
        """(loss, primary metric) on the validation split of a model that learned nothing from the inputs.
        Classification and regression: the best constant prediction (its loss is the validation labels'
        entropy, or variance; its metric the search train's majority class, or mean, scores). Completion: the
        backbone alone, every unit switched off. A pretrained language model is far below any constant (unigram)
        prediction of the tokens already: a gate against that would pass the untrained supernet, whose LoRA and
        adapters still compute nothing and have no scores yet."""
        if not len(self.validation):
            return None, None
        losses, counts, metric = self.chance_losses(supernet)
        return mean_of(losses, counts), metric

    def chance_losses(self, supernet: Supernet) -> tuple[np.ndarray, np.ndarray, float]:
        """chance()'s model per validation example: its losses and what they count (`example_losses`), and its
        primary metric; measured once."""
        if self.chance_measured is None:
            self.chance_measured = self._chance(supernet)
        return self.chance_measured

    def _chance(self, supernet: Supernet) -> tuple[np.ndarray, np.ndarray, float]:
        primary = self.task.primary_metric
        if self.task.problem == "completion":
            with contextlib.ExitStack() as stack:
                for unit in supernet.units.values():
                    stack.enter_context(unit.switched_off())
                metric = self.evaluate(supernet, self.validation)[primary]
                return *self.validation_losses(supernet), metric
        labels = np.asarray(self.search_train.labels)
        if self.task.problem == "regression":
            constant = float(labels.mean())
        else:
            constant = int(np.bincount(labels.astype(int)).argmax())
        predictions = np.full(len(self.validation), constant)
        metric = compute_metrics([primary], predictions, np.asarray(self.validation.labels))[primary]
        return chance_example_losses(self.validation), np.ones(len(self.validation)), metric

    def validation_losses(self, model) -> tuple[np.ndarray, np.ndarray]:
        """`example_losses` on the validation split."""
        return example_losses(model, self.validation, *self.eval_batching())

    def ablate(self, model: Supernet):
        """The policy's measurement: keys -> validation-loss increase per unit switched off (None: no split)."""
        def measure(keys: list[str]) -> dict[str, float] | None:
            if len(self.validation) < MIN_VALIDATION:
                return None
            data = self.validation_sample(self.spec.policy.calibration_examples)
            return unit_ablation(model, data, keys, *self.eval_batching())

        return measure


def search(spec: SearchSpec, out_dir: str | Path, *, on_progress: ProgressCallback | None = None,
           should_stop: StopCheck | None = None, checkpoint_dir: str | Path | None = None,
           checkpoint_every: CheckpointEvery = DEFAULT_CHECKPOINT_EVERY) -> SearchResult:
    """Search a PEFT configuration for `spec` and write the result directory `out_dir` (see export.py).

    `on_progress` receives every phase change, training step and finished round; `should_stop` is polled between
    steps and raises `Cancelled` when true; with `checkpoint_dir`, every round is checkpointed there and a new
    call with the same spec resumes after the last completed round (re-reporting the rounds it holds); the
    retrain is checkpointed there as `checkpoint_every` says, and resumes from its last checkpoint."""
    spec = spec.validate()
    schedule, speed = spec.schedule, spec.backbone
    report = _Reporter(on_progress, schedule.rounds, spec.planned_steps(),
                       spec.retrain_steps(spec.search_steps_limit()), within=spec.retrain == "continue")
    report.phase("load", f"loading {spec.model} and {spec.task.name}")
    set_seed(spec.seed)
    ctx = _Context.prepare(spec)
    checkpoint = Checkpoint(checkpoint_dir, spec)
    started = time.monotonic()
    state, supernet, tracked = _start_or_resume(ctx, checkpoint, report, should_stop)
    prior_wall = state.search_wall_s  # spent before a resume

    def search_wall() -> float:
        return prior_wall + time.monotonic() - started
    resumed = state.learn is not None
    # A resumed search draws batches in another order than the run it continues (it does not replay the
    # batches that run began with); it is a continuation, not a bit-exact replay.
    batches = ctx.batches(ctx.search_train, spec.seed + (1 + state.round if resumed else 0),
                          by_length=schedule.batch_by_length)
    ranks = RankTracker(supernet.units.values()) if supernet.masks is not None and speed.rank_ratio else None
    if supernet.masks is not None and tracked:  # a resumed search goes on accumulating where it stopped
        supernet.masks.load_tracked_state(_prefixed(tracked, "masks/"))
        if ranks is not None:
            ranks.load_state(_prefixed(tracked, "ranks/"))
    backbone_before = _unpruned_backbone_params(supernet, state)
    budget = budget_params(spec.budget, backbone_before)
    if not resumed:  # train until the supernet has learned; only then are units scored
        state.learn = _learn(ctx, supernet, batches, ranks, report, should_stop)
    prior = _prior(ctx, supernet, state, budget)
    if not resumed:  # speed mode's masks: not on a supernet the prior replaces (they would rank nothing it keeps)
        state.learn["mask_steps"] = _estimate_masks(ctx, supernet, batches, ranks, report, should_stop,
                                                    0 if prior else spec.mask_steps(state.learn["step"]))
        state.search_wall_s = search_wall()
        checkpoint.save(state, ctx.checkpoint_tensors(supernet, ranks))

    policy = ImportancePolicy(spec.policy, state.assignment, spec.seed + state.round)
    targets = round_targets(state.start_params, budget, schedule.rounds)
    if prior:
        report.phase("search", prior["reason"])
        report.replan(schedule.rounds * spec.round_steps() + speed.stages * spec.stage_steps())
    else:
        report.phase("search", f"{schedule.rounds} rounds from {state.start_params:,} to {budget:,} parameters")
    for index in range(state.round, 0 if prior else schedule.rounds):
        record = _run_round(ctx, supernet, policy, index, targets[index], batches, ranks, report, should_stop)
        if record.backbone_params is not None:
            ranks = None  # the ranks were pruned with the backbone
        state.round, state.records = index + 1, [*state.records, record]
        state.units, state.lora_ranks, state.backbone = (supernet.unit_keys(), supernet.lora_ranks(),
                                                         supernet.backbone_record)
        if ctx.teacher is not None:
            state.teacher = {"units": ctx.teacher.model.unit_keys(), "lora_ranks": ctx.teacher.model.lora_ranks()}
        state.search_wall_s = search_wall()
        checkpoint.save(state, ctx.checkpoint_tensors(supernet, ranks))
        report.round(record)
    front = [] if prior else pareto_front(state.start_params, state.records, ctx.validation_metric(supernet),
                                          lower_is_better=ctx.task.primary_metric in LOWER_IS_BETTER)
    state.search_wall_s = search_wall()

    if prior or spec.retrain == "fresh":  # the prior is new to the supernet: it starts afresh too
        survivors, rebuild = (prior["units"], {"lora_ranks": prior["lora_ranks"]}) if prior else \
            (supernet.unit_keys(), {"lora_ranks": supernet.lora_ranks(), "backbone": supernet.backbone_record,
                                    "scales": supernet.backbone_scales})
        del supernet
        set_seed(spec.seed)
        supernet = ctx.supernet(survivors, **rebuild)
    searched = searched_steps(spec, state)
    planned = spec.retrain_steps(searched)
    steps = spec.train.steps if prior else planned  # the prior owes nothing to the search's training
    report.extend(steps - planned)
    # 'continue' goes on with trained units: its learning rate decays from the peak at once, no second warm-up
    warmup_ratio = 0.0 if spec.retrain == "continue" and not prior else spec.train.warmup_ratio
    result = _retrain_evaluate_export(ctx, supernet, out_dir, report, should_stop, budget=budget, steps=steps,
                                      warmup_ratio=warmup_ratio,
                                      backbone_before=backbone_before, records=state.records,
                                      trace_extra={"assignment": state.assignment, "warmup": state.warmup,
                                                   "learn": state.learn, "start_params": state.start_params,
                                                   "targets": targets, "searched_steps": searched,
                                                   "retrain_steps": steps, "prior": prior},
                                      prior=prior and prior["reason"], teacher=ctx.pop_teacher(),
                                      checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every)
    result.search_wall_s, result.front = state.search_wall_s, front
    export.write_result(out_dir, result)
    report.phase("done", f"{result.metric_name} {result.metric:.4f} with {result.trainable_params:,} parameters")
    return result


def _unpruned_backbone_params(supernet: Supernet, state: SearchState) -> int:
    """The backbone's size before any pruning: what a percentage budget is a share of. A search resumed after its
    backbone was pruned reads it from the pruning record (the model in hand is the pruned one)."""
    if state.backbone is not None:
        return state.backbone["backbone_params_before"]
    return backbone_parameter_count(supernet.model, supernet.arch)


def _start_or_resume(ctx: _Context, checkpoint: Checkpoint, report: _Reporter,
                     should_stop) -> tuple[SearchState, Supernet, dict[str, torch.Tensor]]:
    """A fresh supernet (and, with `assignment: warmup`, the derived criteria), or the checkpointed one with the
    importance speed mode had accumulated (TRACKED's tensors, unprefixed; none for a fresh one)."""
    spec, speed = ctx.spec, ctx.spec.backbone
    saved = checkpoint.load()
    if saved is not None:
        state, tensors = saved
        taught, tracked = _prefixed(tensors, TEACHER), _prefixed(tensors, TRACKED)
        tensors = {name: t for name, t in tensors.items() if not name.startswith((TEACHER, TRACKED))}
        if state.teacher is not None:
            teacher = ctx.supernet(state.teacher["units"], state.teacher["lora_ranks"], masks=True)
            teacher.load_trained_state(taught)
            ctx.freeze_teacher(teacher)
        supernet = ctx.supernet(state.units, state.lora_ranks, masks=speed.enabled and not state.backbone,
                                backbone=state.backbone, scales=tensors)
        supernet.load_trained_state(tensors)
        if state.learn:
            report.replan(spec.learn_steps_limit() - state.learn["step"])
            report.replan(_unplanned_mask_steps(spec, state.learn.get("mask_steps", 0)))
        guard = (state.backbone or {}).get("guard")
        if guard is not None:  # the backbone was pruned: the stages it did not try will not run
            report.replan((speed.stages - len(guard.get("stages", []))) * spec.stage_steps())
        report.skip(spec.warmup_steps() + searched_steps(spec, state))
        report.emit(kind="phase", message=f"resuming after round {state.round} of {spec.schedule.rounds}")
        for record in state.records:  # a kill between checkpoint and report must not lose a round
            report.round(record)
        return state, supernet, tracked
    supernet = ctx.supernet(masks=speed.enabled)
    state = SearchState(start_params=supernet.peft_params(), assignment=_resolve_assignment(spec))
    if spec.policy.assignment == "warmup":
        report.phase("warmup", f"deriving the criteria per partition on {spec.policy.warmup_examples} examples")
        probe = ctx.supernet()
        state.assignment, state.warmup = derive_assignment(
            probe, ctx.search_train, spec, ctx.pad_id, ctx.device, len(spec.policy.block_cuts) + 1,
            on_step=report.steps(None, probe.peft_params()), should_stop=should_stop)
    return state, supernet, {}


def _learn(ctx: _Context, supernet: Supernet, batches, ranks: RankTracker | None, report: _Reporter,
           should_stop) -> dict:
    """Train the supernet until its validation loss is below chance by the margin, for at most
    learn_max_share x train.steps steps. Returns when scoring began and what the supernet had learned then."""
    spec, schedule = ctx.spec, ctx.spec.schedule
    limit = spec.learn_steps_limit()
    if len(ctx.validation) < MIN_VALIDATION:
        report.replan(limit)
        why = "schedule.eval_examples is 0" if not schedule.eval_examples else \
            f"{len(ctx.train_data)} train examples leave {len(ctx.validation)} for it (a quarter at most)"
        return {"step": 0, "learned": None,
                "reason": f"no validation split of at least {MIN_VALIDATION} examples: {why}"}
    chance_losses, chance_counts, chance_metric = ctx.chance_losses(supernet)
    chance = mean_of(chance_losses, chance_counts)
    share, standard_errors = 1 - schedule.learn_margin, schedule.learn_standard_errors
    threshold = share * chance
    seen: dict = {}

    def learned(step: int) -> bool:
        losses, counts = ctx.validation_losses(supernet)
        # the gate's statistic: the mean of each example's loss less the threshold's share of chance's
        error = ratio_standard_error(losses - share * chance_losses, counts)
        loss = mean_of(losses, counts)
        seen.update(step=step, validation_loss=loss, standard_error=error,
                    learned=loss + (standard_errors * error if standard_errors else 0.0) < threshold)
        return seen["learned"]

    if limit:
        report.phase("learn", f"training the supernet until its validation loss is below {threshold:.4f} "
                              f"(chance {chance:.4f}) by {standard_errors:g} standard errors, at most {limit} steps")
        _train_supernet(ctx, supernet, batches, limit, ranks, report.steps(None, supernet.peft_params()),
                        should_stop, until=learned)
    else:
        learned(0)
    report.replan(limit - seen["step"])
    return {**seen, "chance_loss": chance, "threshold": threshold, "standard_errors": standard_errors,
            "max_steps": limit, "metric_name": ctx.task.primary_metric, "metric": ctx.validation_metric(supernet),
            "chance_metric": chance_metric}


def _estimate_masks(ctx: _Context, supernet: Supernet, batches, ranks: RankTracker | None, report: _Reporter,
                    should_stop, steps: int) -> int:
    """Speed mode: train on `steps` (spec.mask_steps: until the backbone masks will have learned for
    backbone.mask_share x train.steps when the backbone is pruned, after the mask rounds), so their ranking has
    settled. Returns the steps trained."""
    report.replan(_unplanned_mask_steps(ctx.spec, steps))
    if steps:
        report.phase("estimate", f"the backbone masks learn {steps} more steps before they rank heads and neurons")
        _train_supernet(ctx, supernet, batches, steps, ranks, report.steps(None, supernet.peft_params()),
                        should_stop)
    return steps


def _unplanned_mask_steps(spec: SearchSpec, steps: int) -> int:
    """The plan held the longer of the learning and the estimation phase, and the learning phase gave back its
    steps not taken: what the plan still holds for the estimation phase beyond the `steps` it takes (negative:
    more steps than planned, after a learning phase that ended early)."""
    return max(0, spec.mask_steps(0) - spec.learn_steps_limit()) - steps


def _prior(ctx: _Context, supernet: Supernet, state: SearchState, budget: int) -> dict | None:
    """The search's prior, when its learning phase ran out with the supernet still not past chance (see
    schedule.unlearned): LoRA units on every projection of the space, ranks spread evenly to the budget. None:
    prune by the scores (the supernet learned, or there was no learning phase to tell, or no such prior fits).
    In speed mode the backbone is then left whole: its masks learned on that same supernet."""
    spec, learn = ctx.spec, state.learn or {}
    if (spec.schedule.unlearned != "prior" or learn.get("learned") is not False or not learn.get("max_steps")
            or state.round):
        return None
    lora = [unit for unit in supernet.units.values() if unit.kind == "lora"]
    per_rank = {path: unit.params_per_rank(role) for unit in lora for role, path in unit.paths.items()}
    if not per_rank or sum(per_rank.values()) > budget:
        return None
    ranks = spread_ranks(per_rank, budget, most=supernet.lora_ranks())
    return {"units": [unit.key for unit in lora], "lora_ranks": ranks,
            "reason": f"the supernet had not learned the task after {learn['step']} steps ({_gate_numbers(learn)}), "
                      f"so its scores would be noise: kept the prior instead, LoRA on every projection at ranks spread to "
                      f"{sum(ranks[p] * per_rank[p] for p in ranks):,} parameters"
                      + ("; speed mode left the backbone unpruned: its head and neuron masks learned on that same "
                         "supernet" if spec.backbone.enabled else "")}


def _gate_numbers(learn: dict) -> str:
    """The learning phase's last check, in words."""
    words = f"validation loss {learn['validation_loss']:.4f}"
    if learn.get("standard_errors"):
        words += f" ± {learn['standard_error']:.4f} (standard error), to be below {learn['threshold']:.4f} by " \
                 f"{learn['standard_errors']:g} of those"
    else:
        words += f", to be below {learn['threshold']:.4f}"
    return f"{words}; chance {learn['chance_loss']:.4f}"


def searched_steps(spec: SearchSpec, state: SearchState) -> int:
    """The steps a search trained its supernet (units and all): learning and estimation phases, rounds, the
    guard's stages."""
    guard = (state.backbone or {}).get("guard") or {}
    learn = state.learn or {}
    return learn.get("step", 0) + learn.get("mask_steps", 0) + state.round * spec.round_steps() \
        + len(guard.get("stages", [])) * spec.stage_steps()


def _run_round(ctx: _Context, supernet: Supernet, policy: ImportancePolicy, index: int, target: int, batches,
               ranks: RankTracker | None, report: _Reporter, should_stop) -> RoundRecord:
    """Train with the criteria tracked, score, (prune the backbone when its masks are done), remove units, or
    at rank granularity shrink LoRA projections."""
    spec, speed = ctx.spec, ctx.spec.backbone
    start = time.monotonic()
    tracker = ImportanceTracker(supernet.units.values(), policy.criteria, spec.policy.accumulate,
                                spec.policy.ema_beta)
    step = spec.space.lora.rank_step
    # not while the backbone masks learn: speed mode prunes ranks itself when they are done
    grain = RankTracker(supernet.units.values()) if step and supernet.masks is None else None
    with tracker:
        loss = _train_supernet(ctx, supernet, batches, spec.round_steps(), ranks,
                               report.steps(index + 1, supernet.peft_params()), should_stop,
                               trackers=(tracker, grain))
    metric = ctx.validation_metric(supernet)
    scores = tracker.scores()
    importance, type_values = policy.importance(supernet.unit_keys(), supernet.num_layers, scores,
                                                ctx.ablate(supernet))
    backbone_params = None
    if supernet.masks is not None and index + 1 == speed.mask_rounds:
        _prune_backbone(ctx, supernet, ranks, batches, report, should_stop, metric)
        backbone_params = backbone_parameter_count(supernet.model, supernet.arch)
        grain = None  # the ranks were just pruned with the backbone: this round removes whole units
    params = supernet.unit_params()

    def scores_of(key: str) -> dict[str, float]:
        return {name: per_unit[key] for name, per_unit in scores.items()}

    if grain is None:
        removed = choose_removals(importance, params, target)
        supernet.remove(removed)
        records = [RemovedUnit(key, params[key], importance[key], scores_of(key)) for key in removed]
    else:
        records = _shrink(supernet, importance, params, target, policy.rank_scores(
            {key: values.tolist() for key, values in grain.importance().items()}), step, scores_of)
    return RoundRecord(
        round=index + 1, units_left=supernet.unit_keys(), trainable_params=supernet.peft_params(),
        target_params=target, metric_name=ctx.task.primary_metric, metric=metric, train_loss=loss,
        removed=records, wall_s=time.monotonic() - start, backbone_params=backbone_params,
        chance_metric=ctx.chance(supernet)[1], type_values=type_values)


def _shrink(supernet: Supernet, importance: dict[str, float], params: dict[str, int], target: int,
            rank_scores: dict[tuple[str, str], list[float]], step: int, scores_of) -> list[RemovedUnit]:
    """Rank granularity: LoRA units compete as chunks of `step` rank components per projection (their share
    of the unit's importance by rank importance), the other units whole; the chosen chunks shrink their
    projections' ranks (a projection at 0 is unwrapped, a LoRA unit with none left is gone)."""
    lora = {unit for unit, _ in rank_scores}
    per_rank = {(unit, role): supernet.unit(unit).params_per_rank(role) for unit, role in rank_scores}
    chunk_importance, chunk_params = rank_chunks(importance, rank_scores, per_rank, step)
    whole = {key: params[key] for key in params if key not in lora}
    chosen = choose_removals({**{k: importance[k] for k in whole}, **chunk_importance}, {**whole, **chunk_params},
                             target)
    gone = [key for key in chosen if key in whole]
    kept = kept_ranks([key for key in chosen if key not in whole], rank_scores, step)
    records = [RemovedUnit(key, params[key], importance[key], scores_of(key)) for key in gone]
    for (unit, role), ranks in kept.items():
        before = len(rank_scores[unit, role])
        freed = [k for k in chosen if k.startswith(f"{unit}/{role}/")]
        records.append(RemovedUnit(unit, (before - len(ranks)) * per_rank[unit, role],
                                   sum(chunk_importance[k] for k in freed), scores_of(unit), role=role,
                                   ranks=[before, len(ranks)]))
    supernet.remove(gone)
    supernet.prune_ranks(kept)
    return records


def _train_supernet(ctx: _Context, supernet: Supernet, batches, steps: int, ranks: RankTracker | None, on_step,
                    should_stop, trackers: tuple = (), until=None) -> float:
    """The search's training: constant learning rate after a short warm-up; the masks (speed mode) learn
    under their L1 penalty, the trackers see every step, and once heads or neurons are off the teacher (if any)
    is distilled."""
    spec, speed, masks = ctx.spec, ctx.spec.backbone, supernet.masks
    with contextlib.nullcontext() if spec.schedule.dropout else without_dropout(supernet):
        return train(supernet, supernet.param_groups(spec.schedule.lr, speed.mask_lr), batches, steps=steps,
                     lr=spec.schedule.lr, problem=ctx.task.problem, device=ctx.device, warmup_ratio=0.1,
                     weight_decay=spec.train.weight_decay, decay=False,
                     trackers=[t for t in (*trackers, ranks, masks) if t is not None],
                     extra_loss=_mask_penalty(masks, speed.mask_penalty), on_step=on_step,
                     should_stop=should_stop, until=until, check_every=spec.schedule.learn_check_every,
                     teacher=ctx.teacher)


def fit(spec: SearchSpec, out_dir: str | Path, units: list[str] | None = None, *,
        lora_ranks: dict[str, int] | None = None, hold_out: bool = False,
        on_progress: ProgressCallback | None = None, should_stop: StopCheck | None = None,
        checkpoint_dir: str | Path | None = None, checkpoint_every: CheckpointEvery = DEFAULT_CHECKPOINT_EVERY
        ) -> SearchResult:
    """Train and evaluate one fixed configuration (default: the whole supernet of `spec.space`; `lora_ranks`:
    rank per LoRA-wrapped module path, as a result's configuration lists them), no search. With `hold_out`, it
    trains without the validation split and scores it too (`validation_metrics`): a selection among
    configurations made on that never looks at dev. With `checkpoint_dir`, the training is checkpointed there as
    `checkpoint_every` says, and a new call with the same arguments resumes from the last checkpoint."""
    spec = spec.validate()
    report = _Reporter(on_progress, 0, spec.train.steps, spec.train.steps)
    report.phase("load", f"loading {spec.model} and {spec.task.name}")
    set_seed(spec.seed)
    ctx = _Context.prepare(spec)
    model = ctx.supernet(units, lora_ranks)
    backbone_before = backbone_parameter_count(model.model, model.arch)
    result = _retrain_evaluate_export(ctx, model, out_dir, report, should_stop, steps=spec.train.steps,
                                      warmup_ratio=spec.train.warmup_ratio,
                                      budget=budget_params(spec.budget, backbone_before),
                                      backbone_before=backbone_before, records=[], trace_extra={},
                                      hold_out=hold_out, checkpoint_dir=checkpoint_dir,
                                      checkpoint_every=checkpoint_every)
    export.write_result(out_dir, result)
    report.phase("done", f"{result.metric_name} {result.metric:.4f} with {result.trainable_params:,} parameters")
    return result


def _retrain_evaluate_export(ctx: _Context, model: Supernet, out_dir, report: _Reporter, should_stop,
                             *, budget: int, steps: int, warmup_ratio: float, backbone_before: int,
                             records: list[RoundRecord],
                             trace_extra: dict, prior: str | None = None, hold_out: bool = False,
                             teacher: Teacher | None = None, checkpoint_dir: str | Path | None = None,
                             checkpoint_every: CheckpointEvery = DEFAULT_CHECKPOINT_EVERY) -> SearchResult:
    spec = ctx.spec
    checkpoint = TrainCheckpoint(checkpoint_dir, _retrain_key(spec, model, hold_out), checkpoint_every)
    saved = checkpoint.load()
    done = saved.step if saved else 0
    report.skip(done)
    report.phase("retrain", f"training {len(model.unit_keys())} units for {steps} steps"
                            + (f", resuming after step {done}" if saved else ""))
    start = time.monotonic()
    data = ctx.train_without_validation() if hold_out else ctx.train_data
    batches = ctx.batches(data, spec.seed, skip=done, by_length=spec.train.batch_by_length)
    train(model, model.param_groups(spec.train.lr), batches,
          steps=steps, lr=spec.train.lr, problem=ctx.task.problem, device=ctx.device,
          warmup_ratio=warmup_ratio, weight_decay=spec.train.weight_decay,
          on_step=report.steps(None, model.peft_params()), should_stop=should_stop, resume=saved,
          checkpoint=checkpoint, teacher=teacher)
    teacher = None  # its last use: a second model in memory no longer needed for evaluation and export
    fold(model.model)  # a standardised regression head back in the labels' units
    retrain_wall = (saved.wall_s if saved else 0.0) + time.monotonic() - start
    report.phase("evaluate", f"{len(ctx.dev_data)} dev examples")
    metrics = ctx.evaluate(model, ctx.dev_data)
    validation = ctx.evaluate(model, ctx.validation) if hold_out and len(ctx.validation) else None
    stock_peft = _stock_peft_part(ctx, model, metrics)
    example = example_generation(model, ctx.tokenizer, ctx.dev_data, ctx.pad_id, ctx.device) \
        if ctx.task.problem == "completion" else None
    report.phase("export", str(out_dir))
    configuration = export.save(out_dir, model, spec=spec, task=ctx.task, metrics=metrics, records=records,
                                trace_extra=trace_extra, stock_peft=stock_peft, example=example, prior=prior)
    return SearchResult(
        out_dir=str(out_dir), task=ctx.task.name, metric_name=ctx.task.primary_metric,
        metric=metrics[ctx.task.primary_metric], metrics=metrics, trainable_params=model.peft_params(),
        head_params=sum(p.numel() for p in model.head_parameters()), budget_params=budget,
        backbone_params=backbone_parameter_count(model.model, model.arch), backbone_params_before=backbone_before,
        configuration=configuration, pruned_layers=configuration["pruned_layers"], rounds=records,
        search_wall_s=0.0, retrain_wall_s=retrain_wall, peak_memory_mb=peak_memory_mb(ctx.device),
        device=str(ctx.device), validation_metrics=validation)


def _retrain_key(spec: SearchSpec, model: Supernet, hold_out: bool) -> dict:
    """What a retrain checkpoint is of: the spec and the configuration trained, on which data."""
    return {"spec_sha256": spec_fingerprint(spec), "units": model.unit_keys(), "lora_ranks": model.lora_ranks(),
            "backbone": model.backbone_record, "hold_out": hold_out}


def _stock_peft_part(ctx: _Context, model: Supernet, metrics: dict[str, float]) -> dict:
    """What stock peft loads from the result (`PeftModel.from_pretrained(base, dir)`: the LoRA part and the
    head), and what that part alone scores on dev: anything else the search kept is dropped by it."""
    lora = [u.key for u in model.units.values() if u.kind == "lora"]
    dropped = [u.key for u in model.units.values() if u.kind != "lora"]
    primary = ctx.task.primary_metric
    part = {"dropped_units": dropped, "metric_name": primary, "full_metric": metrics[primary]}
    if not lora:
        return {**part, "loads": False, "complete": False, "metric": None,
                "why": "no LoRA unit survived: there is no peft adapter; use pruning.load"}
    if model.backbone_record:
        return {**part, "loads": False, "complete": False, "metric": None,
                "why": "the backbone was pruned: the adapter fits only the pruned backbone that pruning.load "
                       "rebuilds, not the base model"}
    if not dropped:
        return {**part, "loads": True, "complete": True, "metric": metrics[primary], "why": None}
    with contextlib.ExitStack() as stack:
        for key in dropped:
            stack.enter_context(model.unit(key).switched_off())
        alone = ctx.evaluate(model, ctx.dev_data)[primary]
    return {**part, "loads": True, "complete": False, "metric": alone,
            "why": f"stock peft loads only the LoRA part: the {len(dropped)} other units the search kept "
                   f"({', '.join(dropped)}) are dropped"}


def _mask_penalty(masks, coefficient: float):
    return None if masks is None else (lambda: coefficient * masks.l1())


def _prune_backbone(ctx: _Context, supernet: Supernet, rank_tracker: RankTracker | None, batches,
                    report: _Reporter, should_stop, metric: float | None) -> None:
    """The end of the mask rounds: remove heads/neurons by their learned masks, in stages under the quality guard
    (or in one step without it), then the weakest LoRA ranks. `metric`: the supernet's on the validation split
    now, before any head or neuron is off. The record says what the guard did.

    Each stage is judged against an unpruned twin of the supernet that trains the very batches the stage's recovery
    does: a stage trained on is compared with the model it would have been unpruned, not with one trained fewer
    steps (the search's supernet is still learning: against the metric before the stages, a stage's recovery
    steps count as if pruning had cost nothing)."""
    speed = ctx.spec.backbone
    if speed.distill:  # the supernet the guard takes its reference on, before anything is off
        ctx.freeze_teacher(ctx.copy(supernet))
    planner = Planner.of(supernet, speed.score)
    target = planner.plan(speed)
    guard = {"max_drop": speed.max_drop, "asked_share": planner.removed_share(target)}
    reference = metric if speed.max_drop is not None else None
    if reference is None:
        kept = target
        guard["stopped"] = ("no guard (max_drop is null)" if speed.max_drop is None
                            else "no validation split to guard with: pruned to the target")
        report.replan(speed.stages * ctx.spec.stage_steps())  # the stages planned do not run
    else:
        scored = ctx.guard_split(speed.guard_examples)
        guard["examples"] = len(scored)
        labels, primary = np.asarray(scored.labels), ctx.task.primary_metric
        plans = [planner.plan(stage_spec) for stage_spec in stage_specs(speed, planner.layer_params)]
        steps = ctx.spec.stage_steps()
        twin = ctx.copy(supernet) if steps else None  # with no recovery steps the reference stays as it is
        if scored is ctx.validation and twin is not None:  # `metric` is this split's; the twin scores each stage
            unpruned = None
        else:
            reference, unpruned = ctx.guard_scores(supernet, scored)

        def try_plan(kept) -> tuple[float, float, float | None]:
            supernet.masks.keep_only(*kept)
            if steps:
                drawn = [next(batches) for _ in range(steps)]  # the same batches for both (training pops labels)
                _train_supernet(ctx, supernet, (dict(batch) for batch in drawn), steps, rank_tracker,
                                report.steps(speed.mask_rounds, supernet.peft_params()), should_stop)
                _train_supernet(ctx, twin, (dict(batch) for batch in drawn), steps, None, None, should_stop)
            metric, predictions = ctx.guard_scores(supernet, scored)
            base, base_predictions = ctx.guard_scores(twin, scored) if steps else (reference, unpruned)
            se = None if predictions is None else drop_standard_error(primary, labels, base_predictions, predictions)
            return metric, base, se

        accepted, stages, guard["stopped"] = run_guard(plans, [planner.size(p) for p in plans], try_plan, primary,
                                                       speed.max_drop)
        del twin
        report.replan(steps * (len(plans) - len(stages)))
        kept = plans[accepted] if accepted >= 0 else planner.everything()
        supernet.masks.keep_only(*kept)  # what the stages after the accepted one switched off comes back
        guard.update(reference=reference, stages=stages, accepted_stage=accepted + 1)
    guard["reached_share"] = planner.removed_share(kept)  # shares of the layers' parameters removed
    supernet.prune_backbone(*kept)
    supernet.backbone_record["guard"] = guard
    if rank_tracker is not None:
        live = {(u.key, role) for u in supernet.units.values() if u.kind == "lora" for role in u.targets}
        importance = {key: v for key, v in rank_tracker.importance().items() if key in live}  # not removed units
        supernet.prune_ranks(choose_ranks(importance, speed.rank_ratio))


def _resolve_assignment(spec: SearchSpec) -> Assignment:
    """`policy.assignment` as a table ("warmup" starts from the default and derives its own; random needs none)."""
    name = spec.policy.assignment
    if name == "random":
        return {}
    if name in ("default", "warmup"):
        return default_assignment()
    if name == "prunepeft":
        return prunepeft_assignment()
    return uniform_assignment(name, spec.space.types, len(spec.policy.block_cuts) + 1)


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names begin with `prefix`, without it."""
    return {name.removeprefix(prefix): t for name, t in tensors.items() if name.startswith(prefix)}


def _sample(n: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))
