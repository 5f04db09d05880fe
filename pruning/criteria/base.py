"""The criterion interface: a named function from a unit's signals to one number, higher = more important.

`when` says which signals it reads and so when the tracker calls it:
- "end": the unit's weights at scoring time (weight magnitude, zeros, threshold);
- "step": weights and gradients after each backward pass (Taylor, gradient);
- "forward": the unit's output `delta` and the stream it adds to, `base`, on each forward pass, restricted to
  real (non-padding) tokens (activation, importance ratio).
Per-step and per-forward values are accumulated over a round by the tracker, never summed before |.| is taken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the registry itself must import without torch: the service validates specs with it
    import torch

When = Literal["end", "step", "forward"]


@dataclass
class Signals:
    weights: list[torch.Tensor]
    grads: list[torch.Tensor] | None = None
    delta: torch.Tensor | None = None  # (tokens, features): the unit's contribution, real tokens only
    base: torch.Tensor | None = None  # (tokens, features): the hidden stream without the unit

    @property
    def numel(self) -> int:
        return sum(w.numel() for w in self.weights)


@dataclass(frozen=True)
class Criterion:
    name: str
    when: When
    measure: Callable[[Signals], float]
    doc: str


CRITERIA: dict[str, Criterion] = {}


def criterion(name: str, when: When):
    """Register `measure` under `name`; one file per criterion calls this."""

    def register(measure: Callable[[Signals], float]) -> Callable[[Signals], float]:
        CRITERIA[name] = Criterion(name, when, measure, (measure.__doc__ or "").strip())
        return measure

    return register
