"""The result directory, and loading it back.

    adapter_config.json, adapter_model.safetensors  the LoRA part (+ task head), as stock peft writes it:
                                                    PeftModel.from_pretrained(base, dir) loads it
    peftsearch_config.json                          the whole configuration: units per layer with their sizes,
                                                    LoRA ranks, backbone pruning record, task, labels, metrics
    peftsearch_weights.safetensors                  every trained tensor (LoRA, adapters, prefixes, head, ...)
    trace.json                                      the search's rounds: what was removed, scores, metrics
    result.json                                     the SearchResult
    README.md                                       a short model card
    backbone.safetensors, config.json, tokenizer    with backbone.save_backbone: the pruned backbone itself,
                                                    so `load(dir)` needs no base model

`load(dir, base_model)` rebuilds the exact model from the base and these files; `evaluate(dir, base_model)`
re-scores it on the dev set recorded in the configuration; `merge(dir, dest)` writes a LoRA-only result as a plain
transformers model folder, the LoRA folded into the weights; `fold_lora(model)` folds it in memory, for any result.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .arch import architecture_of, head_paths
from .backbones import portable_name, resolve_device
from .spec import SearchSpec, SpaceSpec, TaskSpec, TrainSpec, _from_dict

FORMAT_VERSION = 1
FOUR_BIT_NOTE = ("the transformer layers' projections 4-bit NF4 (QLoRA), as the units trained on them; "
                 "`pruning.load` quantises them again (bitsandbytes), stock peft loads the LoRA onto any precision")
CONFIG = "peftsearch_config.json"
WEIGHTS = "peftsearch_weights.safetensors"
BACKBONE = "backbone.safetensors"


def configuration_of(model, spec: SearchSpec, task, metrics: dict[str, float],
                     stock_peft: dict[str, Any] | None = None, example: dict[str, str] | None = None,
                     prior: str | None = None) -> dict[str, Any]:
    units = model.unit_keys()
    layers = []
    for layer in range(model.num_layers):
        here = {u.kind: u.describe() for u in model.units.values() if u.layer == layer}
        layers.append({"layer": layer, "modules": here})
    return {
        "format_version": FORMAT_VERSION,
        "base_model": portable_name(spec.model),
        "base_model_path": spec.model,  # where it was on the machine that searched
        "architecture": model.arch.name,
        "task": dataclasses.asdict(spec.task),
        "problem": task.problem,
        "labels": task.labels,
        "metric_names": list(task.metric_names),
        "max_length": spec.train.max_length,
        "load_in_4bit": spec.train.load_in_4bit,  # the base's projections as the units trained on them
        "space": dataclasses.asdict(spec.space),
        "units": units,
        "lora_ranks": model.lora_ranks(),
        "layers": layers,
        "pruned_layers": [entry["layer"] for entry in layers if not entry["modules"]],
        "backbone": getattr(model, "backbone_record", None),
        "trainable_params": model.peft_params(),
        "metrics": metrics,
        "stock_peft": stock_peft,
        "example_generation": example,  # a completion task: the first dev prompt, its reference and the answer
        "prior": prior,  # why the search kept its prior rather than pruning (schedule.unlearned), if it did
    }


def save(out_dir: str | Path, model, *, spec: SearchSpec, task, metrics: dict[str, float], records,
         trace_extra: dict, stock_peft: dict[str, Any] | None = None, example: dict[str, str] | None = None,
         prior: str | None = None) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = configuration_of(model, spec, task, metrics, stock_peft, example, prior)
    (out / CONFIG).write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous().cpu() for k, v in model.trained_state().items()}, out / WEIGHTS,
              metadata={"format": "peftsearch", "format_version": str(FORMAT_VERSION)})
    _save_peft_lora(out, model, spec, config)
    if spec.backbone.save_backbone:
        _save_backbone(out, model, spec)
    trace = {"rounds": [dataclasses.asdict(r) for r in records], **trace_extra}
    (out / "trace.json").write_text(json.dumps(trace, indent=2))
    (out / "README.md").write_text(_model_card(config, records))
    return config


def write_result(out_dir: str | Path, result) -> None:
    (Path(out_dir) / "result.json").write_text(json.dumps(result.to_dict(), indent=2))


def _save_peft_lora(out: Path, model, spec: SearchSpec, config: dict) -> None:
    """Write the LoRA part with peft itself onto a clean copy of the base, so stock peft reads it back."""
    from peft import LoraConfig, get_peft_model

    from .backbones import load_model

    ranks = config["lora_ranks"]
    if not ranks:
        return  # no LoRA unit survived: nothing for peft to load
    base = load_model(spec.model, model.model.config.num_labels, config["problem"],
                      model.model.config.pad_token_id)
    if config["backbone"]:
        from .backbone import apply_backbone_record

        apply_backbone_record(base, config["backbone"], model.backbone_scales)
    base.name_or_path = config["base_model"]  # peft records this, not the config's base_model_name_or_path
    lora = spec.space.lora
    peft_config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=sorted(ranks),
        rank_pattern={p: r for p, r in ranks.items() if r != lora.rank},
        alpha_pattern={p: lora.alpha * r / lora.rank for p, r in ranks.items() if r != lora.rank},
        modules_to_save=list(head_paths(model.model, model.arch))
        + sorted({name.rsplit(".", 1)[0] for name in model.initialised}),
        base_model_name_or_path=config["base_model"],
        task_type="CAUSAL_LM" if config["problem"] == "completion" else None)  # a PeftModelForCausalLM generates
    peft_model = get_peft_model(base, peft_config)
    ours = dict(model.model.named_parameters())
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            source = name.removeprefix("base_model.model.").replace(".modules_to_save.default.", ".")
            if ".lora_" in name or ".modules_to_save." in name:
                param.copy_(ours[source])
    peft_model.save_pretrained(out)


def _save_backbone(out: Path, model, spec: SearchSpec) -> None:
    """The pruned backbone's own weights (LoRA and units excluded), with its config and tokenizer."""
    from .arch import is_lora_name
    from .backbones import load_tokenizer

    state = {}
    for name, tensor in model.model.state_dict().items():
        if is_lora_name(name):
            continue
        state[name.replace(".base_layer.", ".")] = tensor.contiguous().cpu()  # names of the unwrapped model
    save_file(state, out / BACKBONE, metadata={"format": "peftsearch-backbone"})
    model.model.config.save_pretrained(out)
    load_tokenizer(spec.model).save_pretrained(out)


def load(out_dir: str | Path, base_model: str | None = None, device: str = "cpu"):
    """Rebuild the searched model: the base (pruned as recorded), its units, and their trained weights. Without
    `base_model`, a saved pruned backbone is used if the directory has one, else the recorded base model.
    Returns the Supernet in eval mode; call it with tokenizer outputs to get logits."""
    from .backbones import load_model, load_tokenizer
    from .supernet import Supernet

    out, target = Path(out_dir), resolve_device(device)
    config = read_config(out)
    space = _from_dict(SpaceSpec, config["space"], "space")
    tensors = load_file(out / WEIGHTS)
    if base_model is None and (out / BACKBONE).exists():
        tokenizer = load_tokenizer(str(out))
        model = _load_saved_backbone(out, config)
        supernet = Supernet(model, space, config["units"], config["lora_ranks"])
        supernet.backbone_record = config["backbone"]
        supernet.backbone_scales = {k: v for k, v in tensors.items() if k.startswith("backbone.")}
    else:
        base_model = base_model or recorded_base(config)
        tokenizer = load_tokenizer(base_model)
        num_labels = len(config["labels"]) if config["labels"] else 1
        model = load_model(base_model, num_labels, config["problem"], tokenizer.pad_token_id,
                           load_in_4bit=config.get("load_in_4bit", False), device=target)
        if architecture_of(model).name != config["architecture"]:
            raise ValueError(f"{base_model} is a {architecture_of(model).name} model; the result was searched "
                             f"on a {config['architecture']} model")
        supernet = Supernet(model, space, config["units"], config["lora_ranks"], backbone=config["backbone"],
                            scales=tensors)
    supernet.load_trained_state(tensors)
    supernet.tokenizer = tokenizer
    return supernet.to(target).eval()


def merge(out_dir: str | Path, dest: str | Path, base_model: str | None = None) -> Path:
    """Write the result as a plain transformers model folder in `dest`: every LoRA update folded into its
    projection's weight (W + scale x B A), the task head and the label map in place, the tokenizer beside it. It
    loads with `AutoModelForSequenceClassification` (`AutoModelForCausalLM` for a completion task) and needs
    neither peft nor this package, and computes what `load(out_dir)` computes. Only LoRA merges: an adapter is
    a non-linear branch and a prefix extends the attention, so a result that kept either (or whose backbone was
    pruned to per-layer sizes a transformers config cannot state, or stored in 4 bits) is refused with the reason."""
    out, dest = Path(out_dir), Path(dest)
    config = read_config(out)
    kept = [key for key in config["units"] if not key.startswith("lora.")]
    why = (f"the search kept {', '.join(kept)}, which fold into no weight (a search with --types lora keeps LoRA "
           "only)" if kept else
           "its backbone was pruned, to per-layer sizes a transformers config cannot state (use pruning.load, or "
           "backbone.save_backbone)" if config["backbone"] else
           "its base model is stored in 4 bits" if config.get("load_in_4bit") else None)
    if why:
        raise ValueError(f"{out} cannot be merged: {why}")
    model = fold_lora(load(out, base_model))
    if config["labels"] and config["problem"] == "classification" and not config["task"].get("prompt_template"):
        model.model.config.id2label = {i: str(label) for i, label in enumerate(config["labels"])}
        model.model.config.label2id = {str(label): i for i, label in enumerate(config["labels"])}
    dest.mkdir(parents=True, exist_ok=True)
    model.model.save_pretrained(dest)
    model.tokenizer.save_pretrained(dest)
    return dest


def fold_lora(model):
    """Fold every LoRA unit of a loaded result into its projections' weights (W + scale x B A) and drop the units:
    the model computes the same with no LoRA branch to run, as a LoRA model is served. Adapters and prefixes stay
    (they fold into no weight); a pruned backbone stays pruned. Returns `model`, changed in place."""
    from .modules.lora.unit import ADAPTER

    lora = [unit for unit in model.units.values() if unit.kind == "lora"]
    for unit in lora:
        for target in unit.targets.values():
            target.merge(adapter_names=[ADAPTER])
    model.remove([unit.key for unit in lora])
    return model


def _load_saved_backbone(out: Path, config: dict):
    from transformers import AutoConfig

    from .backbone import apply_backbone_record
    from .backbones import model_class, quiet_transformers

    with quiet_transformers():
        model = model_class(config["problem"]).from_config(AutoConfig.from_pretrained(out))
    if config["backbone"]:
        apply_backbone_record(model, config["backbone"])  # shapes only: the saved weights overwrite it all
    model.load_state_dict(load_file(out / BACKBONE), strict=True)
    return model.eval()


def evaluate(out_dir: str | Path, base_model: str | None = None, task: TaskSpec | None = None,
             device: str = "cpu", data: str | Path | None = None) -> dict[str, float]:
    """Reload the result and score it: on `data` (a CSV/TSV/JSONL file with the columns the result was searched
    on, its labels mapped by the result's own label map), else on the dev set of `task` (default: the task it
    was searched on)."""
    from .data import load_task
    from .data.loaders import read_examples
    from .train import encode
    from .train import evaluate as evaluate_model

    config = read_config(Path(out_dir))
    recorded = _from_dict(TaskSpec, config["task"], "task")
    if data is not None:  # read (and check) the data before loading the model: a bad file fails in seconds
        examples = read_examples(recorded, data, config["labels"])
        metric_names = config["metric_names"]
    else:
        loaded = load_task(task or recorded)
        examples, metric_names = loaded.dev, loaded.metric_names
    model = load(out_dir, base_model, device)
    dev = encode(model.tokenizer, examples, config["max_length"], config["problem"])
    if config["problem"] == "completion" and data is None:  # as the search had it: exact match for short answers
        from .completion import completion_metric_names

        metric_names = completion_metric_names(dev)
    defaults, torch_device = TrainSpec(), resolve_device(device)  # the product's default evaluation batches
    return evaluate_model(model, dev, metric_names, defaults.eval_batch_size, model.tokenizer.pad_token_id,
                          torch_device, defaults.eval_tokens(torch_device.type))


def recorded_base(config: dict[str, Any]) -> str:
    """The base model a result names: the path it had where it was searched, if that exists here (a folder of the
    same name elsewhere may be another model), else its portable name (a bundled model, a hub id)."""
    path = config.get("base_model_path")
    return path if path and Path(path).exists() else config["base_model"]


def read_config(out: Path) -> dict[str, Any]:
    path = out / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{out} is not a peftsearch result directory (no {CONFIG})")
    config = json.loads(path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {config.get('format_version')} is not {FORMAT_VERSION}")
    return config


def _model_card(config: dict, records) -> str:
    from .result import format_backbone, format_metrics, format_unit, stock_peft_warning

    warning = stock_peft_warning(config.get("stock_peft"))
    types = config["space"]["types"]
    rows = "\n".join(f"| {e['layer']} | " + " | ".join(format_unit(kind, e["modules"].get(kind)) for kind in types)
                     + " |" for e in config["layers"])
    rounds = "\n".join(f"- round {r.round}: removed {', '.join(u.label() for u in r.removed) or 'nothing'}; "
                       f"{r.trainable_params:,} parameters left" for r in records)
    if config.get("prior"):
        rounds = f"No pruning rounds: {config['prior']}."
    if warning:
        loading = f"**Warning: {warning}**"
    else:
        loading = "`peft.PeftModel.from_pretrained(base_model, dir)` loads it all (LoRA and the task head)."
    return f"""# peftsearch result

{loading}

- base model: `{config['base_model']}` ({config['architecture']})
- task: {describe_task(config)}
- dev metrics: {format_metrics(config['metrics'], config['labels'])}
- trainable PEFT parameters: {config['trainable_params']:,}
- layers without any PEFT module: {config['pruned_layers'] or 'none'}
- backbone (speed mode): {format_backbone(config.get('backbone')) or 'not pruned'}
- base weights: {FOUR_BIT_NOTE if config.get('load_in_4bit') else 'as the base model stores them'}

| layer | {' | '.join(types)} |
|---|{'---|' * len(types)}
{rows}

{rounds}
{_example_section(config.get("example_generation"))}
`pruning.load(dir)` rebuilds the whole model (give the base model's path as a second argument if
`{config['base_model']}` is not found on this machine).
"""


def _example_section(example: dict[str, str] | None) -> str:
    if not example:
        return ""
    prompt = example["prompt"] if len(example["prompt"]) <= 600 else "..." + example["prompt"][-600:]
    return f"""
## Example generation (the first dev example, greedy)

Prompt:

```text
{prompt}
```

Reference: `{example['reference']!r}`

Generated: `{example['generated']!r}`
"""


def describe_task(config: dict) -> str:
    """"glue:sst2 (classification: negative, positive)" or "train.csv / dev.csv, text column ... (regression)"."""
    task = config["task"]
    if task.get("glue"):
        where = f"glue:{task['glue']}"
    elif config["problem"] == "completion" and not task.get("prompt_template"):  # the columns do not apply
        where = f"{Path(task['train']).name} / {Path(task['dev']).name} (prompt/completion or chat rows)"
    else:
        columns = ", ".join(f"{name} {task[key]!r}" for key, name in [
            ("text_column", "text"), ("text_pair_column", "pair"), ("label_column", "label")] if task.get(key))
        where = f"{Path(task['train']).name} / {Path(task['dev']).name} ({columns})"
    labels = config.get("labels")
    kind = config["problem"] if not task.get("prompt_template") else "classification by generating the label"
    words = task.get("label_words") or {}
    named = [f"{label} as {words[label]!r}" if label in words else str(label) for label in labels or []]
    kind = f"{kind}: {', '.join(named)}" if named else kind
    if task.get("prompt_template"):
        kind += f", prompt {task['prompt_template']!r}"
    return f"{where}, {kind}"
