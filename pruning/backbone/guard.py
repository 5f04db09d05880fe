"""Speed mode's quality guard: remove heads and neurons toward the target in stages, score each stage on the
validation split after a short recovery, and stop at the last stage whose metric stays within `max_drop` points of
its reference: the unpruned supernet trained the same steps (pipeline._prune_backbone). The dev set is never looked
at."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..data.metrics import metric_drop
from .plan import Plan


def stage_specs(speed, layer_params: int) -> list:
    """The backbone spec of each stage: the ratios (or the parameters removed toward `target_params`) scaled by
    1/stages, 2/stages, ... 1. Stages of one ranking are nested: each removes what the one before did, and more."""
    shares = [(i + 1) / speed.stages for i in range(speed.stages)]
    if speed.target_params is not None:
        return [dataclasses.replace(speed, target_params=round(layer_params - share * (layer_params
                                                                                       - speed.target_params)))
                for share in shares]
    return [dataclasses.replace(speed, head_ratio=speed.head_ratio * share, neuron_ratio=speed.neuron_ratio * share)
            for share in shares]


def run_guard(plans: list[Plan], layer_params: list[int],
              try_plan: Callable[[Plan], tuple[float, float, float | None]],
              metric_name: str, max_drop: float) -> tuple[int, list[dict], str]:
    """Try the plans in order; `try_plan(plan)` switches its heads and neurons off, trains the recovery steps and
    returns the validation metric, the stage's reference (the unpruned model's, trained alike) and the standard
    error of the drop between them (None where the metric has none). Returns the index of the last plan within
    `max_drop` (-1: none), one record per stage tried, and why the guard stopped."""
    accepted, stages = -1, []
    for index, plan in enumerate(plans):
        metric, reference, drop_se = try_plan(plan)
        drop = metric_drop(metric_name, reference, metric)
        stages.append({"stage": index + 1, "layer_params": layer_params[index], "metric": metric,
                       "reference": reference, "drop": drop, "drop_se": drop_se})
        if drop > max_drop:
            kept = f"stage {index}" if index else "every head and neuron"
            noise = "" if drop_se is None else f" (its standard error on these examples: {drop_se:.2f})"
            return accepted, stages, (f"stage {index + 1} of {len(plans)} fell {drop:.2f} points{noise} below the "
                                      f"{metric_name} of the unpruned supernet trained alike ({reference:.4f}), "
                                      f"more than max_drop {max_drop:g}: kept {kept}")
        accepted = index
    return accepted, stages, "reached the target within max_drop"
