"""What a module type is worth against another, measured: the loss increase when one unit is switched off.

The criteria rank units of one type against each other (their raw scores are per-parameter means of quantities
that differ between a LoRA, an adapter and a prefix, so they cannot rank across types). What does compare across
types is the validation-loss increase when a unit is switched off: a loss, whatever the unit. The search
averages it over a few units of each type, and that mean is the type's importance per unit.
"""

from __future__ import annotations

FLOOR = 1e-6  # a type whose units do not help at all still gets an ordering, by its criteria


def unit_ablation(supernet, data, keys, batch_size: int, pad_id: int, device) -> dict[str, float]:
    """unit key -> (loss on `data` with that unit alone switched off) - (loss with every unit on)."""
    from .train import mean_loss  # torch: this module's other functions are plain Python

    reference = mean_loss(supernet, data, batch_size, pad_id, device)
    out = {}
    for key in keys:
        with supernet.unit(key).switched_off():
            out[key] = mean_loss(supernet, data, batch_size, pad_id, device) - reference
    return out


def sample_per_type(keys: list[str], per_type: int) -> list[str]:
    """Up to `per_type` units of each type, spread evenly over depth (keys are '<type>.<layer>')."""
    by_type: dict[str, list[str]] = {}
    for key in sorted(keys, key=lambda k: int(k.partition(".")[2])):
        by_type.setdefault(key.partition(".")[0], []).append(key)
    chosen = []
    for units in by_type.values():
        if len(units) <= per_type:
            chosen += units
        elif per_type == 1:
            chosen.append(units[len(units) // 2])  # the middle of the depth
        else:
            step = (len(units) - 1) / (per_type - 1)
            chosen += [units[round(i * step)] for i in range(per_type)]
    return chosen


def type_values(ablation: dict[str, float]) -> dict[str, float]:
    """Mean loss increase per unit of each type, floored at FLOOR (a type that does not help goes first)."""
    sums: dict[str, list[float]] = {}
    for key, value in ablation.items():
        sums.setdefault(key.partition(".")[0], []).append(value)
    return {kind: max(sum(values) / len(values), FLOOR) for kind, values in sums.items()}
