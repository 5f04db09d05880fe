"""Architecture maps: where a model family keeps its layers, projections and FFN.

Everything else in the engine addresses a backbone through roles ("q", "o", "ffn_out", ...) of a layer, never
through a family's attribute names, so supporting a new family is one more map here. Paths are dotted and
relative to a layer, except `layers` (relative to the model root).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .spec import PROBLEMS, ROLES

ModelKind = Literal["encoder", "decoder"]  # an encoder labels text; a decoder (causal LM) also learns completions

if TYPE_CHECKING:  # annotations only: the maps themselves are plain data, read without torch (sizes.py)
    from torch import nn


@dataclass(frozen=True)
class ArchitectureMap:
    name: str
    layers: str  # the ModuleList of transformer layers
    attention: str  # the self-attention module, whose forward calls transformers' attention interface
    q: str
    k: str
    v: str
    o: str  # attention output projection (input = concatenated heads)
    ffn_in: tuple[str, ...]  # FFN input projections (output = intermediate neurons); two for gated MLPs
    ffn_out: str  # FFN output projection (input = intermediate neurons)
    head: tuple[str, ...]  # the task head of a classifier, trained by every method (relative to the root)
    embeddings: str  # relative to the model root; counted apart from the prunable layers
    attention_includes_o: bool = False  # True when the attention module applies `o` itself (LLaMA)
    num_heads_attr: str = "num_attention_heads"
    num_kv_heads_attr: str | None = None  # grouped-query attention: config attribute of the K/V head count
    decoder: bool = False  # a causal language model: it also learns completions; an encoder only labels text

    @property
    def kind(self) -> ModelKind:
        return "decoder" if self.decoder else "encoder"

    @property
    def problems(self) -> tuple[str, ...]:
        """The task kinds (TaskSpec.problem) a model of this family can learn."""
        return PROBLEMS if self.decoder else tuple(p for p in PROBLEMS if p != "completion")

    def role_paths(self, role: str) -> tuple[str, ...]:
        if role not in ROLES:
            raise ValueError(f"unknown projection role {role!r}; roles: {', '.join(ROLES)}")
        return self.ffn_in if role == "ffn_in" else (getattr(self, role),)

    def num_heads(self, config) -> int:
        return getattr(config, self.num_heads_attr)

    def num_kv_heads(self, config) -> int:
        return getattr(config, self.num_kv_heads_attr) if self.num_kv_heads_attr else self.num_heads(config)

    def heads_per_kv(self, config) -> int:
        """Query heads sharing one key/value head (1 without grouped-query attention): what head pruning removes
        together, as one group."""
        return self.num_heads(config) // self.num_kv_heads(config)

    def head_dim(self, config) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // self.num_heads(config)


def _bert_like(name: str, root: str) -> ArchitectureMap:
    return ArchitectureMap(
        name=name,
        layers=f"{root}.encoder.layer",
        attention="attention.self",
        q="attention.self.query",
        k="attention.self.key",
        v="attention.self.value",
        o="attention.output.dense",
        ffn_in=("intermediate.dense",),
        ffn_out="output.dense",
        head=("classifier",),
        embeddings=f"{root}.embeddings",
    )


LLAMA = ArchitectureMap(
    name="llama",
    layers="model.layers",
    attention="self_attn",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    ffn_in=("mlp.gate_proj", "mlp.up_proj"),
    ffn_out="mlp.down_proj",
    head=("score",),
    embeddings="model.embed_tokens",
    attention_includes_o=True,
    num_kv_heads_attr="num_key_value_heads",
    decoder=True,
)

# model_type (transformers config) -> map
ARCHITECTURES: dict[str, ArchitectureMap] = {
    "bert": _bert_like("bert", "bert"),
    "roberta": _bert_like("roberta", "roberta"),
    "xlm-roberta": _bert_like("xlm-roberta", "roberta"),
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
}



def architecture_of(model: nn.Module) -> ArchitectureMap:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"model type {model_type!r} has no architecture map; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


def base_layer(module: nn.Module) -> nn.Module:
    """The frozen projection itself, under a peft LoRA wrapper if there is one."""
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def projection(model: nn.Module, arch: ArchitectureMap, layer: int, role_path: str) -> nn.Module:
    """The (unwrapped) projection at `role_path` (e.g. arch.q) of `layer`."""
    return base_layer(model.get_submodule(f"{arch.layers}.{layer}.{role_path}"))


def layers_of(model: nn.Module, arch: ArchitectureMap) -> nn.ModuleList:
    return model.get_submodule(arch.layers)


def layer_path(arch: ArchitectureMap, layer: int, relative: str) -> str:
    return f"{arch.layers}.{layer}.{relative}"


def head_paths(model: nn.Module, arch: ArchitectureMap) -> tuple[str, ...]:
    """The task head's modules; none for a language model (a completion task), whose pretrained output layer
    predicts the tokens and stays frozen with the backbone: only the units train."""
    return () if model.get_output_embeddings() is not None else arch.head


def head_parameters(model: nn.Module, arch: ArchitectureMap) -> list[nn.Parameter]:
    return [p for path in head_paths(model, arch) for p in model.get_submodule(path).parameters()]


def parameter_count(param) -> int:
    """Parameters a tensor stands for: a 4-bit weight (bitsandbytes) packs two in a byte, and its quantisation
    state knows the weight's real shape; the budget and the backbone's size count the model, not its storage."""
    state = getattr(param, "quant_state", None)
    return state.shape.numel() if state is not None else param.numel()


def backbone_parameter_count(model: nn.Module, arch: ArchitectureMap) -> int:
    """Every pretrained parameter except the task head (embeddings included), LoRA weights excluded."""
    head = {id(p) for p in head_parameters(model, arch)}
    return sum(parameter_count(p) for n, p in model.named_parameters() if id(p) not in head and not is_lora_name(n))


def layer_parameter_count(model: nn.Module, arch: ArchitectureMap) -> int:
    """Pretrained parameters of the transformer layers only: the part head and neuron pruning can shrink."""
    return sum(parameter_count(p) for n, p in layers_of(model, arch).named_parameters() if not is_lora_name(n))


def is_lora_name(name: str) -> bool:
    # peft names every LoRA tensor "...lora_A.<adapter>.weight" / "lora_B" / "lora_embedding_*"
    return ".lora_" in f".{name}"
