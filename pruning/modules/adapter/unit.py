"""Serial bottleneck adapter after the FFN (Pfeiffer et al. 2020): h <- h + up(act(down(h))), placed on the FFN
output projection's output, before the residual connection and layer norm. `up` starts at zero, so a new adapter
leaves the backbone's function unchanged."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..base import Unit


class AdapterUnit(Unit):
    kind = "adapter"

    def __init__(self, layer: int, hidden: int, size: int, activation: str = "relu"):
        super().__init__(layer)
        self.down = nn.Linear(hidden, size)
        self.up = nn.Linear(size, hidden)
        self.activation = activation
        self.act = ACT2FN[activation]
        self.reset_parameters()

    @classmethod
    def build(cls, model: nn.Module, arch, layer: int, spec) -> AdapterUnit:
        return cls(layer, model.config.hidden_size, spec.adapter.size, spec.adapter.activation)

    def reset_parameters(self) -> None:
        self.down.reset_parameters()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(hidden)))

    def install(self, model, arch):
        ffn_out = model.get_submodule(f"{arch.layers}.{self.layer}.{arch.ffn_out}")

        def add_adapter(module, inputs, output):
            if not self.enabled:
                return output
            delta = self(output)
            self.record(delta, output)
            return output + delta

        return [ffn_out.register_forward_hook(add_adapter)]

    def describe(self) -> dict:
        return {"size": self.down.out_features, "activation": self.activation}
