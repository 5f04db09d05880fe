"""What a search is asked to do: plain dataclasses that round-trip through JSON.

A `SearchSpec` is the whole input of `pruning.search`. The service stores it as the job's spec; the CLI builds it
from flags. `SearchSpec.from_dict(spec.to_dict()) == spec` always holds, and `from_dict` rejects unknown keys and
bad values with a `SpecError` that names the field.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Literal

GLUE_TASKS = ("sst2", "mrpc", "cola", "stsb", "rte", "qnli")
MODULE_TYPES = ("lora", "adapter", "prefix")
ROLES = ("q", "k", "v", "o", "ffn_in", "ffn_out")  # projections of a layer, as architecture maps name them
ADAPTER_ACTIVATIONS = ("relu", "gelu", "silu", "tanh")


class SpecError(ValueError):
    """A search spec field is missing or invalid. `field` is the dotted path, e.g. 'train.steps'."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class TaskSpec:
    """A task: where its train/dev data live and how to read them.

    `glue` names a GLUE task (its file layout, labels and metrics are known; `data_dir` holds `<TASK>/train.tsv`).
    Otherwise `train`/`dev` are local CSV, TSV or JSONL files and the columns say which fields to read.
    """

    glue: str | None = None
    data_dir: str | None = None
    train: str | None = None
    dev: str | None = None
    format: Literal["csv", "tsv", "jsonl"] | None = None  # None: from the file extension
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    problem: Literal["classification", "regression"] = "classification"
    max_train_examples: int | None = None  # subsample train (seeded) to keep CPU time sane

    def validate(self, at: str = "task") -> None:
        if self.glue is not None:
            if self.glue not in GLUE_TASKS:
                raise SpecError(f"{at}.glue", f"unknown GLUE task {self.glue!r}; known: {', '.join(GLUE_TASKS)}")
            if not self.data_dir:
                raise SpecError(f"{at}.data_dir", "a GLUE task needs data_dir (the folder holding SST-2/, MRPC/, ...)")
        elif not (self.train and self.dev):
            raise SpecError(f"{at}", "give either glue (+ data_dir) or both train and dev file paths")
        _choice(f"{at}.problem", self.problem, ("classification", "regression"))
        if self.format is not None:
            _choice(f"{at}.format", self.format, ("csv", "tsv", "jsonl"))
        if self.max_train_examples is not None:
            _integer(f"{at}.max_train_examples", self.max_train_examples, low=1)

    @property
    def name(self) -> str:
        return f"glue:{self.glue}" if self.glue else f"file:{self.train}"


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ("q", "v")  # roles of the architecture map: q, k, v, o, ffn_in, ffn_out


@dataclass(frozen=True)
class AdapterSpec:
    size: int = 16  # bottleneck width
    activation: str = "relu"


@dataclass(frozen=True)
class PrefixSpec:
    length: int = 8  # learned key/value vectors per layer
    # Prefixes learn far slower than LoRA at the same step size (P-tuning v2 trains them at ~1e-2): their
    # learning rate is the run's times this. Measured on SST-2/MiniLM: at 1e-3 a prefix-only model stays at
    # chance after 300 steps, at 3e-2 it learns.
    lr_scale: float = 30.0


@dataclass(frozen=True)
class SpaceSpec:
    """The supernet: which module types sit in every layer, and their sizes."""

    types: tuple[str, ...] = ("lora", "adapter", "prefix")
    lora: LoraSpec = field(default_factory=LoraSpec)
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    prefix: PrefixSpec = field(default_factory=PrefixSpec)


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_length: int = 128
    eval_batch_size: int = 128


@dataclass(frozen=True)
class PolicySpec:
    """The hybrid policy: which criterion scores which partition, and how rounds remove units."""

    # "default" (the shipped table), "warmup" (derive it on a small subset first), or a criterion name to use
    # everywhere (a single-criterion ablation), e.g. "taylor".
    assignment: str = "default"
    warmup_examples: int = 128
    warmup_steps: int = 20
    block_cuts: tuple[float, ...] = (0.2, 0.5, 0.8)
    accumulate: Literal["mean", "ema"] = "mean"
    ema_beta: float = 0.9
    # Criteria rank units within a module type; what one type is worth against another is measured: the
    # validation-loss increase when a unit is switched off, averaged over up to this many units per type (spread
    # over depth). 0: no measurement, every type weighs the same.
    calibration_units: int = 8


@dataclass(frozen=True)
class ScheduleSpec:
    rounds: int = 4
    steps_per_round: int = 30
    lr: float = 1e-3
    # The validation split, carved from train (the dev set is scored once, at the end): it gates the start of
    # scoring, calibrates the module types and gives each round's metric. 0: no split (no gate, no calibration).
    eval_examples: int = 256
    max_train_examples: int | None = 2000  # the search trains on at most this many train examples
    # Units are scored only once the supernet has learned: its validation loss must be below (1 - learn_margin)
    # x the loss of always predicting the train labels' prior (mean, for regression). It trains for that at most
    # learn_max_share x train.steps steps, checking every learn_check_every steps; the trace says when scoring
    # began and whether the supernet had learned by then.
    learn_max_share: float = 0.2
    learn_margin: float = 0.05
    learn_check_every: int = 10


@dataclass(frozen=True)
class BackboneSpec:
    """Light-PEFT early pruning of the backbone (heads, FFN neurons) and LoRA ranks. Off by default."""

    enabled: bool = False
    head_ratio: float = 1 / 3  # share of heads removed, ranked per layer (Light-PEFT's 1/3)
    neuron_ratio: float = 0.4  # share of FFN neurons removed, ranked globally (Light-PEFT: 1/3)
    target_params: int | None = None  # instead of the ratios: keep removing until the backbone has this many
    mask_penalty: float = 1e-4  # L1 coefficient on the masks
    # The masks learn during a few short search rounds, not Light-PEFT's 800-step estimation run, so they get
    # a learning rate of their own, high enough for Adam to separate them in that time.
    mask_lr: float = 0.02
    mask_rounds: int = 1  # masks learn during this many search rounds, then the backbone is pruned
    # How heads and neurons are ranked: "magnitude" of the learned mask (Light-PEFT, after 800 steps there), or
    # "taylor", |m * dL/dm| accumulated over the mask rounds' steps.
    score: Literal["magnitude", "taylor"] = "magnitude"
    rank_ratio: float = 0.5  # share of LoRA ranks removed globally (0 keeps them all)
    save_backbone: bool = False  # also write the pruned backbone's weights (deploy without the base model)


@dataclass(frozen=True)
class SearchSpec:
    model: str  # local path or hub id of a sequence-classification backbone
    task: TaskSpec
    budget: str | int = "0.5%"  # trainable PEFT parameters: a count, or a share of the backbone ("0.5%")
    space: SpaceSpec = field(default_factory=SpaceSpec)
    policy: PolicySpec = field(default_factory=PolicySpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    retrain: Literal["fresh", "warm"] = "fresh"
    seed: int = 0
    device: str = "auto"  # "auto" (cuda when present), "cpu", "cuda", "cuda:1", ...

    def validate(self) -> SearchSpec:
        """Check every field the engine would otherwise trip over later; raise SpecError naming the first bad one."""
        if not isinstance(self.model, str) or not self.model:
            raise SpecError("model", "required: a local path or a hub id")
        if not isinstance(self.task, TaskSpec):
            raise SpecError("task", "required")
        self.task.validate()
        parse_budget(self.budget)
        _choice("retrain", self.retrain, ("fresh", "warm"))
        if not isinstance(self.device, str) or not self.device:
            raise SpecError("device", "auto, cpu, cuda or cuda:<n>")
        _integer("seed", self.seed, low=0)
        space = self.space
        if not space.types or set(space.types) - set(MODULE_TYPES) or len(set(space.types)) != len(space.types):
            raise SpecError("space.types", f"choose one or more of {', '.join(MODULE_TYPES)}, each once")
        _integer("space.lora.rank", space.lora.rank, low=1)
        _number("space.lora.alpha", space.lora.alpha, low=0, low_open=True)
        _number("space.lora.dropout", space.lora.dropout, low=0, high=1)
        if not space.lora.targets or set(space.lora.targets) - set(ROLES):
            raise SpecError("space.lora.targets", f"choose one or more of {', '.join(ROLES)}")
        _integer("space.adapter.size", space.adapter.size, low=1)
        _choice("space.adapter.activation", space.adapter.activation, ADAPTER_ACTIVATIONS)
        _integer("space.prefix.length", space.prefix.length, low=1)
        _number("space.prefix.lr_scale", space.prefix.lr_scale, low=0, low_open=True)
        for name in ("steps", "batch_size", "max_length", "eval_batch_size"):
            _integer(f"train.{name}", getattr(self.train, name), low=1)
        _number("train.lr", self.train.lr, low=0, low_open=True)
        _number("train.warmup_ratio", self.train.warmup_ratio, low=0, high=1)
        _number("train.weight_decay", self.train.weight_decay, low=0)
        self._validate_policy()
        schedule = self.schedule
        _integer("schedule.rounds", schedule.rounds, low=1)
        _integer("schedule.steps_per_round", schedule.steps_per_round, low=1)
        _number("schedule.lr", schedule.lr, low=0, low_open=True)
        _integer("schedule.eval_examples", schedule.eval_examples, low=0)
        _number("schedule.learn_max_share", schedule.learn_max_share, low=0, high=1)
        _number("schedule.learn_margin", schedule.learn_margin, low=0, high=1)
        _integer("schedule.learn_check_every", schedule.learn_check_every, low=1)
        if schedule.max_train_examples is not None:
            _integer("schedule.max_train_examples", schedule.max_train_examples, low=1)
        backbone = self.backbone
        if not isinstance(backbone.enabled, bool) or not isinstance(backbone.save_backbone, bool):
            raise SpecError("backbone.enabled", "enabled and save_backbone are true or false")
        for name in ("head_ratio", "neuron_ratio", "rank_ratio"):
            _number(f"backbone.{name}", getattr(backbone, name), low=0, high=1)
        if backbone.target_params is not None:
            _integer("backbone.target_params", backbone.target_params, low=0)
        _number("backbone.mask_penalty", backbone.mask_penalty, low=0)
        _number("backbone.mask_lr", backbone.mask_lr, low=0, low_open=True)
        _integer("backbone.mask_rounds", backbone.mask_rounds, low=1)
        _choice("backbone.score", backbone.score, ("magnitude", "taylor"))
        if backbone.enabled and backbone.mask_rounds > schedule.rounds:
            raise SpecError("backbone.mask_rounds", f"must be at most schedule.rounds ({schedule.rounds})")
        return self

    def _validate_policy(self) -> None:
        from .criteria import CRITERIA  # no torch: the registry imports without it

        policy = self.policy
        presets = ("default", "prunepeft", "warmup", "random")
        if policy.assignment not in presets and policy.assignment not in CRITERIA:
            raise SpecError("policy.assignment", f"{policy.assignment!r} is not one of {', '.join(presets)} or a "
                                                 f"criterion ({', '.join(sorted(CRITERIA))})")
        cuts = policy.block_cuts
        if not all(isinstance(c, float | int) and not isinstance(c, bool) and 0 < c < 1 for c in cuts) \
                or list(cuts) != sorted(set(cuts)):
            raise SpecError("policy.block_cuts", "increasing fractions of depth strictly between 0 and 1")
        if policy.assignment in ("default", "prunepeft") and len(cuts) != 3:
            raise SpecError("policy.block_cuts", f"the {policy.assignment} assignment is a table for 4 depth "
                                                 "blocks: give 3 cuts, or another assignment")
        _choice("policy.accumulate", policy.accumulate, ("mean", "ema"))
        _number("policy.ema_beta", policy.ema_beta, low=0, high=1, low_open=True)
        _integer("policy.warmup_examples", policy.warmup_examples, low=2)
        _integer("policy.warmup_steps", policy.warmup_steps, low=1)
        _integer("policy.calibration_units", policy.calibration_units, low=0)

    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpec:
        return _from_dict(cls, data, "").validate()


def _integer(field: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(field, f"must be an integer >= {low}, got {value!r}" if low != 1
                        else f"must be a positive integer, got {value!r}")


def _number(field: str, value: Any, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> None:
    """A real number in [low, high) (or (low, high) with low_open)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise SpecError(field, f"must be a number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise SpecError(field, f"must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value >= high:
        raise SpecError(field, f"must be < {high}, got {value!r}")


def _choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(field, f"must be one of {', '.join(choices)}, got {value!r}")


_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|k|m)?\s*$", re.IGNORECASE)


def parse_budget(budget: str | int) -> tuple[str, float]:
    """'0.5%' -> ('fraction', 0.005); 70000 or '70k' -> ('count', 70000). Raises SpecError otherwise."""
    if isinstance(budget, bool):
        raise SpecError("budget", "must be a parameter count or a percentage like '0.5%'")
    if isinstance(budget, int):
        if budget < 1:
            raise SpecError("budget", "must be >= 1 parameter")
        return "count", float(budget)
    match = _BUDGET.match(str(budget))
    if not match:
        raise SpecError("budget", f"{budget!r} is not a parameter count (70000, 70k) or a share ('0.5%')")
    value, unit = float(match.group(1)), (match.group(2) or "").lower()
    if unit == "%":
        if not 0 < value <= 100:
            raise SpecError("budget", "a percentage must be in (0, 100]")
        return "fraction", value / 100
    value *= {"": 1, "k": 1e3, "m": 1e6}[unit]
    if value < 1:
        raise SpecError("budget", "must be >= 1 parameter")
    return "count", value


def budget_params(budget: str | int, backbone_params: int) -> int:
    kind, value = parse_budget(budget)
    return int(value * backbone_params) if kind == "fraction" else int(value)


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_to_jsonable(v) for v in value]
    return value


def _from_dict(cls: type, data: Any, at: str) -> Any:
    if not isinstance(data, dict):
        raise SpecError(at or "spec", f"expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(_join(at, unknown[0]), f"unknown field (known: {', '.join(fields)})")
    hints = _resolved_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, _join(at, name))
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SpecError(_join(at, missing[0]), "required")
    return cls(**kwargs)


def _join(at: str, name: str) -> str:
    return f"{at}.{name}" if at else name


@functools.cache  # resolving a class's annotations is costly, and a spec class's never change (read-only result)
def _resolved_hints(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)
