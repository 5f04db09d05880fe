"""LoRA (Hu et al. 2021) through peft: one unit per layer covers the configured projections of that layer
(default q and v), so removing the unit unwraps those projections back to their frozen base layers."""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ..base import Unit

ADAPTER = "default"  # peft's adapter name; the supernet only ever has one


def lora_paths(arch, layer: int, roles: tuple[str, ...]) -> dict[str, str]:
    """Module path per target, keyed '<role>' (or '<role>.<i>' for a role with several projections)."""
    paths = {}
    for role in roles:
        role_paths = arch.role_paths(role)
        for i, rel in enumerate(role_paths):
            paths[role if len(role_paths) == 1 else f"{role}.{i}"] = f"{arch.layers}.{layer}.{rel}"
    return paths


def inject_lora(model: nn.Module, arch, layers: list[int], spec, ranks: dict[str, int] | None = None
                ) -> dict[int, LoraUnit]:
    """Wrap the target projections of `layers` with peft LoRA layers; returns a unit per layer.

    `ranks` (module path -> rank) overrides the rank per projection, e.g. after rank pruning."""
    lora = spec.lora
    targets = {layer: lora_paths(arch, layer, lora.targets) for layer in layers}
    if ranks is not None:  # a rebuilt configuration: projections whose rank went to 0 are not wrapped
        targets = {layer: {role: p for role, p in paths.items() if p in ranks} for layer, paths in targets.items()}
    all_paths = [p for paths in targets.values() for p in paths.values()]
    if not all_paths:
        return {}
    ranks = ranks or {}
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=all_paths,
        # A pruned rank keeps the scaling it trained with: alpha/r stays alpha_0/r_0.
        rank_pattern={p: r for p, r in ranks.items() if p in all_paths},
        alpha_pattern={p: lora.alpha * r / lora.rank for p, r in ranks.items() if p in all_paths},
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    return {layer: LoraUnit(layer, {role: model.get_submodule(p) for role, p in paths.items()},
                            dict(paths), lora.alpha, lora.rank)
            for layer, paths in targets.items()}


class LoraUnit(Unit):
    kind = "lora"

    def __init__(self, layer: int, targets: dict[str, LoraLayer], paths: dict[str, str], alpha: float,
                 rank: int):
        super().__init__(layer)
        # The peft layers live in the backbone; a plain dict keeps them out of this module's parameters.
        self.__dict__["targets"] = targets
        self.paths = paths
        self.alpha = alpha
        self.initial_rank = rank
        self._scaling: dict[str, float] = {}  # while switched off

    @classmethod
    def build(cls, model, arch, layer: int, spec) -> LoraUnit:
        return inject_lora(model, arch, [layer], spec)[layer]

    @classmethod
    def build_layers(cls, model, arch, layers: list[int], space, lora_ranks=None) -> dict[int, LoraUnit]:
        return inject_lora(model, arch, layers, space, lora_ranks)  # one peft injection for all layers

    def ab(self, role: str) -> tuple[nn.Linear, nn.Linear]:
        target = self.targets[role]
        return target.lora_A[ADAPTER], target.lora_B[ADAPTER]

    def trainable(self) -> list[nn.Parameter]:
        return [lin.weight for role in self.targets for lin in self.ab(role)]

    def ranks(self) -> dict[str, int]:
        return {role: target.r[ADAPTER] for role, target in self.targets.items()}

    def set_enabled(self, enabled: bool) -> None:
        # peft has no per-module switch; a zero scaling removes the LoRA term exactly.
        if enabled == self.enabled:
            return
        for role, target in self.targets.items():
            if enabled:
                target.scaling[ADAPTER] = self._scaling.pop(role)
            else:
                self._scaling[role] = target.scaling[ADAPTER]
                target.scaling[ADAPTER] = 0.0
        self.enabled = enabled

    def keep_ranks(self, role: str, ranks: list[int]) -> None:
        """Rank pruning: keep rows `ranks` of A and the matching columns of B; the scaling stays as trained."""
        from ...backbone.structural import _sliced_linear

        target = self.targets[role]
        lora_a, lora_b = self.ab(role)
        index = torch.tensor(ranks, dtype=torch.long, device=lora_a.weight.device)
        target.lora_A[ADAPTER] = _sliced_linear(lora_a, out_index=index)
        target.lora_B[ADAPTER] = _sliced_linear(lora_b, in_index=index)
        target.r[ADAPTER] = len(ranks)

    def drop_role(self, model, role: str) -> None:
        """The rank of one projection went to 0: unwrap it; the unit lives on in its other projections."""
        model.set_submodule(self.paths.pop(role), self.targets.pop(role).get_base_layer())

    def params_per_rank(self, role: str) -> int:
        """Parameters one rank component of a projection holds: a row of A and a column of B."""
        lora_a, lora_b = self.ab(role)
        return lora_a.in_features + lora_b.out_features

    def reset_parameters(self) -> None:
        for target in self.targets.values():
            target.reset_lora_parameters(ADAPTER, init_lora_weights=True)

    def install(self, model, arch):
        handles = []
        for target in self.targets.values():
            base_out: dict[str, torch.Tensor] = {}

            def keep_base(module, inputs, output, store=base_out):
                if self.recorder is not None:
                    store["base"] = output

            def record_delta(module, inputs, output, store=base_out, target=target):
                if self.recorder is not None:
                    self.record(output * target.scaling[ADAPTER], store.pop("base"))

            handles.append(target.get_base_layer().register_forward_hook(keep_base))
            handles.append(target.lora_B[ADAPTER].register_forward_hook(record_delta))
        return handles

    def uninstall(self, model, arch) -> None:
        for role, path in self.paths.items():
            model.set_submodule(path, self.targets[role].get_base_layer())
        self.targets.clear()

    def describe(self) -> dict:
        return {"ranks": self.ranks(), "alpha": self.alpha, "paths": dict(self.paths)}
