"""Where a search stands, and per-round checkpoints of it, so that a restarted worker resumes a search after its
last completed round.

A checkpoint is `state.json` (a `SearchState`) plus the trained tensors of that round in
`weights-<round>.safetensors`. The weights file is written first and `state.json` replaced atomically after it, so
a crash at any moment leaves either the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .result import RoundRecord


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
        self.dir.mkdir(parents=True, exist_ok=True)
        weights = f"weights-{state.round}.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, self.dir / weights)
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps({**state.to_dict(), "weights": weights, "spec_sha256": self.fingerprint}))
        os.replace(tmp, self.dir / "state.json")
        for old in self.dir.glob("weights-*.safetensors"):
            if old.name != weights:
                old.unlink()
