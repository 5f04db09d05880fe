"""What a search reports while it runs and when it ends. Plain data, JSON-friendly, no torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

PHASES = ("load", "warmup", "learn", "estimate", "search", "retrain", "evaluate", "export", "done")


class Cancelled(Exception):
    """Raised inside `pruning.search` when its `should_stop` callback returns True."""


@dataclass
class RemovedUnit:
    unit: str  # "<type>.<layer>", e.g. "adapter.3"
    params: int
    score: float  # the fused, size-normalised importance it was ranked by
    scores: dict[str, float] = field(default_factory=dict)  # raw score per criterion of its partition
    # at rank granularity (space.lora.rank_step): the projection that shrank, and its rank before and after
    role: str | None = None
    ranks: list[int] | None = None

    def label(self) -> str:
        """"adapter.3", or for a LoRA projection that shrank "lora.1 v 8->4" (to 0: unwrapped)."""
        return self.unit if self.role is None else f"{self.unit} {self.role} {self.ranks[0]}->{self.ranks[1]}"


@dataclass
class RoundRecord:
    round: int  # 1-based
    units_left: list[str]
    trainable_params: int  # PEFT parameters left after this round's removals
    target_params: int
    metric_name: str
    metric: float | None  # on the validation split (carved from train), before this round's removals
    train_loss: float | None
    removed: list[RemovedUnit]
    wall_s: float
    backbone_params: int | None = None  # when the backbone was pruned this round
    # the same metric for a model that learned nothing: a constant prediction (the train majority class, or mean);
    # for a completion task, the backbone alone
    chance_metric: float | None = None
    # what one unit of each module type was worth this round: the mean validation-loss increase when one of its
    # units is switched off (calibration.py); None when not measured
    type_values: dict[str, float] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundRecord:
        return cls(**{**data, "removed": [RemovedUnit(**r) for r in data["removed"]]})


@dataclass
class FrontPoint:
    """One configuration the search passed through: the supernet, then what was left after each round."""

    after_round: int  # 0: the whole supernet
    params: int  # its PEFT parameters
    # the validation split's metric with the supernet's weights (trained while more units were on; before any
    # retraining): measured at the start of the next round, or after the last round's removals
    metric: float | None
    on_front: bool = False  # no other configuration has at most its parameters and at least its metric
    chosen: bool = False  # the configuration at the budget, which was retrained


def pareto_front(start_params: int, records: list[RoundRecord], final_metric: float | None,
                 lower_is_better: bool = False) -> list[FrontPoint]:
    """The configurations a search passed through, largest first, each marked on or off the params/metric
    front. Round r's record holds the metric of the configuration it started from (before its removals).
    `lower_is_better`: the metric is a loss (a completion task's without exact match)."""
    params = [start_params, *(r.trainable_params for r in records)]
    metrics = [*(r.metric for r in records), final_metric]
    points = [FrontPoint(i, p, m, chosen=i == len(records)) for i, (p, m) in enumerate(zip(params, metrics, strict=True))]
    sign = -1 if lower_is_better else 1
    for point in points:
        point.on_front = point.metric is not None and not any(  # dominated: as good for fewer, or better for as few
            other.metric is not None and other.params <= point.params and sign * other.metric >= sign * point.metric
            and (other.params, other.metric) != (point.params, point.metric) for other in points)
    return points


@dataclass
class ProgressEvent:
    kind: Literal["phase", "step", "round"]
    phase: str
    round: int | None = None  # 1-based while searching
    rounds: int = 0
    step: int = 0  # within the current phase (or round)
    steps: int = 0
    trainable_params: int | None = None
    loss: float | None = None
    metric: float | None = None
    elapsed_s: float = 0.0  # since the search started
    done_steps: int = 0  # training steps of the whole run done so far (all phases)
    total_steps: int = 0  # and planned (shrinks when the learning phase ends early, unless retrain is 'continue')
    eta_s: float | None = None  # seconds left at the pace of this process's steps so far
    message: str = ""
    record: RoundRecord | None = None  # set when kind == "round"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SearchResult:
    out_dir: str
    task: str
    metric_name: str  # the task's primary metric
    metric: float
    metrics: dict[str, float]  # every dev metric of the task
    trainable_params: int  # PEFT parameters of the final configuration (the budgeted quantity)
    head_params: int  # the task head (classifier), trained by every method alike
    budget_params: int
    backbone_params: int  # backbone parameters of the delivered model (smaller when it was pruned)
    backbone_params_before: int
    configuration: dict[str, Any]  # module type per layer, ranks, sizes, backbone record
    pruned_layers: list[int]  # layers left with no PEFT module
    rounds: list[RoundRecord]
    search_wall_s: float
    retrain_wall_s: float
    peak_memory_mb: float
    device: str
    # fit(hold_out=True): the metrics on the validation split it did not train on (what a selection may use)
    validation_metrics: dict[str, float] | None = None
    # the configurations the search passed through (params, validation metric), the front marked (search only)
    front: list[FrontPoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchResult:
        return cls(**{**data, "rounds": [RoundRecord.from_dict(r) for r in data["rounds"]],
                      "front": [FrontPoint(**p) for p in data.get("front", [])]})


# --- how results read to a person: one formatter each, used by the CLI, the model card and the service -----------


def format_unit(kind: str, description: dict | None) -> str:
    """A unit's sizes in a table cell, as its module type writes them: "q8/v8" (LoRA rank per projection),
    "d=16" (adapter), "p=8" (prefix); "-" for no unit."""
    from .modules import MODULE_TYPES

    if description is None:
        return "-"
    if kind not in MODULE_TYPES:  # a type this installation does not have (a client of another server)
        return ", ".join(f"{k}={v}" for k, v in description.items())
    return MODULE_TYPES[kind].cell(description)


def format_metrics(metrics: dict[str, float], labels: list[str] | None = None) -> str:
    """"accuracy 0.8125, f1 0.7000 (positive class 'pos')": binary F1 names the class it is the F1 of."""
    def one(name: str, value: float) -> str:
        text = f"{name} {value:.4f}"
        if name == "f1" and labels and len(labels) == 2:
            text += f" (positive class {labels[1]!r})"
        return text

    return ", ".join(one(name, value) for name, value in metrics.items())


def format_round(record: RoundRecord, rounds: int) -> str:
    """One line per finished round, for logs and the CLI."""
    metric = "n/a" if record.metric is None else f"{record.metric:.4f}"
    if record.metric is not None and record.chance_metric is not None:
        metric += f" (constant prediction: {record.chance_metric:.4f})"
    removed = ", ".join(u.label() for u in record.removed) or "nothing"
    return (f"round {record.round}/{rounds}: validation {record.metric_name} {metric} before removing {removed}; "
            f"{record.trainable_params:,} parameters left (target {record.target_params:,})")


def format_front(front: list[FrontPoint], metric_name: str) -> str:
    """The configurations a search passed through, one per line: "after round 2  31,232 params  accuracy 0.8125
    on the front, chosen"; the metric is the validation split's, with the search's weights."""
    def line(point: FrontPoint) -> str:
        metric = "n/a" if point.metric is None else f"{point.metric:.4f}"
        marks = ", ".join(m for m, on in (("on the front", point.on_front), ("chosen", point.chosen)) if on)
        where = "supernet     " if point.after_round == 0 else f"after round {point.after_round}"
        return f"{where}  {point.params:>10,} params  validation {metric_name} {metric}" + (
            f"  ({marks})" if marks else "")

    return "\n".join(line(point) for point in front)


def format_backbone(record: dict | None) -> str | None:
    """Speed mode's outcome in a line: the share of the layers' parameters removed, the share asked for, and why
    the quality guard stopped where it did. None when the backbone was not pruned."""
    if not record:
        return None
    before, after = record["layer_params_before"], record["layer_params_after"]
    line = f"{1 - after / before:.1%} of the layers' parameters removed ({before:,} -> {after:,})"
    guard = record.get("guard")
    if guard:
        line += f"; asked {guard['asked_share']:.1%}, guard: {guard['stopped']}"
    return line


def stock_peft_warning(stock_peft: dict | None) -> str | None:
    """The sentence a user must not miss when stock peft does not reproduce the searched model."""
    if not stock_peft or stock_peft.get("complete"):
        return None
    if not stock_peft["loads"]:
        return f"Stock peft cannot reproduce this model: {stock_peft['why']}."
    return (f"Stock peft reproduces only part of this model: {stock_peft['why']}; that part alone scores "
            f"{stock_peft['metric_name']} {stock_peft['metric']:.4f} on dev against {stock_peft['full_metric']:.4f} "
            f"for the searched model. Use pruning.load(dir) for the whole model.")
