"""Another model family is one more architecture map: a tiny LLaMA (grouped-query attention, gated MLP, causal
attention, RoPE) runs the same supernet, masks and neuron pruning as BERT."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from pruning import SpaceSpec
from pruning.arch import architecture_of
from pruning.supernet import Supernet


@pytest.fixture
def llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=2, pad_token_id=0,
                         max_position_embeddings=128)
    return LlamaForSequenceClassification(config).eval()


def _batch():
    ids = torch.randint(5, 900, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[1, 6:] = 0  # right padding; LLaMA pools the last real token
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_llama_units_have_the_right_sizes(llama):
    assert architecture_of(llama).name == "llama"
    net = Supernet(llama, SpaceSpec())
    sizes = net.unit_params()
    # LoRA r=8 on every projection: q and o (64 -> 64), k and v (64 -> 2 kv heads x 16 = 32), gate and up
    # (64 -> 128), down (128 -> 64); prefix: 2 kv heads x 8 x 16, keys and values
    assert sizes["lora.0"] == 8 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 128))
    assert sizes["prefix.0"] == 2 * 2 * 8 * 16
    assert sizes["adapter.0"] == 64 * 16 + 16 + 16 * 64 + 64


def test_llama_new_units_keep_the_function_and_prefixes_respect_padding(llama):
    batch = _batch()
    bare = llama(**batch).logits
    net = Supernet(llama, SpaceSpec(types=("lora", "adapter"))).eval()
    torch.testing.assert_close(net(**batch), bare)  # B = 0 and up = 0: nothing changes yet
    net = Supernet(net.model, SpaceSpec(types=("prefix",))).eval()
    with_prefix = net(**batch)
    assert not torch.allclose(with_prefix, bare)
    alone = net(input_ids=batch["input_ids"][1:2, :6], attention_mask=batch["attention_mask"][1:2, :6])
    torch.testing.assert_close(alone, with_prefix[1:2], rtol=1e-4, atol=1e-5)


def test_llama_gradients_and_neuron_pruning(llama):
    net = Supernet(llama, SpaceSpec(), masks=True).eval()
    net(**_batch()).sum().backward()
    assert all(p.grad is not None for p in net.trainable_parameters())
    keep = {layer: list(range(0, 128, 3)) for layer in range(4)}
    with torch.no_grad():
        for layer in range(4):
            dropped = [i for i in range(128) if i not in keep[layer]]
            net.masks.neurons[layer][dropped] = 0.0
    before = net(**_batch())
    net.prune_backbone({layer: [0, 1, 2, 3] for layer in range(4)}, keep)
    torch.testing.assert_close(net(**_batch()), before, rtol=1e-5, atol=1e-5)
    mlp = net.model.model.layers[0].mlp
    assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (len(keep[0]), 64)
    assert mlp.down_proj.weight.shape == (64, len(keep[0]))


def test_grouped_query_attention_loses_whole_groups_and_keeps_the_function(llama):
    """4 query heads share 2 key/value heads (heads 0, 1 read kv 0; heads 2, 3 read kv 1): switching group 1's
    query heads off and removing the group leaves the logits as they were; k and v lose that head's rows, the
    prefixes its vectors."""
    net = Supernet(llama, SpaceSpec(), masks=True).eval()
    with torch.no_grad():  # make every unit contribute, so slicing mistakes show in the logits
        for p in net.trainable_parameters():
            if p not in set(net.masks.parameters()):
                p.add_(torch.randn_like(p) * 0.05)
        net.masks.heads[0][[2, 3]] = 0.0
        net.masks.heads[2][[0, 1]] = 0.0
        net.masks.heads[0][[0, 1]] = torch.tensor([0.7, 1.3])
    heads = {0: [0, 1], 1: [0, 1, 2, 3], 2: [2, 3], 3: [0, 1, 2, 3]}
    everything = {layer: list(range(128)) for layer in range(4)}
    prefix_before = net.unit("prefix.2").keys.detach().clone()
    before = net(**_batch())
    net.prune_backbone(heads, everything)
    torch.testing.assert_close(net(**_batch()), before, rtol=1e-5, atol=1e-5)
    attention = net.model.model.layers[0].self_attn
    assert attention.q_proj.get_base_layer().weight.shape == (2 * 16, 64)
    assert attention.k_proj.get_base_layer().weight.shape == attention.v_proj.get_base_layer().weight.shape == (
        16, 64)
    assert attention.k_proj.lora_B["default"].weight.shape == (16, 8)
    assert attention.o_proj.get_base_layer().weight.shape == (64, 2 * 16)
    torch.testing.assert_close(net.unit("prefix.2").keys, prefix_before[[1]])  # group 1's prefix stayed


def test_query_heads_that_split_a_group_are_refused(llama):
    net = Supernet(llama, SpaceSpec(types=("lora",)), masks=True)
    everything = {layer: list(range(128)) for layer in range(4)}
    with pytest.raises(ValueError, match=r"query heads \[0, 1, 2\] are not whole groups of 2"):
        net.prune_backbone({layer: [0, 1, 2] for layer in range(4)}, everything)
