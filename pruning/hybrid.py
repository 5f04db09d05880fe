"""The hybrid policy (PrunePEFT): units are partitioned by (module type x depth block), each partition is scored
by its own criteria, and the scores are fused into one importance per unit that compares across partitions and
module types.

Fusion. PrunePEFT's code max-normalises each criterion within a partition, weights it by its position r in the
partition's list (w_r = 5 / (1 + e^(r - 3))) and takes a softmax within the partition. Within-partition
normalisation makes a unit alone in its partition (common: a 6-layer model cut at 20/50/80% has partitions
{0,1}, {2}, {3,4}, {5}) score the same whatever its criteria say, so the search decided by unit size. Here a
criterion's score becomes the unit's percentile among *all units of its type* (every depth block), the
partition's criteria are blended with the same rank weights, and each type is scaled to its measured worth
(calibration.py: the validation-loss increase when one of its units is switched off). So a unit is ranked
against its whole type by the criteria its block trusts, and types are weighed by what they do for the loss.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import numpy as np

from .calibration import sample_per_type, type_values
from .data.metrics import average_ranks, spearman
from .modules import MODULE_TYPES

Partition = tuple[str, int]  # (module type, depth block)
Assignment = dict[str, list[list[str]]]  # module type -> per block -> criteria, most trusted first


def default_assignment() -> Assignment:
    """The criteria per depth block of every registered type (each type's `criteria`). For LoRA and adapters it is
    PrunePEFT's released table (its warm-up switched off) without the two criteria that carry no information in
    a low-fidelity search: Adam moves every weight by about the learning rate per step, so after a few steps no
    LoRA or adapter weight is exactly 0 or below 1e-6; "zeros" and "threshold" score every unit 1.0, and a
    partition judged by them alone is pruned by tie-breaking. The first-order Taylor score and Light-PEFT's
    importance ratio take their places."""
    return {name: [list(names) for names in t.criteria] for name, t in MODULE_TYPES.items()}


def prunepeft_assignment() -> Assignment:
    """PrunePEFT's released table as is (a type it does not have keeps its default)."""
    return {name: [list(names) for names in (t.prunepeft or t.criteria)] for name, t in MODULE_TYPES.items()}


DEFAULT_ASSIGNMENT, PRUNEPEFT_ASSIGNMENT = default_assignment(), prunepeft_assignment()  # of the built-in types
FALLBACK_CRITERION = "taylor"  # the first-order loss change: meaningful for any module type and depth



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
         assignment: Assignment, type_value: dict[str, float] | None = None) -> dict[str, float]:
    """One importance per unit: the rank-weighted blend of its partition's criteria, each as the unit's
    percentile within its module type, rescaled so that each type's mean is `type_value[type]` (default 1)."""
    by_type: dict[str, list[str]] = {}
    for (kind, _), keys in partitions.items():
        by_type.setdefault(kind, []).extend(keys)
    percentile: dict[tuple[str, str], dict[str, float]] = {}  # (criterion, type) -> unit -> (0, 1]

    def percentiles(name: str, kind: str) -> dict[str, float]:
        if (name, kind) not in percentile:
            keys = by_type[kind]
            ranks = average_ranks(np.array([scores[name][k] for k in keys], dtype=float))
            percentile[name, kind] = dict(zip(keys, (ranks / len(keys)).tolist(), strict=True))
        return percentile[name, kind]

    blended: dict[str, float] = {}
    for (kind, block), keys in partitions.items():
        names = assignment[kind][block]
        weights = [rank_weight(position) for position in range(len(names))]
        for key in keys:
            blended[key] = sum(w * percentiles(name, kind)[key] for w, name in zip(weights, names, strict=True)
                               ) / sum(weights)
    fused: dict[str, float] = {}
    for kind, keys in by_type.items():
        mean = sum(blended[k] for k in keys) / len(keys)
        value = 1.0 if type_value is None else type_value[kind]
        fused.update({k: blended[k] / mean * value for k in keys})
    return fused


def assign_from_ablation(scores: dict[str, dict[str, float]], ablation: dict[str, float],
                         partitions: dict[Partition, list[str]], blocks: int, top: int = 2,
                         fallback: Assignment | None = None) -> tuple[Assignment, dict]:
    """The warm-up's decision: give each partition the criteria whose ranking of its units agrees best (Spearman)
    with the measured importance (`ablation`: loss increase when the unit is switched off). Criteria that do not
    agree positively are not used; a partition with no agreeing criterion (or a single unit) keeps `fallback`,
    or the Taylor score where the fallback table has another number of blocks."""

    fallback = default_assignment() if fallback is None else fallback

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

    if len(a) < 2:
        return 0.0
    return float(spearman(np.array(a), np.array(b)))


class ImportancePolicy:
    """How a round's criterion scores become one importance per unit; decided once per search from
    `policy.assignment` ("random": a random importance, the benchmark's baseline; otherwise the hybrid fusion of
    `assignment`'s criteria, with module types weighed by measured ablation unless `calibration_units` is 0)."""

    def __init__(self, policy, assignment: Assignment, seed: int):
        self.random = policy.assignment == "random"
        self.assignment = assignment
        self.block_cuts = tuple(policy.block_cuts)
        self.calibration_units = policy.calibration_units
        self.rng = random.Random(seed)
        self.criteria = set() if self.random else criteria_used(assignment)

    def importance(self, keys: list[str], num_layers: int, scores: dict[str, dict[str, float]],
                   ablate) -> tuple[dict[str, float], dict[str, float] | None]:
        """unit -> importance, and the measured worth of each type (None when not measured). `ablate(keys)`
        returns each listed unit's validation-loss increase when switched off, or None without a validation
        split."""
        if self.random:
            return {key: self.rng.random() for key in keys}, None
        # one type left: nothing to weigh against, and the measurement would be most of a round's cost
        several = len({key.partition(".")[0] for key in keys}) > 1
        measured = ablate(sample_per_type(keys, self.calibration_units)) if self.calibration_units and several \
            else None
        worth = type_values(measured) if measured else None
        return fuse(scores, partition_units(keys, num_layers, self.block_cuts), self.assignment, worth), worth

    def rank_scores(self, measured: dict[tuple[str, str], list[float]]) -> dict[tuple[str, str], list[float]]:
        """The importance of each rank component of each (LoRA unit, projection): as measured, or random."""
        if not self.random:
            return measured
        return {key: [self.rng.random() for _ in values] for key, values in measured.items()}
