"""LoRA rank pruning (Light-PEFT): a first-order Taylor importance per rank, accumulated over training steps,
then the globally least important ranks are removed. For rank r of a LoRA module with factors A (r x in) and
B (out x r): importance_r = |mean_j (A * dL/dA)[r, j]| + |mean_i (B * dL/dB)[i, r]|."""

from __future__ import annotations

import torch


class RankTracker:
    """Accumulates the per-rank importance of every LoRA module of `units` (LoraUnit) over steps."""

    def __init__(self, units):
        self.units = [u for u in units if u.kind == "lora"]
        self.total: dict[tuple[str, str], torch.Tensor] = {}
        self.steps: dict[tuple[str, str], int] = {}

    def before_forward(self, attention_mask) -> None:
        pass

    @torch.no_grad()
    def after_backward(self) -> None:
        for unit in self.units:
            for role in unit.targets:
                lora_a, lora_b = unit.ab(role)
                if lora_a.weight.grad is None or lora_b.weight.grad is None:
                    continue
                value = ((lora_a.weight * lora_a.weight.grad).mean(1).abs()
                         + (lora_b.weight * lora_b.weight.grad).mean(0).abs()).float().cpu()
                key = (unit.key, role)
                self.total[key] = self.total.get(key, 0) + value
                self.steps[key] = self.steps.get(key, 0) + 1

    def importance(self) -> dict[tuple[str, str], torch.Tensor]:
        return {key: total / self.steps[key] for key, total in self.total.items()}


def choose_ranks(importance: dict[tuple[str, str], torch.Tensor], ratio: float) -> dict[tuple[str, str], list[int]]:
    """Ranks to keep per (unit, role): the `ratio` least important ranks of all modules are removed, except that
    every module keeps at least its most important rank (peft has no rank-0 LoRA; removing a module whole is
    the unit pruning's job)."""
    entries = [(float(v), key, r) for key, values in importance.items() for r, v in enumerate(values.tolist())]
    budget = int(len(entries) * ratio)
    kept = {key: set(range(len(values))) for key, values in importance.items()}
    for _value, key, rank in sorted(entries):
        if budget == 0:
            break
        if len(kept[key]) > 1:
            kept[key].discard(rank)
            budget -= 1
    return {key: sorted(ranks) for key, ranks in kept.items()}
