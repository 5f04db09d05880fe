"""PEFT module types of the supernet, one folder each, registered by name (registry.py). Each (type, layer) is
one pruning unit. Importing this package loads no torch: the `Unit` classes live in each type's `unit.py`.

A new type is one folder: `<name>/__init__.py` registering a `ModuleType`, and `<name>/unit.py` with its `Unit`
subclass (how it builds itself for a layer, hooks into the backbone, what its parameters are, how it leaves);
then an import line below. Options it takes go in a `SpaceSpec` field of the same name.
"""

# Registering the built-in types, in the order a layer lists them:
from . import lora, adapter, prefix  # noqa: F401, I001
from .registry import MODULE_TYPES, ModuleType, register, unit_key, unregister


__all__ = ["MODULE_TYPES", "ModuleType", "register", "unit_key", "unregister"]
