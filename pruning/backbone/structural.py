"""Physical removal of attention heads and FFN neurons (transformers 5 has no `prune_heads`).

Weights are sliced, not masked: q/k/v lose the output rows of removed heads and the attention output projection
their input columns; the FFN input projection(s) lose the rows of removed neurons and the FFN output projection
their columns. LoRA layers on these projections are sliced along the same dimension (B rows for outputs, A
columns for inputs), so they keep working. The learned mask values of the survivors are folded into the output
projections' columns, so pruning a head or neuron whose mask is 0 leaves the function exactly unchanged.

With grouped-query attention heads go in groups: a key/value head with the query heads that share it (its k/v rows
go too); the group's size is unchanged, so the attention module's repeat of keys and values still matches.

A layer left with no heads keeps its attention output bias (what the attention block then adds), one left with no
neurons keeps its FFN output bias; their matrices are gone. Such a layer is reported as removed.
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch import projection


def _sliced_linear(linear: nn.Linear, out_index=None, in_index=None, in_scale=None) -> nn.Linear:
    weight = linear.weight.data
    bias = None if linear.bias is None else linear.bias.data
    if out_index is not None:
        weight = weight.index_select(0, out_index)
        bias = None if bias is None else bias.index_select(0, out_index)
    if in_index is not None:
        weight = weight.index_select(1, in_index)
    if in_scale is not None:
        weight = weight * in_scale.to(weight.dtype)[None, :]
    # Built on the meta device and given its tensors: no throwaway initialisation (and no warning for the
    # zero-size matrices of an emptied layer).
    new = nn.Linear(1, 1, bias=bias is not None, device="meta")
    new.in_features, new.out_features = weight.shape[1], weight.shape[0]
    new.weight = nn.Parameter(weight.clone(), requires_grad=linear.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias.clone(), requires_grad=linear.bias.requires_grad)
    return new


def slice_outputs(root: nn.Module, path: str, index: torch.Tensor) -> None:
    """Keep output features `index` of the projection at `path` (and of its LoRA B)."""
    module = root.get_submodule(path)
    if hasattr(module, "base_layer"):
        module.base_layer = _sliced_linear(module.base_layer, out_index=index)
        for name in module.lora_B:
            module.lora_B[name] = _sliced_linear(module.lora_B[name], out_index=index)
        module.out_features = len(index)
    else:
        root.set_submodule(path, _sliced_linear(module, out_index=index))


def slice_inputs(root: nn.Module, path: str, index: torch.Tensor, scale: torch.Tensor | None = None) -> None:
    """Keep input features `index` of the projection at `path` (and of its LoRA A), each scaled by `scale`."""
    module = root.get_submodule(path)
    if hasattr(module, "base_layer"):
        module.base_layer = _sliced_linear(module.base_layer, in_index=index, in_scale=scale)
        for name in module.lora_A:
            module.lora_A[name] = _sliced_linear(module.lora_A[name], in_index=index, in_scale=scale)
        module.in_features = len(index)
    else:
        root.set_submodule(path, _sliced_linear(module, in_index=index, in_scale=scale))


class NoHeads(nn.Module):
    """Stands in for a self-attention module left without heads. Its output is empty (width 0), so the output
    projection yields just its bias; where the attention module applies that projection itself (LLaMA), it
    keeps it and applies it."""

    def __init__(self, o_name: str | None = None, o_proj: nn.Module | None = None):
        super().__init__()
        self.o_name = o_name
        if o_proj is not None:
            self.add_module(o_name, o_proj)

    def forward(self, hidden_states, *args, **kwargs):
        empty = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        return (empty if self.o_name is None else getattr(self, self.o_name)(empty)), None


def prune_layer(model: nn.Module, arch, layer: int, heads: list[int], neurons: list[int],
                head_scale: torch.Tensor | None = None, neuron_scale: torch.Tensor | None = None) -> None:
    """Keep (query) `heads` and `neurons` of `layer`, folding their scales into the output projections. With
    grouped-query attention, `heads` must hold whole groups: a key/value head goes with every query head sharing
    it."""
    prefix = f"{arch.layers}.{layer}."
    device = projection(model, arch, layer, arch.o).weight.device
    head_dim = arch.head_dim(model.config)
    heads_now = projection(model, arch, layer, arch.q).out_features // head_dim
    rows = _head_rows(heads, head_dim, device)
    column_scale = None if head_scale is None else head_scale.to(device).repeat_interleave(head_dim)
    if len(heads) != heads_now:
        slice_outputs(model, prefix + arch.q, rows)
        kv_rows = _head_rows(kv_heads(heads, arch.heads_per_kv(model.config)), head_dim, device)
        for role in ("k", "v"):
            slice_outputs(model, prefix + getattr(arch, role), kv_rows)
        _set_head_count(model, arch, prefix, len(heads), head_dim)
    slice_inputs(model, prefix + arch.o, rows, column_scale)  # all heads kept: this only folds their scales
    neuron_index = torch.tensor(neurons, dtype=torch.long, device=device)
    for path in arch.ffn_in:
        slice_outputs(model, prefix + path, neuron_index)
    slice_inputs(model, prefix + arch.ffn_out, neuron_index, neuron_scale)


def kv_heads(heads: list[int], per_kv: int) -> list[int]:
    """The key/value heads that kept query `heads` read (query head i reads key/value head i // per_kv, as
    transformers' repeat_kv lays them out); ValueError unless the heads are whole groups."""
    groups = sorted({head // per_kv for head in heads})
    if sorted(heads) != [g * per_kv + j for g in groups for j in range(per_kv)]:
        raise ValueError(f"query heads {heads} are not whole groups of {per_kv} (one per key/value head): "
                         "grouped-query attention loses a key/value head with every query head that shares it")
    return groups


def _head_rows(heads: list[int], head_dim: int, device) -> torch.Tensor:
    index = torch.tensor(heads, dtype=torch.long, device=device)
    return (index[:, None] * head_dim + torch.arange(head_dim, device=device)[None, :]).flatten()


def _set_head_count(model: nn.Module, arch, prefix: str, heads: int, head_dim: int) -> None:
    """Tell the attention module its new head count; with none left, swap it for NoHeads."""
    if heads == 0:
        o_name = arch.o.removeprefix(arch.attention + ".") if arch.attention_includes_o else None
        o_proj = model.get_submodule(prefix + arch.o) if o_name else None
        model.set_submodule(prefix + arch.attention, NoHeads(o_name, o_proj))
        return
    attention = model.get_submodule(prefix + arch.attention)
    for attr in ("num_attention_heads", "num_heads"):
        if hasattr(attention, attr):
            setattr(attention, attr, heads)
    if hasattr(attention, "all_head_size"):
        attention.all_head_size = heads * head_dim


def apply_backbone_record(model: nn.Module, record: dict, scales: dict[str, torch.Tensor] | None = None) -> None:
    """Prune a fresh base model the way a search did, from the record it exported (and the folded scales,
    `backbone.head_scale.<layer>` / `backbone.neuron_scale.<layer>` in its weights file)."""
    from ..arch import architecture_of

    arch = architecture_of(model)
    scales = scales or {}
    for layer_text, heads in record["heads"].items():
        layer = int(layer_text)
        prune_layer(model, arch, layer, heads, record["neurons"][layer_text],
                    scales.get(f"backbone.head_scale.{layer}"), scales.get(f"backbone.neuron_scale.{layer}"))
