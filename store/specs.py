"""The one place a job request becomes a `pruning.SearchSpec`: model names resolve to local paths, dataset ids
to stored files, and the optional `search` overrides fill in the rest. Errors name the request's field."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from operator import attrgetter
from pathlib import Path
from typing import Any

from pruning.spec import SearchSpec, SpecError

from .datasets import task_spec
from .models import Dataset
from .settings import Settings, get_settings

INT64 = 2**63 - 1  # what the database's integers hold
SEED_MAX = 2**32 - 1  # numpy's seed range

SET_BY_SERVICE = {
    "model": "choose it with the top-level 'model' field",
    "task": "upload a dataset and pass its 'dataset_id'",
    "budget": "use the top-level 'budget' field",
    "device": "the deployment's workers decide where jobs run",
}


def resolve_model(models: dict[str, str], name: str) -> str:
    if name not in models:
        known = ", ".join(sorted(models)) or "none are configured"
        raise SpecError("model", f"unknown model {name!r}; this deployment has: {known}")
    return models[name]


def check_values(value: Any, at: str) -> None:
    """Refuse what no column can store: NUL in a string, integers beyond 64 bits, non-finite numbers."""
    if isinstance(value, str):
        if "\x00" in value:
            raise SpecError(at, "must not contain NUL characters")
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if abs(value) > INT64:
            raise SpecError(at, f"integer out of range (at most {INT64} in magnitude)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(at, "must be a finite number")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_values(key, at)
            check_values(item, f"{at}.{key}" if at else str(key))
    elif isinstance(value, list):
        for item in value:
            check_values(item, at)


def model_config(path: str) -> dict[str, Any]:
    """The base model's config.json (no torch); {} when it cannot be read."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def build_spec(*, models: dict[str, str], model: str, dataset: Dataset, dataset_root: Path, budget: str | int,
               search: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """The validated SearchSpec as a dict (what the worker runs), within the deployment's and the model's limits.
    Raises SpecError(param, message), where param names the request field: 'model', 'budget', 'dataset_id' or
    'search.<field>'."""
    for key in search:
        if key in SET_BY_SERVICE:
            raise SpecError(f"search.{key}", f"not allowed here: {SET_BY_SERVICE[key]}")
    _check_lists(SearchSpec, search, "search")
    path = resolve_model(models, model)
    data = {**search, "model": path, "budget": budget, "task": dataclasses.asdict(task_spec(dataset, dataset_root))}
    try:
        spec = SearchSpec.from_dict(data)
    except SpecError as e:
        raise SpecError(_request_field(e.field), e.message) from e
    _check_limits(spec, settings or get_settings(), model_config(path))
    return spec.to_dict()


def _check_lists(cls: type, data: Any, at: str) -> None:
    """Sequence fields (space.types, space.lora.targets, policy.block_cuts) take JSON arrays: a string would be
    read as its characters."""
    if not isinstance(data, dict):
        return  # the engine's validation names the field
    for name, hint in typing.get_type_hints(cls).items():
        if name not in data:
            continue
        if dataclasses.is_dataclass(hint):
            _check_lists(hint, data[name], f"{at}.{name}")
        elif typing.get_origin(hint) is tuple and not isinstance(data[name], list):
            raise SpecError(f"{at}.{name}", f"must be an array, got {type(data[name]).__name__}")


def _check_limits(spec: SearchSpec, settings: Settings, config: dict[str, Any]) -> None:
    hidden, positions = config.get("hidden_size"), _positions(config)
    module_cap = min(settings.max_module_size, hidden or settings.max_module_size)
    module_why = "the model's hidden size" if module_cap == hidden else "PEFTSEARCH_MAX_MODULE_SIZE"
    limits = [
        ("schedule.rounds", settings.max_rounds, "PEFTSEARCH_MAX_ROUNDS"),
        ("schedule.steps_per_round", settings.max_steps, "PEFTSEARCH_MAX_STEPS"),
        ("train.steps", settings.max_steps, "PEFTSEARCH_MAX_STEPS"),
        ("policy.warmup_steps", settings.max_steps, "PEFTSEARCH_MAX_STEPS"),
        ("train.batch_size", settings.max_batch_size, "PEFTSEARCH_MAX_BATCH_SIZE"),
        ("train.eval_batch_size", settings.max_batch_size, "PEFTSEARCH_MAX_BATCH_SIZE"),
        ("space.lora.rank", module_cap, module_why),
        ("space.adapter.size", module_cap, module_why),
        ("space.prefix.length", settings.max_module_size, "PEFTSEARCH_MAX_MODULE_SIZE"),
        ("train.max_length", positions, "the model's position embeddings"),
        ("seed", SEED_MAX, "the random generators' seed range"),
    ]
    for field, cap, why in limits:
        value = attrgetter(field)(spec)
        if cap is not None and value > cap:
            raise SpecError(f"search.{field}", f"must be at most {cap} ({why}), got {value}")


def _positions(config: dict[str, Any]) -> int | None:
    """Tokens the model can take: its position embeddings (RoBERTa-style models reserve two, after padding)."""
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int):
        return None
    return positions - 2 if "roberta" in str(config.get("model_type", "")) else positions


def _request_field(spec_field: str) -> str:
    field = spec_field.removeprefix("spec.")
    top = field.split(".")[0]
    if top in ("model", "budget"):
        return top
    if top == "task":
        return "dataset_id"
    return f"search.{field}"
