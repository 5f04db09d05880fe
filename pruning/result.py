"""What a search reports while it runs and when it ends. Plain data, JSON-friendly, no torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

PHASES = ("load", "warmup", "search", "retrain", "evaluate", "export", "done")


class Cancelled(Exception):
    """Raised inside `pruning.search` when its `should_stop` callback returns True."""


@dataclass
class RemovedUnit:
    unit: str  # "<type>.<layer>", e.g. "adapter.3"
    params: int
    score: float  # the fused, size-normalised importance it was ranked by
    scores: dict[str, float] = field(default_factory=dict)  # raw score per criterion of its partition


@dataclass
class RoundRecord:
    round: int  # 1-based
    units_left: list[str]
    trainable_params: int  # PEFT parameters left after this round's removals
    target_params: int
    metric_name: str
    metric: float | None  # on the search's dev subset, before this round's removals
    train_loss: float | None
    removed: list[RemovedUnit]
    wall_s: float
    backbone_params: int | None = None  # when the backbone was pruned this round

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundRecord:
        return cls(**{**data, "removed": [RemovedUnit(**r) for r in data["removed"]]})


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchResult:
        return cls(**{**data, "rounds": [RoundRecord.from_dict(r) for r in data["rounds"]]})
