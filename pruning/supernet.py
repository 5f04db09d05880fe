"""The supernet: a frozen backbone holding PEFT units (type x layer) that pruning removes one by one."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .arch import ArchitectureMap, architecture_of, head_parameters, layers_of
from .modules import UNIT_TYPES, Unit, inject_lora, unit_key
from .modules.prefix import ATTENTION


def all_unit_keys(num_layers: int, types: Iterable[str]) -> list[str]:
    return [unit_key(kind, layer) for layer in range(num_layers) for kind in types]


def parse_unit_key(key: str) -> tuple[str, int]:
    kind, _, layer = key.partition(".")
    if kind not in UNIT_TYPES or not layer.isdigit():
        raise ValueError(f"not a unit key: {key!r} (expected '<type>.<layer>', type one of {list(UNIT_TYPES)})")
    return kind, int(layer)


class Supernet(nn.Module):
    """`model` with a unit per requested key (default: every type in every layer). Only the units and the task
    head train; the backbone is frozen."""

    def __init__(self, model: nn.Module, space, units: Iterable[str] | None = None,
                 lora_ranks: dict[str, int] | None = None):
        super().__init__()
        self.arch: ArchitectureMap = architecture_of(model)
        self.space = space
        self.num_layers = len(layers_of(model, self.arch))
        model.set_attn_implementation(ATTENTION)
        model.requires_grad_(False)
        self.model = model
        keys = all_unit_keys(self.num_layers, space.types) if units is None else list(units)
        wanted = [parse_unit_key(k) for k in keys]
        for kind, layer in wanted:
            if layer >= self.num_layers:
                raise ValueError(f"unit {unit_key(kind, layer)} is beyond the model's {self.num_layers} layers")

        built: dict[str, Unit] = {}
        lora_layers = [layer for kind, layer in wanted if kind == "lora"]
        for layer, unit in inject_lora(model, self.arch, lora_layers, space, lora_ranks).items():
            built[unit.key] = unit
        for kind, layer in wanted:
            if kind != "lora":
                built[unit_key(kind, layer)] = UNIT_TYPES[kind].build(model, self.arch, layer, space)
        self.units = nn.ModuleDict({_name(k): built[k] for k in sorted(built, key=_order)})
        self._handles: list = []
        self.install()
        for param in self.trainable_parameters():
            param.requires_grad_(True)

    # --- structure -------------------------------------------------------------------------------------------

    def install(self) -> None:
        """(Re)hook every unit into the backbone; needed after any module of the backbone is swapped."""
        for handle in self._handles:
            handle.remove()
        self._handles = [h for unit in self.units.values() for h in unit.install(self.model, self.arch)]

    def remove(self, keys: Iterable[str]) -> None:
        for key in keys:
            unit = self.units[_name(key)]
            unit.uninstall(self.model, self.arch)
            del self.units[_name(key)]
        self.install()

    def unit(self, key: str) -> Unit:
        return self.units[_name(key)]

    def unit_keys(self) -> list[str]:
        return [unit.key for unit in self.units.values()]

    # --- parameters ------------------------------------------------------------------------------------------

    def unit_params(self) -> dict[str, int]:
        return {unit.key: unit.num_params() for unit in self.units.values()}

    def peft_params(self) -> int:
        return sum(self.unit_params().values())

    def head_parameters(self) -> list[nn.Parameter]:
        return head_parameters(self.model, self.arch)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for unit in self.units.values() for p in unit.trainable()] + self.head_parameters()
        return params + self.extra_trainable()

    def extra_trainable(self) -> list[nn.Parameter]:
        """Parameters other features train alongside the units (the backbone masks)."""
        return []

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Every tensor that training changed, by its name in this module: what export and checkpoints save."""
        wanted = {id(p) for p in self.trainable_parameters()}
        return {name: p.detach() for name, p in self.named_parameters() if id(p) in wanted}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        missing = sorted(set(self.trained_state()) - set(state))
        if missing:
            raise ValueError(f"saved state lacks {len(missing)} tensors, e.g. {missing[0]}")
        with torch.no_grad():
            for name, tensor in state.items():
                if name not in params:
                    raise ValueError(f"saved tensor {name} has no place in this model")
                if params[name].shape != tensor.shape:
                    raise ValueError(f"saved tensor {name} has shape {tuple(tensor.shape)}, "
                                     f"the model expects {tuple(params[name].shape)}")
                params[name].copy_(tensor)

    def forward(self, **batch) -> torch.Tensor:
        return self.model(**batch).logits


def _name(key: str) -> str:
    return key.replace(".", "_")  # ModuleDict keys cannot hold dots


def _order(key: str) -> tuple[int, int]:
    kind, layer = parse_unit_key(key)
    return layer, list(UNIT_TYPES).index(kind)
