"""LoRA (Hu et al. 2021) through peft: a unit per layer on the configured projections, shrinkable rank by rank.
It is the part of a result that stock peft loads."""

from ..registry import ModuleType, register

LORA = register(ModuleType(
    name="lora",
    unit="pruning.modules.lora.unit:LoraUnit",
    criteria=(("activation", "taylor"), ("taylor",), ("importance_ratio",), ("gradient",)),
    prunepeft=(("activation", "threshold"), ("threshold",), ("zeros",), ("gradient",)),
    cell=lambda d: "/".join(f"{role}{rank}" for role, rank in d["ranks"].items()),
))
