"""Per-layer prefix tuning (Li & Liang 2021). Not in PrunePEFT's space: its criteria are Light-PEFT's importance
ratio and the Taylor score in every block."""

from ..registry import ModuleType, register

PREFIX = register(ModuleType(
    name="prefix",
    unit="pruning.modules.prefix.unit:PrefixUnit",
    criteria=(("importance_ratio", "taylor"),) * 4,
    prunepeft=(("importance_ratio", "taylor"),) * 4,
    cell=lambda d: f"p={d['length']}",
))
