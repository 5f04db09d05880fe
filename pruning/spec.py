"""What a search is asked to do: plain dataclasses that round-trip through JSON.

A `SearchSpec` is the whole input of `pruning.search`. The service stores it as the job's spec; the CLI builds it
from flags. `SearchSpec.from_dict(spec.to_dict()) == spec` always holds, and `from_dict` rejects unknown keys and
bad values with a `SpecError` that names the field.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

GLUE_TASKS = ("sst2", "mrpc", "cola", "stsb", "rte", "qnli")


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
        if self.problem not in ("classification", "regression"):
            raise SpecError(f"{at}.problem", "must be 'classification' or 'regression'")
        if self.format not in (None, "csv", "tsv", "jsonl"):
            raise SpecError(f"{at}.format", "must be csv, tsv or jsonl")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise SpecError(f"{at}.max_train_examples", "must be >= 1")

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


@dataclass(frozen=True)
class ScheduleSpec:
    rounds: int = 4
    steps_per_round: int = 30
    lr: float = 1e-3
    eval_examples: int = 256  # dev examples scored after each round (the trace's metric), 0 to skip
    max_train_examples: int | None = 2000  # the search trains on at most this many train examples


@dataclass(frozen=True)
class BackboneSpec:
    """Light-PEFT early pruning of the backbone (heads, FFN neurons) and LoRA ranks. Off by default."""

    enabled: bool = False
    head_ratio: float = 1 / 3  # share of heads removed, ranked per layer
    neuron_ratio: float = 1 / 3  # share of FFN neurons removed, ranked globally
    target_params: int | None = None  # instead of the ratios: keep removing until the backbone has this many
    mask_penalty: float = 1e-4  # L1 coefficient on the masks
    # The masks learn during a few short search rounds, not Light-PEFT's 800-step estimation run, so they get
    # a learning rate of their own, high enough for Adam to separate them in that time.
    mask_lr: float = 0.02
    mask_rounds: int = 1  # masks learn during this many search rounds, then the backbone is pruned
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
        if not self.model:
            raise SpecError("model", "required")
        self.task.validate()
        parse_budget(self.budget)
        if self.retrain not in ("fresh", "warm"):
            raise SpecError("retrain", "must be 'fresh' or 'warm'")
        unknown = set(self.space.types) - {"lora", "adapter", "prefix"}
        if unknown or not self.space.types:
            raise SpecError("space.types", "choose one or more of lora, adapter, prefix")
        for name, value in [
            ("space.lora.rank", self.space.lora.rank),
            ("space.adapter.size", self.space.adapter.size),
            ("space.prefix.length", self.space.prefix.length),
            ("train.steps", self.train.steps),
            ("train.batch_size", self.train.batch_size),
            ("train.max_length", self.train.max_length),
            ("train.eval_batch_size", self.train.eval_batch_size),
            ("schedule.rounds", self.schedule.rounds),
            ("schedule.steps_per_round", self.schedule.steps_per_round),
        ]:
            if not isinstance(value, int) or value < 1:
                raise SpecError(name, f"must be a positive integer, got {value!r}")
        for name, value in [("train.lr", self.train.lr), ("schedule.lr", self.schedule.lr)]:
            if not value > 0:
                raise SpecError(name, "must be > 0")
        if not 0 <= self.train.warmup_ratio < 1:
            raise SpecError("train.warmup_ratio", "must be in [0, 1)")
        for name, value in [
            ("backbone.head_ratio", self.backbone.head_ratio),
            ("backbone.neuron_ratio", self.backbone.neuron_ratio),
            ("backbone.rank_ratio", self.backbone.rank_ratio),
        ]:
            if not 0 <= value < 1:
                raise SpecError(name, "must be in [0, 1)")
        if not self.backbone.mask_lr > 0 or self.backbone.mask_penalty < 0:
            raise SpecError("backbone.mask_lr", "mask_lr must be > 0 and mask_penalty >= 0")
        if self.backbone.target_params is not None and self.backbone.target_params < 0:
            raise SpecError("backbone.target_params", "must be >= 0")
        if self.backbone.enabled and not 1 <= self.backbone.mask_rounds <= self.schedule.rounds:
            raise SpecError("backbone.mask_rounds", "must be between 1 and schedule.rounds")
        return self

    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpec:
        return _from_dict(cls, data, "spec").validate()


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
        raise SpecError(at, f"expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"{at}.{unknown[0]}", f"unknown field (known: {', '.join(fields)})")
    hints = _resolved_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, f"{at}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SpecError(f"{at}.{missing[0]}", "required")
    return cls(**kwargs)


def _resolved_hints(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)
