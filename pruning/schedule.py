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


def rank_chunks(importance: dict[str, float], rank_scores: dict[tuple[str, str], list[float]],
                params_per_rank: dict[tuple[str, str], int], step: int) -> tuple[dict[str, float], dict[str, int]]:
    """Removal candidates at rank granularity. Each LoRA unit's importance is shared among chunks of `step`
    rank components of its projections (least important first), in proportion to the chunks' rank importance,
    so a chunk competes per parameter with whole units. Candidate keys are '<unit>/<role>/<chunk index>'."""
    totals: dict[str, float] = {}
    for (unit, _), scores in rank_scores.items():
        totals[unit] = totals.get(unit, 0.0) + sum(scores)
    components = {unit: sum(len(s) for (u, _), s in rank_scores.items() if u == unit) for unit in totals}
    chunk_importance, chunk_params = {}, {}
    for (unit, role), scores in rank_scores.items():
        ordered = sorted(scores)
        for index, start in enumerate(range(0, len(ordered), step)):
            chunk = ordered[start:start + step]
            share = sum(chunk) / totals[unit] if totals[unit] > 0 else len(chunk) / components[unit]
            key = f"{unit}/{role}/{index}"
            chunk_importance[key] = importance[unit] * share
            chunk_params[key] = len(chunk) * params_per_rank[unit, role]
    return chunk_importance, chunk_params


def kept_ranks(removed_chunks: list[str], rank_scores: dict[tuple[str, str], list[float]],
               step: int) -> dict[tuple[str, str], list[int]]:
    """The rank components each shrunk projection keeps once `removed_chunks` (rank_chunks' keys) go: the
    least important `step` x (chunks removed) of them leave."""
    counts: dict[tuple[str, str], int] = {}
    for key in removed_chunks:
        unit, role, _ = key.split("/")
        counts[unit, role] = counts.get((unit, role), 0) + 1
    kept = {}
    for (unit, role), count in counts.items():
        scores = rank_scores[unit, role]
        order = sorted(range(len(scores)), key=lambda r: (scores[r], r))
        kept[unit, role] = sorted(order[count * step:])
    return kept


def spread_ranks(per_rank: dict[str, int], budget: int, most: dict[str, int] | None = None,
                 tolerance: float = 0.02) -> dict[str, int]:
    """Ranks for LoRA on every projection at `budget` parameters: the uniform rank nearest the budget (at most
    `most`'s), then single projections one rank down (largest first, spread over depth) while above the budget,
    or up while more than `tolerance` below it. `per_rank`: module path -> parameters of one rank component.
    Rank 1 everywhere is the floor: the result can exceed a budget below that."""
    cap = most or {}
    rank = max(1, round(budget / sum(per_rank.values())))
    ranks = {path: min(rank, cap.get(path, rank)) for path in per_rank}
    # largest first; within a size, a golden-ratio stride through (layer, projection) order spreads the changes
    same_size = {path: i for size in set(per_rank.values())
                 for i, path in enumerate(sorted((p for p in per_rank if per_rank[p] == size), key=_depth_order))}
    order = sorted(per_rank, key=lambda path: (-per_rank[path], (same_size[path] * 0.618) % 1))

    def total() -> int:
        return sum(ranks[p] * per_rank[p] for p in ranks)

    for path in order:
        if total() <= budget:
            break
        if ranks[path] > 1:
            ranks[path] -= 1
    for path in order:
        if total() >= budget * (1 - tolerance):
            break
        if total() + per_rank[path] <= budget and ranks[path] < cap.get(path, ranks[path] + 1):
            ranks[path] += 1
    return ranks


def _depth_order(path: str) -> tuple[int, str]:
    return next(int(part) for part in path.split(".") if part.isdigit()), path
