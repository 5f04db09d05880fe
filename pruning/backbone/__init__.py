"""Light-PEFT's speed mode: learn masks on attention heads and FFN neurons during the first search rounds,
physically remove the least important ones (and whole layers left empty), and prune LoRA ranks."""

from __future__ import annotations

from .masks import BackboneMasks
from .plan import Planner, plan_pruning
from .ranks import RankTracker, choose_ranks
from .structural import apply_backbone_record, prune_layer

__all__ = ["BackboneMasks", "Planner", "RankTracker", "apply_backbone_record", "choose_ranks", "plan_pruning",
           "prune_layer"]
