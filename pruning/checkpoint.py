"""Where a search stands, and per-round checkpoints of it, so that a restarted worker resumes a search after its
last completed round; and checkpoints of the retrain, so that it resumes from its last one too.

A checkpoint is `state.json` (a `SearchState`) plus the trained tensors of that round in
`weights-<round>.safetensors`. The weights file is written first and `state.json` replaced atomically after it, so
a crash at any moment leaves either the previous checkpoint or the new one, never a mix. The retrain's are
`retrain.json` and `retrain-<step>.safetensors` in the same directory, written the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .result import RoundRecord
from .train import TrainState


@dataclass
class SearchState:
    """What a search has done so far: the rounds completed, and what it needs to go on from there."""

    start_params: int  # PEFT parameters of the whole supernet
    round: int = 0  # rounds completed
    records: list[RoundRecord] = field(default_factory=list)
    assignment: dict | None = None  # the criteria per (type, depth block) in force
    warmup: dict | None = None  # the warm-up's report, when the assignment was derived
    learn: dict | None = None  # the learning phase's report: the step at which scoring began, and the metric then
    units: list[str] | None = None  # surviving units (None: all)
    lora_ranks: dict[str, int] | None = None
    backbone: dict | None = None  # the backbone pruning record, once pruned
    teacher: dict | None = None  # speed mode's distillation teacher: its units and LoRA ranks (tensors: "teacher/")
    search_wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchState:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        return cls(**{**values, "records": [RoundRecord.from_dict(r) for r in values.get("records", [])]})


def spec_fingerprint(spec) -> str:
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()


class Checkpoint:
    def __init__(self, directory: str | Path | None, spec):
        self.dir = Path(directory) if directory else None
        self.fingerprint = spec_fingerprint(spec)

    def load(self) -> tuple[SearchState, dict[str, torch.Tensor]] | None:
        if self.dir is None or not (self.dir / "state.json").exists():
            return None
        data = json.loads((self.dir / "state.json").read_text())
        if data.get("spec_sha256") != self.fingerprint:
            raise ValueError(f"the checkpoint in {self.dir} was written for a different spec; "
                             "remove it or use another checkpoint directory")
        return SearchState.from_dict(data), load_file(self.dir / data["weights"])

    def save(self, state: SearchState, tensors: dict[str, torch.Tensor]) -> None:
        if self.dir is None:
            return
        _write(self.dir, "state.json", "weights", state.round, tensors,
               {**state.to_dict(), "spec_sha256": self.fingerprint})


@dataclass(frozen=True)
class CheckpointEvery:
    """How often the retrain is checkpointed: once this many steps or seconds have passed since the last
    checkpoint, whichever comes first (None: never by that measure), and after its last step. It changes no
    result (a resumed retrain goes on exactly where it stopped), so it is not part of the spec."""

    steps: int | None = None
    seconds: float | None = 120.0


DEFAULT_CHECKPOINT_EVERY = CheckpointEvery()  # the default: a kill loses at most about two minutes of the retrain


class TrainCheckpoint:
    """Checkpoints of one training run (the retrain) of one configuration: `key` says which (the spec and the
    configuration trained); a checkpoint written for another is refused."""

    def __init__(self, directory: str | Path | None, key: dict[str, Any], every: CheckpointEvery):
        self.dir = Path(directory) if directory else None
        self.fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        self.every = every
        self.last_step, self.last_time = 0, time.monotonic()

    def load(self) -> TrainState | None:
        if self.dir is None or not (self.dir / "retrain.json").exists():
            return None
        data = json.loads((self.dir / "retrain.json").read_text())
        if data.get("key_sha256") != self.fingerprint:
            raise ValueError(f"the retrain checkpoint in {self.dir} was written for a different spec or "
                             "configuration; remove it or use another checkpoint directory")
        self.last_step = data["step"]
        return TrainState(data["step"], data["loss_sum"], data["wall_s"], load_file(self.dir / data["weights"]))

    def due(self, step: int, steps: int) -> bool:
        every = self.every
        return self.dir is not None and (
            step == steps or (every.steps is not None and step - self.last_step >= every.steps)
            or (every.seconds is not None and time.monotonic() - self.last_time >= every.seconds))

    def save(self, state: TrainState) -> None:
        _write(self.dir, "retrain.json", "retrain", state.step, state.tensors,
               {"step": state.step, "loss_sum": state.loss_sum, "wall_s": state.wall_s,
                "key_sha256": self.fingerprint})
        self.last_step, self.last_time = state.step, time.monotonic()


def _write(directory: Path, state_name: str, stem: str, number: int, tensors: dict[str, torch.Tensor],
           state: dict[str, Any]) -> None:
    """`<stem>-<number>.safetensors`, then the state naming it replaced atomically, then the stem's older
    tensors, which no state names any more."""
    weights = f"{stem}-{number}.safetensors"
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, directory / weights)
    tmp = directory / f"{state_name}.tmp"
    tmp.write_text(json.dumps({**state, "weights": weights}))
    os.replace(tmp, directory / state_name)
    for old in directory.glob(f"{stem}-*.safetensors"):
        if old.name != weights:
            old.unlink()
