"""The interface every PEFT module type implements."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .registry import unit_key

# Called while recording: (unit, delta, base) where delta is what the unit adds to the hidden stream and base is
# what flows without it, both shaped (batch, tokens, features). Activation criteria are computed from these.
Recorder = Callable[["Unit", torch.Tensor, torch.Tensor], None]


class Unit(nn.Module):
    kind: ClassVar[str]

    def __init__(self, layer: int):
        super().__init__()
        self.layer = layer
        self.recorder: Recorder | None = None
        self.enabled = True  # hooks of a switched-off unit pass the stream through untouched

    @property
    def key(self) -> str:
        return unit_key(self.kind, self.layer)

    @classmethod
    def prepare_model(cls, model: nn.Module) -> None:
        """What the backbone needs before units of this type hook into it (e.g. an attention function)."""

    @classmethod
    def build(cls, model: nn.Module, arch, layer: int, space) -> Unit:
        raise NotImplementedError

    @classmethod
    def build_layers(cls, model: nn.Module, arch, layers: list[int], space, lora_ranks=None) -> dict[int, Unit]:
        """A unit for each of `layers` (a type that injects them together, as peft does, overrides this)."""
        return {layer: cls.build(model, arch, layer, space) for layer in layers}

    def lr_scale(self) -> float:
        """This unit's learning rate relative to the run's."""
        return 1.0

    def follow_heads(self, kv_heads: list[int]) -> None:
        """Head pruning kept only the key/value heads `kv_heads` of this unit's layer (with grouped-query attention
        the query heads sharing them; without, the heads themselves): a unit sized by heads follows it."""

    def trainable(self) -> list[nn.Parameter]:
        """The unit's own parameters (what pruning it frees)."""
        return list(self.parameters())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.trainable())

    def install(self, model: nn.Module, arch) -> list[RemovableHandle]:
        """Hook the unit into the backbone; the supernet removes the returned handles before re-installing."""
        return []

    def uninstall(self, model: nn.Module, arch) -> None:
        """Undo any structural change the unit made to the backbone (hooks are the supernet's business)."""

    def reset_parameters(self) -> None:
        raise NotImplementedError

    @contextmanager
    def switched_off(self) -> Iterator[None]:
        """Temporarily take the unit out of the forward pass (the warm-up's ablation)."""
        self.set_enabled(False)
        try:
            yield
        finally:
            self.set_enabled(True)

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled

    def record(self, delta: torch.Tensor, base: torch.Tensor) -> None:
        if self.recorder is not None:
            self.recorder(self, delta.detach(), base.detach())

    def describe(self) -> dict:
        """The unit's sizes, as written to the exported configuration."""
        return {}
