"""Which heads and neurons a pruning step keeps, and what that leaves of the transformer layers' parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..arch import layer_parameter_count, projection

Plan = tuple[dict[int, list[int]], dict[int, list[int]]]  # query heads and neurons kept per layer


@dataclass(frozen=True)
class Planner:
    """The scores of a supernet's heads (per query head) and neurons, and the sizes that turn a plan into the
    parameters it leaves. Heads go in groups: a key/value head with the query heads sharing it (one head without
    grouped-query attention)."""

    head_scores: list[torch.Tensor]
    neuron_scores: list[torch.Tensor]
    per_kv: int  # query heads per key/value head
    group_params: int  # a group's q, k, v rows (+ bias) and o columns
    neuron_params: int  # a neuron's rows in the FFN input projection(s) (+ bias) and column in the output one
    layer_params: int  # the transformer layers' parameters before pruning

    @classmethod
    def of(cls, supernet, score: str) -> Planner:
        arch, config = supernet.arch, supernet.model.config
        hidden, head_dim, per_kv = config.hidden_size, arch.head_dim(config), arch.heads_per_kv(config)
        bias = int(projection(supernet.model, arch, 0, arch.q).bias is not None)
        head_scores, neuron_scores = supernet.masks.scores(score)
        return cls(head_scores, neuron_scores, per_kv,
                   group_params=(per_kv + 2) * head_dim * (hidden + bias) + per_kv * head_dim * hidden,
                   neuron_params=len(arch.ffn_in) * (hidden + 1) + hidden,
                   layer_params=layer_parameter_count(supernet.model, arch))

    def plan(self, spec) -> Plan:
        """What `spec` (its ratios or target_params) keeps, the groups ranked by their query heads' summed
        scores."""
        group_scores = [scores.view(-1, self.per_kv).sum(-1) for scores in self.head_scores]
        groups, neurons = plan_pruning(group_scores, self.neuron_scores, spec, self.group_params,
                                       self.neuron_params, self.layer_params)
        heads = {layer: [g * self.per_kv + j for g in kept for j in range(self.per_kv)]
                 for layer, kept in groups.items()}
        return heads, neurons

    def everything(self) -> Plan:
        return ({i: list(range(len(h))) for i, h in enumerate(self.head_scores)},
                {i: list(range(len(n))) for i, n in enumerate(self.neuron_scores)})

    def size(self, plan: Plan) -> int:
        """The layers' parameters once the heads and neurons `plan` does not keep are gone."""
        groups_gone = sum(len(h) - len(plan[0][i]) for i, h in enumerate(self.head_scores)) // self.per_kv
        neurons_gone = sum(len(n) - len(plan[1][i]) for i, n in enumerate(self.neuron_scores))
        return self.layer_params - self.group_params * groups_gone - self.neuron_params * neurons_gone

    def removed_share(self, plan: Plan) -> float:
        return 1 - self.size(plan) / self.layer_params


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
