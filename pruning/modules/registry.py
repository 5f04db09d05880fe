"""The registry of PEFT module types. Plain Python (no torch): the spec, the hybrid tables, the result formatters
and the service read it without loading a model.

A module type is one folder here, as a peft tuner is: `__init__.py` registers a `ModuleType` (its name, default
criteria per depth block, how its sizes read in a table) and `unit.py` holds its `Unit` (torch), imported when a
supernet first builds one. The supernet, the hybrid policy, export and the renderers iterate this registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

Criteria = tuple[tuple[str, ...], ...]  # per depth block (0-20, 20-50, 50-80, 80-100% of depth), most trusted first


@dataclass(frozen=True)
class ModuleType:
    name: str  # the unit keys' prefix ("lora.3") and the SpaceSpec field holding its options, if it has any
    unit: str  # "package.module:Class" of its Unit subclass
    criteria: Criteria  # the default assignment's criteria for this type
    cell: Callable[[dict], str]  # its Unit.describe() as a short table cell
    prunepeft: Criteria | None = None  # PrunePEFT's released table, where that has this type

    def unit_class(self) -> type:
        module, _, name = self.unit.partition(":")
        return getattr(importlib.import_module(module), name)


MODULE_TYPES: dict[str, ModuleType] = {}


def unit_key(kind: str, layer: int) -> str:
    return f"{kind}.{layer}"


def register(module_type: ModuleType) -> ModuleType:
    if module_type.name in MODULE_TYPES and MODULE_TYPES[module_type.name] != module_type:
        raise ValueError(f"module type {module_type.name!r} is already registered")
    if "." in module_type.name or "/" in module_type.name:
        raise ValueError(f"module type names cannot hold '.' or '/': {module_type.name!r}")
    MODULE_TYPES[module_type.name] = module_type
    return module_type


def unregister(name: str) -> None:
    MODULE_TYPES.pop(name)
