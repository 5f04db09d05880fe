"""LoRA rank pruning (Light-PEFT): a first-order Taylor importance per rank, accumulated over training steps,
then the globally least important ranks are removed.

For rank component r of a LoRA module with factors A (r x in) and B (out x r), the first-order change of the loss
when the component is removed is sum_j (A * dL/dA)[r, j], which equals sum_i (B * dL/dB)[i, r] (both are
<dL/dW, b_r a_r^T>). Its absolute value per step, averaged over steps, is the importance. Light-PEFT takes the
mean over j and i instead, which divides the same quantity by the module's widths: harmless when every module has
the same shape, but it ranks an FFN projection's components 1.6x too low against attention ones (1/in + 1/out),
and the rank-grain search compares components across all projections."""

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
                value = (lora_a.weight * lora_a.weight.grad).sum(1).abs().float().cpu()
                key = (unit.key, role)
                self.total[key] = self.total.get(key, 0) + value
                self.steps[key] = self.steps.get(key, 0) + 1

    def importance(self) -> dict[tuple[str, str], torch.Tensor]:
        return {key: total / self.steps[key] for key, total in self.total.items()}

    def state(self) -> dict[str, torch.Tensor]:
        """What it accumulated, as tensors named '<unit>/<role>' (and '<unit>/<role>/steps'), for a checkpoint."""
        return {**{f"{unit}/{role}": total for (unit, role), total in self.total.items()},
                **{f"{unit}/{role}/steps": torch.tensor(n) for (unit, role), n in self.steps.items()}}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            if not name.endswith("/steps"):
                unit, role = name.split("/")
                self.total[unit, role] = tensor.clone()
                self.steps[unit, role] = int(state[f"{name}/steps"])


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
