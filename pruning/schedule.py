"""The budgeted schedule: how many parameters each round may keep, and which units to remove to get there."""

from __future__ import annotations


def round_targets(start: int, budget: int, rounds: int) -> list[int]:
    """Geometric steps from the supernet's size down to the budget: round r keeps start * (budget/start)^(r/R)
    parameters, so early rounds (noisy scores) remove few units in absolute terms relative to what remains."""
    if budget >= start:
        return [start] * rounds
    ratio = budget / start
    return [int(start * ratio ** (r / rounds)) for r in range(1, rounds)] + [budget]


def choose_removals(importance: dict[str, float], params: dict[str, int], target: int) -> list[str]:
    """Remove units in order of importance per parameter (cost-aware: an adapter frees more than a prefix, so it
    must be proportionally more important to stay) until the kept parameters are at most `target`. Removal
    stops as soon as the target is met: nothing is removed beyond need."""
    current = sum(params.values())
    mean_size = current / max(len(params), 1)
    order = sorted(params, key=lambda key: (importance[key] * mean_size / params[key], key))
    removed = []
    for key in order:
        if current <= target:
            break
        removed.append(key)
        current -= params[key]
    return removed
