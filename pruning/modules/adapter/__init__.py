"""Serial bottleneck adapter after the FFN (Pfeiffer et al. 2020)."""

from ..registry import ModuleType, register

ADAPTER = register(ModuleType(
    name="adapter",
    unit="pruning.modules.adapter.unit:AdapterUnit",
    criteria=(("activation", "weight", "taylor"), ("taylor", "weight"), ("weight", "taylor"), ("taylor",)),
    prunepeft=(("activation", "weight", "taylor", "zeros"), ("taylor", "weight"), ("weight", "taylor"), ("taylor",)),
    cell=lambda d: f"d={d['size']}",
))
