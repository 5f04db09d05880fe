"""QLoRA (train.load_in_4bit): the transformer layers' projections held as 4-bit NF4 by bitsandbytes (its CPU path
here), everything else as it is; the units train through the 4-bit layers with the gradients of the dequantised
model, and a result reloads to the metrics it was measured at."""

from __future__ import annotations

import json

import pytest
import torch

import pruning
from pruning import BackboneSpec, LoraSpec, SpaceSpec, SpecError
from pruning.backbones import load_model
from pruning.supernet import Supernet
from tests.tiny import make_tiny_llama

bnb = pytest.importorskip("bitsandbytes", reason="the qlora extra (make test installs it)")

CPU = torch.device("cpu")


def _is_4bit(module) -> bool:
    from pruning.arch import base_layer

    return isinstance(base_layer(module), bnb.nn.Linear4bit)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    return str(make_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


def test_only_the_layers_projections_are_4bit_and_they_count_as_many_parameters(tiny_model):
    from pruning.arch import architecture_of, backbone_parameter_count, layer_parameter_count

    model = load_model(tiny_model, 2, "classification", load_in_4bit=True, device=CPU)
    quantised = {name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
    linear = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert quantised and quantised == {name for name in linear if name.startswith("bert.encoder.layer.")}
    assert {"classifier", "bert.pooler.dense"} <= linear - quantised  # the head trains; the pooler may be new
    # kept trainable on CPU: see backbones.keep_4bit_differentiable
    assert not any(getattr(model.get_submodule(name), "support_avx512bf16_for_cpu", False) for name in quantised)
    plain = load_model(tiny_model, 2, "classification")
    arch = architecture_of(model)
    assert backbone_parameter_count(model, arch) == backbone_parameter_count(plain, arch)  # a budget of 0.5% too
    assert layer_parameter_count(model, arch) == layer_parameter_count(plain, arch)


def test_the_units_get_the_gradients_of_the_dequantised_model(llama_dir):
    """Through every 4-bit layer above it, a layer-0 LoRA gets the gradient it would get from the same weights in
    full precision, also after an evaluation (bitsandbytes would repack the weights for a kernel without a
    backward there)."""
    space = SpaceSpec(types=("lora",), lora=LoraSpec(targets=("q", "v", "ffn_out"), dropout=0.0))
    four_bit = Supernet(load_model(llama_dir, 1, "completion", load_in_4bit=True, device=CPU), space)
    plain = Supernet(load_model(llama_dir, 1, "completion"), space)
    dequantised = {name: bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                   for name, module in four_bit.model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
    with torch.no_grad():
        for name, weight in dequantised.items():
            plain.model.get_submodule(name).weight.copy_(weight)
        torch.manual_seed(0)
        for ours, theirs in zip(four_bit.trainable_parameters(), plain.trainable_parameters(), strict=True):
            theirs.copy_(ours.normal_(std=0.1))  # B is zero at initialisation: A would get no gradient
    ids = torch.randint(3, 400, (4, 12))
    with torch.no_grad():
        four_bit.eval()(input_ids=ids)
    for net in (four_bit, plain):
        net.train()
        logits = net(input_ids=ids)
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    grads = [(p.grad, q.grad) for p, q in zip(four_bit.trainable_parameters(), plain.trainable_parameters(),
                                               strict=True)]
    first = four_bit.unit("lora.0").trainable()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in first)
    for ours, theirs in grads:
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5)


def test_a_search_on_4bit_weights_reloads_to_its_metrics(tmp_path, make_spec, tiny_model):
    spec = make_spec(train__load_in_4bit=True, space__types=("lora", "adapter", "prefix"))
    result = pruning.search(spec, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "peftsearch_config.json").read_text())
    assert config["load_in_4bit"] is True
    assert "4-bit NF4 (QLoRA)" in (tmp_path / "out" / "README.md").read_text()
    model = pruning.load(tmp_path / "out", tiny_model)
    assert _is_4bit(model.model.get_submodule("bert.encoder.layer.0.attention.self.query"))
    assert pruning.evaluate(tmp_path / "out", tiny_model) == result.metrics


def test_4bit_weights_and_backbone_pruning_are_refused_together(make_spec):
    with pytest.raises(SpecError, match="train.load_in_4bit: backbone pruning slices"):
        make_spec(train__load_in_4bit=True, backbone=BackboneSpec(enabled=True)).validate()


def test_without_bitsandbytes_4bit_says_what_to_install(tiny_model, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    with pytest.raises(RuntimeError, match=r"pip install 'peftsearch\[qlora\]'"):
        load_model(tiny_model, 2, "classification", load_in_4bit=True)
