"""Light-PEFT's masked early pruning: a learnable scalar per attention head (scaling that head's output) and per
FFN intermediate neuron (scaling its activation), initialised to 1 and trained with the PEFT units under an L1
penalty while the backbone stays frozen. The masks act on the inputs of the attention output projection and of
the FFN output projection, which is where a head's output and a neuron's activation enter the residual stream."""

from __future__ import annotations

import torch
from torch import nn

from ..arch import base_layer


class BackboneMasks(nn.Module):
    def __init__(self, model: nn.Module, arch):
        super().__init__()
        layers = model.get_submodule(arch.layers)
        self.head_dim = arch.head_dim(model.config)
        self.heads = nn.ParameterList(
            [nn.Parameter(torch.ones(base_layer(layer.get_submodule(arch.o)).in_features // self.head_dim))
             for layer in layers])
        self.neurons = nn.ParameterList(
            [nn.Parameter(torch.ones(base_layer(layer.get_submodule(arch.ffn_out)).in_features)) for layer in layers])
        # The quality guard switches heads and neurons off (0/1 here) without losing their learned mask values
        for i, mask in enumerate([*self.heads, *self.neurons]):
            self.register_buffer(f"on{i}", torch.ones_like(mask.detach()))
        # First-order Taylor importance |m * dL/dm| of every mask, accumulated per step (a tracker's interface)
        self._taylor = [torch.zeros_like(m, requires_grad=False) for m in [*self.heads, *self.neurons]]
        self._steps = 0

    def install(self, model: nn.Module, arch) -> list:
        handles = []
        layers = len(self.heads)
        for index, layer in enumerate(model.get_submodule(arch.layers)):

            def mask_heads(module, args, index=index):
                x = args[0]
                mask = self.heads[index] * self.get_buffer(f"on{index}")
                scaled = (x.unflatten(-1, (-1, self.head_dim)) * mask.to(x.dtype)[:, None]).flatten(-2)
                return (scaled, *args[1:])

            def mask_neurons(module, args, index=index):
                mask = self.neurons[index] * self.get_buffer(f"on{layers + index}")
                return (args[0] * mask.to(args[0].dtype), *args[1:])

            handles.append(layer.get_submodule(arch.o).register_forward_pre_hook(mask_heads))
            handles.append(layer.get_submodule(arch.ffn_out).register_forward_pre_hook(mask_neurons))
        return handles

    @torch.no_grad()
    def keep_only(self, heads: dict[int, list[int]] | None, neurons: dict[int, list[int]] | None) -> None:
        """Switch off every head and neuron not listed per layer (None: all on); their mask values are kept."""
        for kept, offset in ((heads, 0), (neurons, len(self.heads))):
            for layer in range(len(self.heads)):
                on = self.get_buffer(f"on{offset + layer}")
                on.fill_(1.0 if kept is None else 0.0)
                if kept is not None:
                    on[kept[layer]] = 1.0

    def l1(self) -> torch.Tensor:
        return sum(m.abs().sum() for m in [*self.heads, *self.neurons])

    def before_forward(self, attention_mask) -> None:
        pass

    @torch.no_grad()
    def after_backward(self) -> None:
        for total, mask in zip(self._taylor, [*self.heads, *self.neurons], strict=True):
            if mask.grad is not None:
                total += (mask * mask.grad).abs().to(total.device)
        self._steps += 1

    def tracked_state(self) -> dict[str, torch.Tensor]:
        """The Taylor importance accumulated so far and its step count (not parameters, so a search checkpoint
        saves them apart: a resumed search ranks on every step the masks learned, not only those after it)."""
        return {**{str(i): total for i, total in enumerate(self._taylor)}, "steps": torch.tensor(self._steps)}

    @torch.no_grad()
    def load_tracked_state(self, state: dict[str, torch.Tensor]) -> None:
        for i, total in enumerate(self._taylor):
            total.copy_(state[str(i)])
        self._steps = int(state["steps"])

    def scores(self, kind: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer, a score per head and per neuron (higher = keep): the mask's magnitude (Light-PEFT), or its
        Taylor importance accumulated over the steps the masks trained."""
        if kind == "magnitude":
            values = [m.detach().abs() for m in [*self.heads, *self.neurons]]
        elif kind == "taylor":
            values = [total / max(self._steps, 1) for total in self._taylor]
        else:
            raise ValueError(f"unknown mask score {kind!r}")
        values = [v.float().cpu() for v in values]
        return values[: len(self.heads)], values[len(self.heads):]
