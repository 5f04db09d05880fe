"""A module type is one plugin: registering a toy type (an IA3-like learned scale on the FFN output) is all it takes
for a search to build, score, prune, export and reload it, and for the results to describe it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruning
from pruning import SpaceSpec, SpecError, search
from pruning.modules import MODULE_TYPES, ModuleType, register, unregister
from pruning.modules.base import Unit


class ScaleUnit(Unit):
    kind = "scale"

    def __init__(self, layer: int, hidden: int):
        super().__init__(layer)
        self.scale = nn.Parameter(torch.ones(hidden))

    @classmethod
    def build(cls, model, arch, layer: int, space) -> ScaleUnit:
        return cls(layer, model.config.hidden_size)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.scale)

    def install(self, model, arch):
        ffn_out = model.get_submodule(f"{arch.layers}.{self.layer}.{arch.ffn_out}")

        def rescale(module, inputs, output):
            if not self.enabled:
                return output
            delta = output * (self.scale - 1)
            self.record(delta, output)
            return output + delta

        return [ffn_out.register_forward_hook(rescale)]

    def describe(self) -> dict:
        return {"features": self.scale.numel()}


@pytest.fixture
def scale_type():
    register(ModuleType(name="scale", unit=f"{__name__}:ScaleUnit", criteria=(("taylor",),) * 4,
                        cell=lambda d: f"s={d['features']}"))
    yield MODULE_TYPES["scale"]
    unregister("scale")


def test_an_unregistered_type_is_refused(make_spec):
    with pytest.raises(SpecError, match="space.types"):
        make_spec(space=SpaceSpec(types=("lora", "scale"))).validate()


def test_a_registered_toy_type_goes_through_a_whole_search(scale_type, make_spec, tmp_path, tiny_model, batch):
    spec = make_spec(space=SpaceSpec(types=("lora", "scale")), budget=4500)
    result = search(spec, tmp_path / "out")
    config = result.configuration
    assert result.trainable_params <= 4500
    kept = [k for k in config["units"] if k.startswith("scale.")]
    assert kept  # 64 parameters each against LoRA's 2,048: the budget keeps some
    for entry in config["layers"]:
        if f"scale.{entry['layer']}" in kept:
            assert entry["modules"]["scale"] == {"features": 64}
    assert result.rounds[0].type_values.keys() == {"lora", "scale"}  # calibrated like any type
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| layer | lora | scale |" in card and "s=64" in card
    reloaded = pruning.load(tmp_path / "out", tiny_model)
    assert reloaded.unit_keys() == config["units"]
    assert pruning.evaluate(tmp_path / "out", tiny_model) == result.metrics
