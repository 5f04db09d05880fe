"""Light-PEFT's speed mode: learn masks on attention heads and FFN neurons during the first search rounds,
physically remove the least important ones (and whole layers left empty), and prune LoRA ranks."""

from __future__ import annotations

import torch

from .masks import BackboneMasks
from .ranks import RankTracker, choose_ranks
from .structural import apply_backbone_record, prune_layer

__all__ = ["BackboneMasks", "RankTracker", "apply_backbone_record", "choose_ranks", "plan_pruning", "prune_layer"]


def plan_pruning(heads: list[torch.Tensor], neurons: list[torch.Tensor], spec, head_params: int,
                 neuron_params: int, layer_params: int) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Which heads and neurons each layer keeps, from their scores per layer (higher = keep).

    With ratios: heads are ranked within each layer (`head_ratio` of each layer's heads go), neurons globally
    (`neuron_ratio` of all neurons go). With `spec.target_params`: heads and neurons are ranked together and
    removed, least important first, until the layers hold at most that many parameters (a head costs
    `head_params`, a neuron `neuron_params`)."""
    drop_heads: set[tuple[int, int]] = set()
    drop_neurons: set[tuple[int, int]] = set()
    if spec.target_params is not None:
        candidates = sorted([(float(v), "head", layer, i) for layer, m in enumerate(heads) for i, v in enumerate(m)]
                            + [(float(v), "neuron", layer, i) for layer, m in enumerate(neurons)
                               for i, v in enumerate(m)])
        size = layer_params
        for _, kind, layer, i in candidates:
            if size <= spec.target_params:
                break
            (drop_heads if kind == "head" else drop_neurons).add((layer, i))
            size -= head_params if kind == "head" else neuron_params
    else:
        for layer, m in enumerate(heads):
            for i in torch.argsort(m, stable=True)[: int(len(m) * spec.head_ratio)].tolist():
                drop_heads.add((layer, i))
        flat = torch.cat(neurons)
        owner = [(layer, i) for layer, m in enumerate(neurons) for i in range(len(m))]
        for j in torch.argsort(flat, stable=True)[: int(len(flat) * spec.neuron_ratio)].tolist():
            drop_neurons.add(owner[j])
    keep_heads = {layer: [i for i in range(len(m)) if (layer, i) not in drop_heads] for layer, m in enumerate(heads)}
    keep_neurons = {layer: [i for i in range(len(m)) if (layer, i) not in drop_neurons]
                    for layer, m in enumerate(neurons)}
    return keep_heads, keep_neurons
