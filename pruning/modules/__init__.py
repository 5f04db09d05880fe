"""PEFT module types of the supernet, registered by name. Each (type, layer) is one pruning unit.

A unit type is one small file: a `Unit` subclass that knows how to build itself for a layer, how to hook itself
into the backbone, what its parameters are, and how to leave. A new type is one file plus a line in UNIT_TYPES.
"""

from .adapter import AdapterUnit
from .base import Unit, unit_key
from .lora import LoraUnit, inject_lora
from .prefix import PrefixUnit

UNIT_TYPES: dict[str, type[Unit]] = {
    "lora": LoraUnit,
    "adapter": AdapterUnit,
    "prefix": PrefixUnit,
}

__all__ = ["UNIT_TYPES", "AdapterUnit", "LoraUnit", "PrefixUnit", "Unit", "inject_lora", "unit_key"]
