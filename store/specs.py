"""The one place a job request becomes a `pruning.SearchSpec`: model names resolve to local paths, dataset ids
to stored files, and the optional `search` overrides fill in the rest. Errors name the request's field."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pruning.spec import SearchSpec, SpecError

from .datasets import task_spec
from .models import Dataset

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


def build_spec(*, models: dict[str, str], model: str, dataset: Dataset, dataset_root: Path, budget: str | int,
               search: dict[str, Any]) -> dict[str, Any]:
    """The validated SearchSpec as a dict (what the worker runs). Raises SpecError(param, message), where param
    names the request field: 'model', 'budget', 'dataset_id' or 'search.<field>'."""
    for key in search:
        if key in SET_BY_SERVICE:
            raise SpecError(f"search.{key}", f"not allowed here: {SET_BY_SERVICE[key]}")
    data = {**search, "model": resolve_model(models, model), "budget": budget,
            "task": dataclasses.asdict(task_spec(dataset, dataset_root))}
    try:
        return SearchSpec.from_dict(data).to_dict()
    except SpecError as e:
        raise SpecError(_request_field(e.field), e.message) from e


def _request_field(spec_field: str) -> str:
    field = spec_field.removeprefix("spec.")
    top = field.split(".")[0]
    if top in ("model", "budget"):
        return top
    if top == "task":
        return "dataset_id"
    return f"search.{field}"
