"""Parameter counts read from a model's config.json, without torch: the whole supernet of a space (the largest
budget a search can use) and the backbone (what a percentage budget is a share of).

The service checks a job's budget at the door and the CLI before torch loads, with `check_budget`. The counts
equal what the engine measures on the built model (`Supernet(...).peft_params()`, `arch.backbone_parameter_count`;
tests/test_sizes.py holds them to it for every family of the architecture maps). A model whose config cannot be
read here (not on disk, not in the hub cache) or whose family has no map gets no check: None, no error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .arch import ARCHITECTURES, ArchitectureMap
from .spec import SpecError, budget_params, parse_budget


@dataclass(frozen=True)
class Dims:
    """The sizes of one transformer layer (all layers of an unpruned model are alike)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    def projection(self, role: str) -> tuple[int, int]:
        """(in_features, out_features) of a role's projection (each of them, for a role with several)."""
        attention = self.heads * self.head_dim
        return {
            "q": (self.hidden, attention),
            "k": (self.hidden, self.kv_heads * self.head_dim),
            "v": (self.hidden, self.kv_heads * self.head_dim),
            "o": (attention, self.hidden),
            "ffn_in": (self.hidden, self.intermediate),
            "ffn_out": (self.intermediate, self.hidden),
        }[role]


def read_config(model: str) -> dict[str, Any] | None:
    """The config.json of `model` as the engine would resolve it, offline: a local folder, a bundled model's
    name, or a hub id already in the local hub cache. None when none of these has one."""
    from .bundled import bundled_path

    folder = Path(model) if Path(model).is_dir() else None
    if folder is None and (bundled := bundled_path(model)) is not None:
        folder = Path(bundled)
    if folder is not None:
        file = folder / "config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # not a valid repo id, no hub library: nothing to read offline
            return None
        if not isinstance(cached, str):
            return None
        file = Path(cached)
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def architecture(config: dict[str, Any]) -> ArchitectureMap | None:
    return ARCHITECTURES.get(config.get("model_type"))


def dims(config: dict[str, Any]) -> Dims | None:
    """The layer sizes of a config, or None when it is not a family the engine maps or lacks a size."""
    arch = architecture(config)
    if arch is None:
        return None
    hidden, layers = config.get("hidden_size"), config.get("num_hidden_layers")
    heads, intermediate = config.get(arch.num_heads_attr), config.get("intermediate_size")
    if not all(_positive(v) for v in (hidden, layers, heads, intermediate)):
        return None
    # What transformers' configs default to when config.json leaves them out: K/V heads = heads (no GQA),
    # head_dim = hidden / heads.
    kv_heads = config.get(arch.num_kv_heads_attr) if arch.num_kv_heads_attr else None
    head_dim = config.get("head_dim") or hidden // heads
    if not _positive(kv_heads if kv_heads is not None else heads) or not _positive(head_dim):
        return None
    return Dims(hidden, layers, heads, kv_heads or heads, head_dim, intermediate)


def unit_params(config: dict[str, Any], space) -> dict[str, int] | None:
    """Parameters of one unit of each type of `space` (a SpaceSpec, or anything with its attributes), in a
    layer of this model; None when a size is unknown (an unmapped family, a module type of a plugin)."""
    arch, sizes = architecture(config), dims(config)
    if arch is None or sizes is None:
        return None
    counts = {}
    for kind in space.types:
        if kind == "lora":  # A (rank x in) and B (out x rank) per adapted projection, no bias
            lora = space.lora
            counts[kind] = lora.rank * sum(len(arch.role_paths(role)) * sum(sizes.projection(role))
                                           for role in dict.fromkeys(lora.targets))
        elif kind == "adapter":  # down (hidden -> size) and up (size -> hidden), with biases
            size = space.adapter.size
            counts[kind] = 2 * sizes.hidden * size + size + sizes.hidden
        elif kind == "prefix":  # keys and values: (kv heads, length, head dim) each
            counts[kind] = 2 * sizes.kv_heads * space.prefix.length * sizes.head_dim
        else:
            return None
    return counts


def supernet_params(config: dict[str, Any], space) -> int | None:
    """PEFT parameters of the whole supernet: every unit of `space` in every layer (a search's starting point,
    and so the largest budget that prunes anything). LoRA's rank_step changes the grain, not the total."""
    counts = unit_params(config, space)
    sizes = dims(config)
    return None if counts is None or sizes is None else sizes.layers * sum(counts.values())


def backbone_params(config: dict[str, Any]) -> int | None:
    """Every parameter of the model for sequence classification except its task head (embeddings and a pooler
    included): what `pruning.arch.backbone_parameter_count` counts on the loaded model."""
    arch, sizes = architecture(config), dims(config)
    vocab = config.get("vocab_size")
    if arch is None or sizes is None or not _positive(vocab):
        return None
    h, inner = sizes.hidden, sizes.intermediate
    if arch.name == "llama":
        return _llama_like(config, sizes, vocab, len(arch.ffn_in))
    positions, types = config.get("max_position_embeddings"), config.get("type_vocab_size", 2)
    if not _positive(positions) or not isinstance(types, int) or types < 0:
        return None
    embeddings = (vocab + positions + types) * h + 2 * h  # word, position, token type; LayerNorm
    attention = sum(_linear(*sizes.projection(role), True) for role in ("q", "k", "v", "o"))
    layer = attention + 2 * h + _linear(h, inner, True) + _linear(inner, h, True) + 2 * h
    # BertForSequenceClassification classifies the pooler's output; RoBERTa's head has a dense layer of its own
    # (counted as head), and its model no pooler.
    pooler = _linear(h, h, True) if arch.name == "bert" else 0
    return embeddings + sizes.layers * layer + pooler


def _llama_like(config: dict[str, Any], sizes: Dims, vocab: int, gates: int) -> int:
    h, inner = sizes.hidden, sizes.intermediate
    qkv_bias = config.get("model_type") == "qwen2" or bool(config.get("attention_bias", False))
    o_bias = bool(config.get("attention_bias", False)) and config.get("model_type") != "qwen2"
    mlp_bias = bool(config.get("mlp_bias", False))
    attention = (sum(_linear(*sizes.projection(role), qkv_bias) for role in ("q", "k", "v"))
                 + _linear(*sizes.projection("o"), o_bias))
    mlp = gates * _linear(h, inner, mlp_bias) + _linear(inner, h, mlp_bias)
    layer = attention + mlp + 2 * h  # two RMSNorm weights
    return vocab * h + sizes.layers * layer + h  # embeddings, layers, final norm


def budget_limit(config: dict[str, Any], space) -> tuple[int, int] | None:
    """(the supernet's PEFT parameters, the backbone's), or None when either is unknown."""
    supernet, backbone = supernet_params(config, space), backbone_params(config)
    return None if supernet is None or backbone is None else (supernet, backbone)


def check_budget(budget: str | int, config: dict[str, Any] | None, space, field: str = "budget") -> None:
    """Raise SpecError(`field`) when `budget` asks for more parameters than the whole supernet holds (a search
    would prune nothing), saying the maximum; nothing when the sizes cannot be known from `config`."""
    limit = budget_limit(config, space) if config else None
    if limit is None:
        return
    supernet, backbone = limit
    wanted = budget_params(budget, backbone)
    if wanted <= supernet:
        return
    kind, _ = parse_budget(budget)
    share = max_share(supernet, backbone)
    given = f"{budget} of {backbone:,} backbone parameters = {wanted:,}" if kind == "fraction" else f"{wanted:,}"
    raise SpecError(field, f"at most {supernet:,} parameters ({share}% of the backbone): the whole supernet of "
                           f"this space holds that many, and a larger budget prunes nothing; got {given}")


def check_problem(problem: str, config: dict[str, Any] | None, field: str = "task.problem") -> None:
    """Raise SpecError(`field`) when the model's family cannot learn `problem` (a completion on an encoder);
    nothing when the family is unknown from `config`."""
    arch = architecture(config) if config else None
    if arch is not None and problem not in arch.problems:
        raise SpecError(field, f"a {arch.name} model is an {arch.kind}: it learns {' or '.join(arch.problems)}, "
                               f"not {problem} (completion needs a decoder language model, e.g. a LLaMA-style one)")


def max_share(supernet: int, backbone: int) -> str:
    """The largest percentage (4 decimals, rounded down, as a budget would be written) whose budget fits in
    `supernet` parameters; "0" when even 0.0001% is too many."""
    # In units of 0.0001%. A share's budget is truncated to whole parameters, so the largest one may lie a little
    # above supernet / backbone: start where supernet + 1 would begin, and step down to the first that fits.
    ticks = min(math.floor((supernet + 1) / backbone * 100 * 10_000), 100 * 10_000)
    while ticks > 0 and budget_params(f"{_decimal(ticks)}%", backbone) > supernet:
        ticks -= 1
    return _decimal(ticks)


def _decimal(ticks: int) -> str:
    """ticks / 10,000 in plain decimal notation (never an exponent, which a budget cannot hold)."""
    whole, rest = divmod(ticks, 10_000)
    return f"{whole}.{rest:04d}".rstrip("0").rstrip(".")


def _linear(fan_in: int, fan_out: int, bias: bool) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
