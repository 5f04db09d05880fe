"""The supernet on the tiny BERT: exact unit sizes, identity at initialisation, removal, switching off, prefixes
with padding, and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import HEAD_PARAMS, HIDDEN, INTERMEDIATE, LAYERS, SENTENCES
from torch import nn

from pruning.spec import AdapterSpec, LoraSpec, PrefixSpec, SpaceSpec
from pruning.supernet import Supernet, all_unit_keys, parse_unit_key

NO_DROPOUT = LoraSpec(dropout=0.0)


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(**batch)
    return out.logits if hasattr(out, "logits") else out


def perturb(supernet: Supernet, seed: int = 0, scale: float = 0.2) -> None:
    """Give every unit non-trivial weights (new LoRA B and adapter up are zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for unit in supernet.units.values():
            for p in unit.trainable():
                p.add_(torch.randn(p.shape, generator=generator) * scale)


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- keys -------------------------------------------------------------------------------------------------------


def test_unit_keys():
    assert all_unit_keys(2, ("lora", "prefix")) == ["lora.0", "prefix.0", "lora.1", "prefix.1"]
    assert parse_unit_key("adapter.11") == ("adapter", 11)
    for bad in ("adapter", "bogus.1", "lora.x", "lora.-1", ""):
        with pytest.raises(ValueError, match="not a unit key"):
            parse_unit_key(bad)


def test_units_beyond_the_model_are_rejected(load_bare):
    with pytest.raises(ValueError, match="beyond the model's 4 layers"):
        Supernet(load_bare(), SpaceSpec(), ["lora.0", "adapter.4"])


# --- sizes ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("space, per_unit", [
    # the default: LoRA on every projection (q, k, v, o are h -> h; ffn_in is h -> intermediate, ffn_out back)
    (SpaceSpec(), {"lora": 8 * (4 * (HIDDEN + HIDDEN) + 2 * (HIDDEN + INTERMEDIATE)),
                   "adapter": HIDDEN * 16 + 16 + 16 * HIDDEN + HIDDEN, "prefix": 2 * 8 * HIDDEN}),
    (SpaceSpec(lora=LoraSpec(rank=3, targets=("q", "v")), adapter=AdapterSpec(size=5), prefix=PrefixSpec(length=2)),
     {"lora": 2 * 3 * (HIDDEN + HIDDEN), "adapter": HIDDEN * 5 + 5 + 5 * HIDDEN + HIDDEN, "prefix": 2 * 2 * HIDDEN}),
    (SpaceSpec(types=("lora",), lora=LoraSpec(rank=2, targets=("q", "k", "o", "ffn_in", "ffn_out"))),
     {"lora": 2 * (3 * (HIDDEN + HIDDEN) + 2 * (HIDDEN + INTERMEDIATE))}),
])
def test_unit_parameter_counts_are_exact(load_bare, space, per_unit):
    bare = load_bare()
    backbone = sum(p.numel() for p in bare.parameters())
    supernet = Supernet(bare, space)
    expected = {f"{kind}.{layer}": per_unit[kind] for layer in range(LAYERS) for kind in space.types}
    assert supernet.unit_params() == expected
    assert supernet.unit_keys() == list(expected)  # ordered by layer, then type
    assert supernet.peft_params() == sum(expected.values())
    assert sum(p.numel() for p in supernet.head_parameters()) == HEAD_PARAMS
    trainable = supernet.trainable_parameters()
    assert len({id(p) for p in trainable}) == len(trainable)
    assert sum(p.numel() for p in trainable) == supernet.peft_params() + HEAD_PARAMS
    # exactly these and nothing else require gradients: the backbone is frozen
    assert trainable_count(supernet) == supernet.peft_params() + HEAD_PARAMS
    assert {id(p) for p in supernet.parameters() if p.requires_grad} == {id(p) for p in trainable}
    assert sum(p.numel() for p in supernet.parameters()) == backbone + supernet.peft_params()


def test_lora_unit_wraps_its_projections(load_bare):
    supernet = Supernet(load_bare(), SpaceSpec(types=("lora",), lora=LoraSpec(rank=4, alpha=8.0, targets=("q", "v"))),
                         ["lora.2"])
    unit = supernet.unit("lora.2")
    assert unit.ranks() == {"q": 4, "v": 4}
    assert unit.describe() == {"ranks": {"q": 4, "v": 4}, "alpha": 8.0,
                               "paths": {"q": "bert.encoder.layer.2.attention.self.query",
                                         "v": "bert.encoder.layer.2.attention.self.value"}}
    layer = supernet.model.bert.encoder.layer
    assert type(layer[1].attention.self.query) is nn.Linear  # only layer 2 is wrapped
    assert type(layer[2].attention.self.query) is not nn.Linear
    assert type(layer[2].attention.self.key) is nn.Linear
    assert unit.num_params() == 2 * 4 * (HIDDEN + HIDDEN)


# --- behaviour --------------------------------------------------------------------------------------------------


def test_new_lora_and_adapters_leave_the_logits_unchanged(load_bare, batch):
    reference = logits(load_bare(), batch)
    supernet = Supernet(load_bare(), SpaceSpec(types=("lora", "adapter"), lora=NO_DROPOUT))
    assert torch.equal(logits(supernet, batch), reference)
    # and it is not because the units do nothing: once B and up are non-zero the logits move
    perturb(supernet)
    assert not torch.allclose(logits(supernet, batch), reference, atol=1e-4)


@pytest.mark.parametrize("kind", ["lora", "adapter"])
def test_each_new_unit_type_alone_is_the_identity(load_bare, batch, kind):
    reference = logits(load_bare(), batch)
    supernet = Supernet(load_bare(), SpaceSpec(types=(kind,)))
    assert torch.equal(logits(supernet, batch), reference)


def test_a_new_prefix_changes_the_logits(load_bare, batch):
    reference = logits(load_bare(), batch)
    supernet = Supernet(load_bare(), SpaceSpec(types=("prefix",)))
    assert not torch.allclose(logits(supernet, batch), reference, atol=1e-6)


def test_removing_every_unit_restores_the_bare_model(load_bare, batch):
    reference = logits(load_bare(), batch)
    supernet = Supernet(load_bare(), SpaceSpec())
    perturb(supernet)
    assert not torch.allclose(logits(supernet, batch), reference, atol=1e-4)
    supernet.remove(supernet.unit_keys())
    assert supernet.unit_keys() == [] and supernet.peft_params() == 0
    assert torch.equal(logits(supernet, batch), reference)
    for layer in supernet.model.bert.encoder.layer:
        for projection in (layer.attention.self.query, layer.attention.self.value):
            assert type(projection) is nn.Linear
    assert not any(".lora_" in name for name, _ in supernet.named_parameters())
    assert trainable_count(supernet) == HEAD_PARAMS


def test_removing_some_units_equals_a_supernet_built_without_them(load_bare, batch):
    full = Supernet(load_bare(), SpaceSpec(lora=NO_DROPOUT))
    perturb(full, seed=1)
    keep = ["adapter.0", "lora.1", "prefix.1", "lora.3", "prefix.3"]
    state = full.trained_state()
    full.remove([k for k in full.unit_keys() if k not in keep])
    assert full.unit_keys() == keep
    rebuilt = Supernet(load_bare(), SpaceSpec(lora=NO_DROPOUT), keep)
    rebuilt.load_trained_state({k: v for k, v in state.items() if k in rebuilt.trained_state()})
    assert torch.equal(logits(full, batch), logits(rebuilt, batch))
    assert full.peft_params() == rebuilt.peft_params()


@pytest.mark.parametrize("targets", [("q", "v"), ("q", "v", "ffn_out")])
def test_removing_a_layers_lora_keeps_its_adapter_working(load_bare, batch, targets):
    """With LoRA on ffn_out the adapter's hook sits on the LoRA wrapper of that projection; removing the LoRA
    must move it to the plain projection."""
    space = SpaceSpec(types=("lora", "adapter"), lora=LoraSpec(dropout=0.0, targets=targets))
    supernet = Supernet(load_bare(), space, ["lora.1", "adapter.1"])
    supernet.remove(["lora.1"])
    assert supernet.unit_keys() == ["adapter.1"]
    reference = logits(load_bare(), batch)
    assert torch.equal(logits(supernet, batch), reference)  # up = 0 still
    perturb(supernet, seed=2)
    moved = logits(supernet, batch)
    assert not torch.allclose(moved, reference, atol=1e-4)
    only_adapter = Supernet(load_bare(), space, ["adapter.1"])
    only_adapter.load_trained_state(supernet.trained_state())
    assert torch.equal(moved, logits(only_adapter, batch))


def test_without_dropout_trains_deterministically_and_restores_every_rate(load_bare, batch):
    from pruning.train import without_dropout

    supernet = Supernet(load_bare(), SpaceSpec(lora=LoraSpec(dropout=0.3)))
    perturb(supernet)
    rates = [m.p for m in supernet.modules() if isinstance(m, nn.Dropout)]
    assert {0.1, 0.3} <= set(rates)  # the backbone's own dropout and LoRA's

    def train_forward() -> torch.Tensor:
        with torch.no_grad():
            out = supernet.train()(**batch)
        return out.logits if hasattr(out, "logits") else out

    with without_dropout(supernet):
        first, second = train_forward(), train_forward()
        assert supernet.training
    assert torch.equal(first, second)
    assert not torch.equal(train_forward(), train_forward())  # dropout is back
    assert [m.p for m in supernet.modules() if isinstance(m, nn.Dropout)] == rates
    assert torch.allclose(first, logits(supernet, batch), atol=1e-6)  # train mode without dropout = eval mode


def test_switched_off_removes_exactly_that_units_contribution(load_bare, batch):
    supernet = Supernet(load_bare(), SpaceSpec(lora=NO_DROPOUT))
    perturb(supernet, seed=3)
    full = logits(supernet, batch)
    for key in ("lora.1", "adapter.2", "prefix.0", "lora.3"):
        unit = supernet.unit(key)
        with unit.switched_off():
            off = logits(supernet, batch)
        assert not torch.allclose(off, full, atol=1e-5), key  # the unit did contribute
        assert torch.equal(logits(supernet, batch), full), key  # and is back on after the block
        supernet.remove([key])
        assert torch.equal(logits(supernet, batch), off), key  # off == removed
        full = off


def test_lora_switched_off_restores_its_scaling(load_bare):
    supernet = Supernet(load_bare(), SpaceSpec(types=("lora",), lora=LoraSpec(rank=8, alpha=16.0)), ["lora.0"])
    unit = supernet.unit("lora.0")
    with unit.switched_off():
        assert not unit.enabled
        assert all(t.scaling["default"] == 0.0 for t in unit.targets.values())
        unit.set_enabled(False)  # idempotent while off
    assert unit.enabled
    assert all(t.scaling["default"] == 2.0 for t in unit.targets.values())


def test_prefix_with_padding_matches_the_sequence_alone(load_bare, tokenizer, batch):
    """Prefix positions must be attendable for every token, and pad tokens must stay masked."""
    supernet = Supernet(load_bare(), SpaceSpec(types=("prefix",)))
    perturb(supernet, seed=4, scale=1.0)
    padded = logits(supernet, batch)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert min(lengths) < max(lengths)
    for row, sentence in enumerate(SENTENCES):
        alone = logits(supernet, dict(tokenizer([sentence], return_tensors="pt")))
        assert torch.allclose(padded[row], alone[0], atol=1e-5), sentence
    # pad tokens masked: changing what the padding holds changes nothing
    noisy = dict(batch)
    noisy["input_ids"] = torch.where(batch["attention_mask"].bool(), batch["input_ids"], 42)
    assert torch.allclose(logits(supernet, noisy), padded, atol=1e-5)
    # and the prefix is really attended to: switching all prefixes off moves the logits
    for unit in supernet.units.values():
        unit.set_enabled(False)
    assert not torch.allclose(logits(supernet, batch), padded, atol=1e-3)


def test_gradients_reach_every_units_parameters(load_bare, batch):
    supernet = Supernet(load_bare(), SpaceSpec(lora=NO_DROPOUT))
    supernet.train()
    supernet(**batch).logsumexp(-1).sum().backward()
    for key in supernet.unit_keys():
        unit = supernet.unit(key)
        assert all(p.grad is not None for p in unit.trainable()), key
    # at initialisation B (LoRA) and up (adapter) are zero: A and down get zero gradients, but B, up, and the
    # prefixes do get signal
    for key in supernet.unit_keys():
        unit, kind = supernet.unit(key), key.split(".")[0]
        if kind == "lora":
            for role in ("q", "v"):
                a, b = unit.ab(role)
                assert torch.count_nonzero(a.weight.grad) == 0 and torch.count_nonzero(b.weight.grad) > 0
        elif kind == "adapter":
            assert torch.count_nonzero(unit.down.weight.grad) == 0
            assert torch.count_nonzero(unit.up.weight.grad) > 0
        else:
            assert torch.count_nonzero(unit.keys.grad) > 0 and torch.count_nonzero(unit.values.grad) > 0
    assert all(p.grad is None for n, p in supernet.named_parameters() if not p.requires_grad)

    supernet.zero_grad(set_to_none=True)
    perturb(supernet, seed=5)
    supernet(**batch).logsumexp(-1).sum().backward()
    for p in supernet.trainable_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0


def test_trained_state_round_trip_and_errors(load_bare, batch):
    source = Supernet(load_bare(), SpaceSpec(lora=NO_DROPOUT), ["lora.0", "adapter.1", "prefix.2"])
    perturb(source, seed=6)
    state = source.trained_state()
    assert sum(t.numel() for t in state.values()) == source.peft_params() + HEAD_PARAMS
    target = Supernet(load_bare(), SpaceSpec(lora=NO_DROPOUT), ["lora.0", "adapter.1", "prefix.2"])
    target.load_trained_state(state)
    assert torch.equal(logits(target, batch), logits(source, batch))

    missing = dict(state)
    del missing["units.adapter_1.up.weight"]
    with pytest.raises(ValueError, match="lacks 1 tensors"):
        target.load_trained_state(missing)
    with pytest.raises(ValueError, match="units.adapter_9.up.weight has no place"):
        target.load_trained_state({**state, "units.adapter_9.up.weight": torch.zeros(1)})
    wrong = {**state, "units.prefix_2.keys": torch.zeros(4, 3, 16)}
    with pytest.raises(ValueError, match=r"units.prefix_2.keys has shape \(4, 3, 16\)"):
        target.load_trained_state(wrong)
