"""Accumulate importance criteria for every unit over one round of training.

Per step, each criterion yields one value per unit (forward criteria: the mean over that step's forward calls of
the unit, e.g. over its q and v projections); values accumulate as a mean over all steps of the round, or an EMA.
A new tracker per round is the reset.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch

from .criteria import CRITERIA, Signals
from .modules.base import Unit


class Accumulator:
    def __init__(self, mode: str = "mean", beta: float = 0.9):
        if mode not in ("mean", "ema"):
            raise ValueError(f"accumulate must be 'mean' or 'ema', got {mode!r}")
        self.mode, self.beta = mode, beta
        self.total, self.count = 0.0, 0

    def add(self, value: float) -> None:
        self.count += 1
        if self.mode == "mean":
            self.total += value
        else:
            self.total = self.beta * self.total + (1 - self.beta) * value

    @property
    def value(self) -> float:
        if self.count == 0:
            return 0.0
        if self.mode == "mean":
            return self.total / self.count
        return self.total / (1 - self.beta**self.count)  # bias-corrected, as Adam does


class ImportanceTracker:
    """Use as a context manager around a round's training; call `before_forward(attention_mask)` before each
    forward and `after_backward()` after each backward; read `scores()` at the end of the round."""

    def __init__(self, units: Iterable[Unit], criteria: Iterable[str], accumulate: str = "mean",
                 beta: float = 0.9):
        unknown = set(criteria) - set(CRITERIA)
        if unknown:
            raise ValueError(f"unknown criteria {sorted(unknown)}; known: {sorted(CRITERIA)}")
        self.units = list(units)
        self.criteria = [CRITERIA[name] for name in sorted(set(criteria))]
        self._by_when = {when: [c for c in self.criteria if c.when == when] for when in ("end", "step", "forward")}
        self._acc = defaultdict(lambda: Accumulator(accumulate, beta))  # (criterion, unit key) -> Accumulator
        self._pending: dict[tuple[str, str], list[float]] = defaultdict(list)
        self._token_mask: torch.Tensor | None = None

    def __enter__(self) -> ImportanceTracker:
        if self._by_when["forward"]:
            for unit in self.units:
                unit.recorder = self._on_forward
        return self

    def __exit__(self, *exc) -> None:
        for unit in self.units:
            unit.recorder = None
        self._pending.clear()

    def before_forward(self, attention_mask: torch.Tensor | None) -> None:
        self._token_mask = None if attention_mask is None else attention_mask.bool()

    def _on_forward(self, unit: Unit, delta: torch.Tensor, base: torch.Tensor) -> None:
        if self._token_mask is not None and self._token_mask.shape == delta.shape[:2]:
            delta, base = delta[self._token_mask], base[self._token_mask]
        else:
            delta, base = delta.flatten(0, -2), base.flatten(0, -2)
        signals = Signals(weights=[], delta=delta, base=base)
        for crit in self._by_when["forward"]:
            self._pending[crit.name, unit.key].append(crit.measure(signals))

    @torch.no_grad()
    def after_backward(self) -> None:
        for (name, key), values in self._pending.items():
            self._acc[name, key].add(sum(values) / len(values))
        self._pending.clear()
        if not self._by_when["step"]:
            return
        for unit in self.units:
            weights = unit.trainable()
            if any(w.grad is None for w in weights):
                continue  # the unit took no part in this step (e.g. a prefix of a layer without heads)
            signals = Signals(weights=weights, grads=[w.grad for w in weights])
            for crit in self._by_when["step"]:
                self._acc[crit.name, unit.key].add(crit.measure(signals))

    @torch.no_grad()
    def scores(self) -> dict[str, dict[str, float]]:
        """criterion -> unit key -> accumulated score (higher = more important)."""
        out: dict[str, dict[str, float]] = {}
        for crit in self.criteria:
            if crit.when == "end":
                out[crit.name] = {u.key: crit.measure(Signals(weights=u.trainable())) for u in self.units}
            else:
                out[crit.name] = {u.key: self._acc[crit.name, u.key].value for u in self.units}
        return out
