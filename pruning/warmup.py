"""The optional warm-up (PrunePEFT): derive the criterion per partition on a small label-preserving subset.

The paper counts how often each criterion's pruning decisions match across a few rounds. We make "best matching"
measurable: train the supernet briefly on the subset while tracking every criterion, then measure each unit's
true importance on that subset (the loss increase when the unit alone is switched off), and give each partition
the criteria whose ranking agrees best with it (hybrid.assign_from_ablation).
"""

from __future__ import annotations

import random
from collections import defaultdict

from .calibration import unit_ablation
from .criteria import CRITERIA
from .hybrid import Assignment, assign_from_ablation, partition_units
from .importance import ImportanceTracker
from .train import Encoded, shuffled_batches, train


def label_preserving_subset(data: Encoded, size: int, seed: int) -> Encoded:
    """`size` examples with the label proportions of `data` (plain random sample for regression and
    completion)."""
    rng = random.Random(seed)
    if size >= len(data):
        return data
    if data.problem != "classification":
        return data.subset(sorted(rng.sample(range(len(data)), size)))
    by_label: dict[float, list[int]] = defaultdict(list)
    for i, label in enumerate(data.labels):
        by_label[label].append(i)
    chosen = []
    for indices in by_label.values():
        share = max(1, round(size * len(indices) / len(data)))
        chosen += rng.sample(indices, min(share, len(indices)))
    return data.subset(sorted(chosen))


def derive_assignment(supernet, train_data: Encoded, spec, pad_id: int, device, blocks: int, *,
                      on_step=None, should_stop=None) -> tuple[Assignment, dict]:
    policy = spec.policy
    subset = label_preserving_subset(train_data, policy.warmup_examples, spec.seed)
    tracker = ImportanceTracker(supernet.units.values(), CRITERIA, policy.accumulate, policy.ema_beta)
    with tracker:
        train(supernet, supernet.param_groups(spec.schedule.lr),
              shuffled_batches(subset, spec.train.batch_size, spec.seed, pad_id, device,
                               by_length=spec.schedule.batch_by_length),
              steps=policy.warmup_steps, lr=spec.schedule.lr, problem=subset.problem, device=device,
              warmup_ratio=0.1, decay=False, trackers=[tracker], on_step=on_step, should_stop=should_stop)
    scores = tracker.scores()
    ablation = unit_ablation(supernet, subset, supernet.unit_keys(), spec.train.eval_batch_size, pad_id, device,
                             spec.train.eval_tokens(device.type))
    parts = partition_units(supernet.unit_keys(), supernet.num_layers, policy.block_cuts)
    assignment, report = assign_from_ablation(scores, ablation, parts, blocks)
    return assignment, {"examples": len(subset), "steps": policy.warmup_steps, "ablation": ablation,
                        "partitions": report}
