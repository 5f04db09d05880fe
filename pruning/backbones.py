"""Loading a backbone (a base model with a task head) and its tokenizer, resolving model names, choosing the device."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from .bundled import bundled_path, gguf_source, installed_models
from .sizes import check_problem, read_config


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers 5 prints a load report and progress bars for every model load; a search loads several."""
    hf_logging = transformers.utils.logging
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_model(model_id: str) -> str:
    """A local path as is; a bundled model's name to its installed path (a GGUF one is converted there first, once);
    anything else is a hub id."""
    path = model_id if Path(model_id).exists() else bundled_path(model_id) or model_id
    source = gguf_source(path)
    if source is not None:
        convert_gguf(source, Path(path))
        return path
    if not Path(path).exists() and path.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"model {model_id}: no such directory")
    return path


SOURCE_RECORD = "peftsearch_source.json"  # in a converted folder: the GGUF it came from


def convert_gguf(source: Path, folder: Path) -> None:
    """Dequantise the GGUF `source` once into `folder` (safetensors, config, tokenizer with its chat template):
    a load from there takes seconds, not the GGUF's dequantisation each time. Nothing to do when `folder` holds
    this file's conversion already. Written beside and renamed into place, so concurrent loads never see half."""
    record = {"gguf": source.name, "bytes": source.stat().st_size}
    if (folder / SOURCE_RECORD).exists() and json.loads((folder / SOURCE_RECORD).read_text()) == record:
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".{folder.name}.{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain fp32 now: save them as such, loadable without gguf
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / SOURCE_RECORD).write_text(json.dumps(record))
    shutil.rmtree(folder, ignore_errors=True)  # a stale conversion (another GGUF), if any
    try:
        partial.rename(folder)
    except OSError:  # another process put its conversion there first
        shutil.rmtree(partial, ignore_errors=True)


def portable_name(model_id: str) -> str:
    """What a result records as its base model: a bundled model's name rather than where it is installed on this
    machine, a hub id as is (also for a snapshot in the hub's cache, `models--org--name/snapshots/<commit>`), a
    local folder by its name (its absolute path means nothing elsewhere)."""
    path = Path(model_id)
    if not path.exists():
        return model_id
    resolved = path.resolve()
    for name, installed in installed_models().items():
        if Path(installed).resolve() == resolved:
            return name
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
        return resolved.parent.parent.name.removeprefix("models--").replace("--", "/")
    return resolved.name


def load_tokenizer(model_id: str):
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(model_id))
    if tokenizer.pad_token_id is None:  # decoder families ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_class(problem: str) -> type:
    """The transformers class a problem needs: a language model for completion, else a classifier head."""
    return AutoModelForCausalLM if problem == "completion" else AutoModelForSequenceClassification


def load_model(model_id: str, num_labels: int, problem: str, pad_token_id: int | None = None, *,
               load_in_4bit: bool = False, device: torch.device | None = None) -> torch.nn.Module:
    """The backbone with a task head (a completion task: the language model as it is, its own output layer is
    the head and stays frozen). `model.newly_initialised` names the tensors the checkpoint did not hold (the
    head, and e.g. a pooler the checkpoint lacks): randomly initialised here, so a result must save them.
    With `load_in_4bit`, the transformer layers' projections are quantised as they load onto `device` (QLoRA)."""
    config = read_config(model_id)
    check_problem(problem, config)  # an encoder asked to complete text: say so, not a warning
    head = {} if problem == "completion" else {
        "num_labels": num_labels,
        "problem_type": "regression" if problem == "regression" else "single_label_classification",
        "ignore_mismatched_sizes": True,  # a checkpoint's own head may have another label count
    }
    if load_in_4bit:
        head.update(four_bit(config, device or torch.device("cpu")))
    with quiet_transformers():
        model, info = model_class(problem).from_pretrained(resolve_model(model_id), output_loading_info=True,
                                                           **head)
    if load_in_4bit:
        keep_4bit_differentiable(model)
    model.newly_initialised = sorted(set(info["missing_keys"]) | {name for name, *_ in info["mismatched_keys"]})
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model.eval()


def four_bit(config: dict | None, device: torch.device) -> dict:
    """from_pretrained's arguments for QLoRA: NF4 with double quantisation for every linear layer inside the
    transformer layers, computing in bf16 on CUDA (fp32 on CPU); everything outside them (embeddings, pooler, task
    head, language-model head) stays as it is, since the head trains and a pooler may be newly initialised."""
    import importlib.util

    from transformers import BitsAndBytesConfig

    from .arch import ARCHITECTURES
    from .sizes import architecture

    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("train.load_in_4bit needs bitsandbytes: pip install 'peftsearch[qlora]'")
    arch = architecture(config or {})
    if arch is None:
        raise ValueError(f"model type {(config or {}).get('model_type')!r} has no architecture map; supported: "
                         f"{', '.join(sorted(ARCHITECTURES))}")
    layers = re.escape(arch.layers)
    return {"quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                llm_int8_skip_modules=[rf"(?!{layers}\.).*"]),  # a regex: every module outside the layers
            "device_map": {"": device}}


def keep_4bit_differentiable(model: torch.nn.Module) -> None:
    """bitsandbytes repacks a 4-bit weight for its fast CPU kernel the first time the layer runs in eval mode
    without grad (an evaluation, or any forward of a frozen layer on the embeddings), and from then on computes it
    with an op that has no backward: the units below that layer would silently stop getting gradients through it.
    The search evaluates between training steps, so the weights stay in the layout that backpropagates."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Gradient checkpointing, non-reentrant: the frozen backbone's inputs need no grad for the LoRA, adapters and
    prefixes inside a checkpointed layer to get theirs (the reentrant variant would give them none)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
