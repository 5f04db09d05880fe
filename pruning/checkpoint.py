"""Per-round checkpoints, so that a restarted worker resumes a search after its last completed round.

A checkpoint is `state.json` (the round reached, the trace, the surviving units) plus the trained tensors of that
round in `weights-<round>.safetensors`. The weights file is written first and `state.json` replaced atomically
after it, so a crash at any moment leaves either the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def spec_fingerprint(spec) -> str:
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()


class Checkpoint:
    def __init__(self, directory: str | Path | None, spec):
        self.dir = Path(directory) if directory else None
        self.fingerprint = spec_fingerprint(spec)

    def load(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        if self.dir is None or not (self.dir / "state.json").exists():
            return None
        state = json.loads((self.dir / "state.json").read_text())
        if state.get("spec_sha256") != self.fingerprint:
            raise ValueError(f"the checkpoint in {self.dir} was written for a different spec; "
                             "remove it or use another checkpoint directory")
        return state, load_file(self.dir / state["weights"])

    def save(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        weights = f"weights-{state['round']}.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, self.dir / weights)
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps({**state, "weights": weights, "spec_sha256": self.fingerprint}))
        os.replace(tmp, self.dir / "state.json")
        for old in self.dir.glob("weights-*.safetensors"):
            if old.name != weights:
                old.unlink()
