"""The hybrid policy (PrunePEFT): units are partitioned by (module type x depth block), each partition is scored
by its own criteria, and the per-partition scores are fused into one ranking.

Fusion follows the paper's Eq. 1 as its released code implements it: within a partition each assigned
criterion is max-normalised and weighted by its position r in the partition's list, w_r = 5 / (1 + e^(r - 3)),
and the weighted sum goes through a softmax over the partition's units. One change: the softmax output is
multiplied by the partition's size, so every partition has mean importance 1. Without it a partition of one unit
(common on a 6-layer model) gets probability 1 and is never pruned, and small partitions always win over big
ones regardless of their scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

# PrunePEFT's released code (its warm-up switched off): criteria per depth block [0-20%, 20-50%, 50-80%, 80-100%].
# Prefix is not in PrunePEFT's search space; Light-PEFT's importance ratio and the Taylor score are used there.
PRUNEPEFT_ASSIGNMENT: dict[str, list[list[str]]] = {
    "lora": [["activation", "threshold"], ["threshold"], ["zeros"], ["gradient"]],
    "adapter": [["activation", "weight", "taylor", "zeros"], ["taylor", "weight"], ["weight", "taylor"], ["taylor"]],
    "prefix": [["importance_ratio", "taylor"]] * 4,
}
# Ours: the same table without the two criteria that carry no information in a low-fidelity search. Adam moves
# every weight by about the learning rate per step, so after a few steps no LoRA or adapter weight is exactly 0
# or below 1e-6: "zeros" and "threshold" score every unit 1.0, and a partition judged by them alone is pruned by
# tie-breaking. They are replaced by the first-order Taylor score and Light-PEFT's importance ratio.
DEFAULT_ASSIGNMENT: dict[str, list[list[str]]] = {
    "lora": [["activation", "taylor"], ["taylor"], ["importance_ratio"], ["gradient"]],
    "adapter": [["activation", "weight", "taylor"], ["taylor", "weight"], ["weight", "taylor"], ["taylor"]],
    "prefix": [["importance_ratio", "taylor"]] * 4,
}
FALLBACK_CRITERION = "taylor"  # the first-order loss change: meaningful for any module type and depth

Partition = tuple[str, int]  # (module type, depth block)
Assignment = dict[str, list[list[str]]]  # module type -> per block -> criteria, most trusted first


def block_of(layer: int, num_layers: int, cuts: Iterable[float]) -> int:
    """Depth block of a layer: blocks are cut at the given fractions of depth (default 20/50/80%)."""
    return sum(layer / num_layers >= cut for cut in cuts)


def partition_units(unit_keys: Iterable[str], num_layers: int, cuts: Iterable[float]) -> dict[Partition, list[str]]:
    cuts = tuple(cuts)
    parts: dict[Partition, list[str]] = {}
    for key in unit_keys:
        kind, _, layer = key.partition(".")
        parts.setdefault((kind, block_of(int(layer), num_layers, cuts)), []).append(key)
    return parts


def uniform_assignment(criterion: str, types: Iterable[str], blocks: int) -> Assignment:
    return {kind: [[criterion] for _ in range(blocks)] for kind in types}


def criteria_used(assignment: Assignment) -> set[str]:
    return {name for per_block in assignment.values() for names in per_block for name in names}


def rank_weight(position: int) -> float:
    return 5.0 / (1.0 + math.exp(position - 3))


def fuse(scores: dict[str, dict[str, float]], partitions: dict[Partition, list[str]],
         assignment: Assignment) -> dict[str, float]:
    """One importance per unit, comparable across partitions (mean 1 within each partition)."""
    fused: dict[str, float] = {}
    for (kind, block), keys in partitions.items():
        z = np.zeros(len(keys))
        for position, name in enumerate(assignment[kind][block]):
            s = np.array([scores[name][k] for k in keys], dtype=float)
            top = np.abs(s).max()
            z += rank_weight(position) * (s / top if top > 0 else 0.0)
        p = np.exp(z - z.max())
        p = p / p.sum() * len(keys)
        fused.update(zip(keys, p.tolist(), strict=True))
    return fused


def assign_from_ablation(scores: dict[str, dict[str, float]], ablation: dict[str, float],
                         partitions: dict[Partition, list[str]], blocks: int, top: int = 2,
                         fallback: Assignment = DEFAULT_ASSIGNMENT) -> tuple[Assignment, dict]:
    """The warm-up's decision: give each partition the criteria whose ranking of its units agrees best (Spearman)
    with the measured importance (`ablation`: loss increase when the unit is switched off). Criteria that do not
    agree positively are not used; a partition with no agreeing criterion (or a single unit) keeps `fallback`,
    or the Taylor score where the fallback table has another number of blocks."""

    def fallback_for(kind: str) -> list[list[str]]:
        table = fallback.get(kind)
        if table is not None and len(table) == blocks:
            return [list(names) for names in table]
        return [[FALLBACK_CRITERION] for _ in range(blocks)]

    assignment: Assignment = {kind: fallback_for(kind) for kind in {k for k, _ in partitions}}
    report = {}
    for (kind, block), keys in partitions.items():
        truth = [ablation[k] for k in keys]
        agreement = {name: _spearman([per_unit[k] for k in keys], truth) for name, per_unit in scores.items()}
        chosen = [n for n, a in sorted(agreement.items(), key=lambda x: -x[1]) if a > 0][:top]
        if chosen and len(keys) > 1:
            assignment[kind][block] = chosen
        report[f"{kind}.{block}"] = {"agreement": agreement, "chosen": assignment[kind][block]}
    return assignment, report


def _spearman(a: list[float], b: list[float]) -> float:
    from .data.metrics import spearman

    if len(a) < 2:
        return 0.0
    return float(spearman(np.array(a), np.array(b)))
