"""The supernet: a frozen backbone holding PEFT units (type x layer) that pruning removes one by one."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .arch import (
    ArchitectureMap,
    architecture_of,
    backbone_parameter_count,
    head_parameters,
    layer_parameter_count,
    layers_of,
    projection,
)
from .backbone import BackboneMasks, apply_backbone_record, prune_layer
from .backbone.structural import kv_heads
from .modules import MODULE_TYPES, unit_key
from .modules.base import Unit


def all_unit_keys(num_layers: int, types: Iterable[str]) -> list[str]:
    return [unit_key(kind, layer) for layer in range(num_layers) for kind in types]


def parse_unit_key(key: str) -> tuple[str, int]:
    kind, _, layer = key.partition(".")
    if kind not in MODULE_TYPES or not layer.isdigit():
        raise ValueError(f"not a unit key: {key!r} (expected '<type>.<layer>', type one of {list(MODULE_TYPES)})")
    return kind, int(layer)


class Supernet(nn.Module):
    """`model` with a unit per requested key (default: every type in every layer). Only the units and the task
    head train (and the backbone masks, with `masks`); the backbone is frozen. `backbone` is the record of an
    earlier pruning (with the folded `scales`), applied to the model first."""

    def __init__(self, model: nn.Module, space, units: Iterable[str] | None = None,
                 lora_ranks: dict[str, int] | None = None, masks: bool = False, backbone: dict | None = None,
                 scales: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.arch: ArchitectureMap = architecture_of(model)
        self.space = space
        self.num_layers = len(layers_of(model, self.arch))
        model.requires_grad_(False)
        if backbone is not None:  # rebuild a pruned backbone from its record (before LoRA wraps anything)
            apply_backbone_record(model, backbone, scales)
        self.model = model
        # Frozen tensors the base checkpoint lacks (e.g. a pooler): random at every load, so they are saved with
        # the trained ones, or a reloaded result would not compute what was measured.
        head = {id(p) for p in head_parameters(model, self.arch)}
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        self.initialised = [name for name in getattr(model, "newly_initialised", ())
                            if name in tensors and id(tensors[name]) not in head]
        keys = all_unit_keys(self.num_layers, space.types) if units is None else list(units)
        wanted = [parse_unit_key(k) for k in keys]
        for kind, layer in wanted:
            if layer >= self.num_layers:
                raise ValueError(f"unit {unit_key(kind, layer)} is beyond the model's {self.num_layers} layers")

        built: dict[str, Unit] = {}
        for kind in dict.fromkeys([*space.types, *(kind for kind, _ in wanted)]):
            unit_class = MODULE_TYPES[kind].unit_class()
            unit_class.prepare_model(model)
            layers = [layer for k, layer in wanted if k == kind]
            for unit in unit_class.build_layers(model, self.arch, layers, space, lora_ranks).values():
                built[unit.key] = unit
        self.units = nn.ModuleDict({_name(k): built[k] for k in sorted(built, key=_order)})
        # Light-PEFT speed mode: masks while they learn; afterwards the record of what was pruned, and the
        # survivors' mask values that were folded into the backbone (saved with the weights, needed to rebuild).
        self.masks = BackboneMasks(model, self.arch) if masks else None
        self.backbone_record = backbone
        self.backbone_scales = {k: v for k, v in (scales or {}).items() if k.startswith("backbone.")}
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
        if self.masks is not None:
            self._handles += self.masks.install(self.model, self.arch)

    def remove(self, keys: Iterable[str]) -> None:
        for key in keys:
            unit = self.units[_name(key)]
            unit.uninstall(self.model, self.arch)
            del self.units[_name(key)]
        self.install()

    def prune_backbone(self, heads: dict[int, list[int]], neurons: dict[int, list[int]]) -> dict:
        """Physically remove the heads and neurons not kept, folding the kept ones' mask values into the
        weights; prefixes follow their layer's heads; the masks are then dropped. Returns the record."""
        layers_before = layer_parameter_count(self.model, self.arch)
        backbone_before = backbone_parameter_count(self.model, self.arch)
        pruned_heads = {layer for layer in range(self.num_layers) if len(heads[layer]) != self._query_heads(layer)}
        for layer in range(self.num_layers):
            head_scale = neuron_scale = None
            if self.masks is not None:
                head_scale = self.masks.heads[layer].detach()[heads[layer]].clone()
                neuron_scale = self.masks.neurons[layer].detach()[neurons[layer]].clone()
                self.backbone_scales[f"backbone.head_scale.{layer}"] = head_scale
                self.backbone_scales[f"backbone.neuron_scale.{layer}"] = neuron_scale
            prune_layer(self.model, self.arch, layer, heads[layer], neurons[layer], head_scale, neuron_scale)
        per_kv = self.arch.heads_per_kv(self.model.config)
        for unit in list(self.units.values()):
            if unit.layer in pruned_heads:
                unit.follow_heads(kv_heads(heads[unit.layer], per_kv))
        self.masks = None
        self.remove([u.key for u in self.units.values() if u.num_params() == 0])  # prefixes of headless layers
        self.backbone_record = {
            "heads": {str(layer): kept for layer, kept in heads.items()},
            "neurons": {str(layer): kept for layer, kept in neurons.items()},
            "removed_layers": [layer for layer in range(self.num_layers) if not heads[layer] and not neurons[layer]],
            "layer_params_before": layers_before,
            "layer_params_after": layer_parameter_count(self.model, self.arch),
            "backbone_params_before": backbone_before,
            "backbone_params_after": backbone_parameter_count(self.model, self.arch),
        }
        return self.backbone_record

    def _query_heads(self, layer: int) -> int:
        return projection(self.model, self.arch, layer, self.arch.q).out_features // self.arch.head_dim(self.model.config)

    def prune_ranks(self, kept: dict[tuple[str, str], list[int]]) -> None:
        """Keep the listed rank components of each (LoRA unit, projection); a projection left with none is
        unwrapped, a unit left with no projection removed. Hooks are re-installed on the new modules."""
        for (key, role), ranks in kept.items():
            if _name(key) not in self.units:
                continue
            if ranks:
                self.unit(key).keep_ranks(role, ranks)
            else:
                self.unit(key).drop_role(self.model, role)
        empty = [u.key for u in self.units.values() if u.kind == "lora" and not u.targets]
        for key in empty:
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

    def lora_ranks(self) -> dict[str, int]:
        """Rank per LoRA-wrapped module path (peft's rank_pattern keys)."""
        return {path: unit.ranks()[role] for unit in self.units.values() if unit.kind == "lora"
                for role, path in unit.paths.items()}

    def head_parameters(self) -> list[nn.Parameter]:
        return head_parameters(self.model, self.arch)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for unit in self.units.values() for p in unit.trainable()] + self.head_parameters()
        return params + self.extra_trainable()

    def param_groups(self, lr: float, mask_lr: float | None = None) -> list[dict]:
        """Optimizer groups with their learning rates: units at `lr` x their lr_scale (prefixes learn faster),
        the head at `lr`, the backbone masks at `mask_lr`."""
        scaled: dict[float, list[nn.Parameter]] = {}
        for unit in self.units.values():
            if unit.lr_scale() != 1.0:
                scaled.setdefault(unit.lr_scale(), []).extend(unit.trainable())
        masks = self.extra_trainable()
        apart = {id(p) for p in [*masks, *(p for params in scaled.values() for p in params)]}
        groups = [{"params": [p for p in self.trainable_parameters() if id(p) not in apart], "lr": lr}]
        groups += [{"params": params, "lr": lr * scale} for scale, params in scaled.items()]
        if masks:
            groups.append({"params": masks, "lr": lr if mask_lr is None else mask_lr})
        return groups

    def extra_trainable(self) -> list[nn.Parameter]:
        """Parameters trained alongside the units: the backbone masks while they learn."""
        return [] if self.masks is None else list(self.masks.parameters())

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Every tensor that training changed, by its name in this module, plus the mask values folded into a
        pruned backbone: what export and checkpoints save."""
        wanted = {id(p) for p in self.trainable_parameters()}
        state = {name: p.detach() for name, p in self.named_parameters() if id(p) in wanted}
        return {**state, **self._initialised_tensors(), **self.backbone_scales}

    def _initialised_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
        return {f"model.{name}": tensors[name].detach() for name in self.initialised}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """The inverse of trained_state (the folded backbone scales are applied when the backbone is built)."""
        state = {k: v for k, v in state.items() if k not in self.backbone_scales}
        params = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        missing = sorted(set(self.trained_state()) - set(self.backbone_scales) - set(state))
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

    def forward(self, scored: torch.Tensor | None = None, **batch) -> torch.Tensor:
        """The model's logits; with `scored` (a language model's batch x length mask: train.scored_positions),
        one row per scored position only, in row-major order: the output layer sees only their hidden states."""
        if scored is None:
            return self.model(**batch).logits
        head = self.model.get_output_embeddings()
        if head is None:
            return self.model(**batch).logits[scored]
        handle = head.register_forward_pre_hook(lambda _module, args: (args[0][scored], *args[1:]))
        try:
            return self.model(**batch).logits
        finally:
            handle.remove()

    def generate(self, **kwargs) -> torch.Tensor:
        """A language model's `generate` (a completion task), with every unit in place."""
        return self.model.generate(**kwargs)


def _name(key: str) -> str:
    return key.replace(".", "_")  # ModuleDict keys cannot hold dots


def _order(key: str) -> tuple[int, int]:
    kind, layer = parse_unit_key(key)
    return layer, list(MODULE_TYPES).index(kind)
