"""The one place a job request becomes a `pruning.SearchSpec`.

The request body (`JobCreate`) is derived from the engine's spec classes: its `search` part is `SearchSpec` with
every field optional (same types, bounds, defaults, descriptions and cross-field checks), less the fields the
service sets itself. So the API validates a request at the door, before any query, and OpenAPI documents every
option. Then model names resolve to local paths (within the deployment's and the model's limits), dataset ids to
stored files, and the spec is validated whole. Errors name the request's field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from datetime import datetime, timezone
from operator import attrgetter
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from pruning.sizes import check_budget, read_config
from pruning.spec import SearchSpec, SpecError, TaskSpec

from .models import STATUSES
from .settings import Settings
from .webhooks import WebhookUrl

INT64 = 2**63 - 1  # what the database's integers hold
SEED_MAX = 2**32 - 1  # numpy's seed range
# What a job request sets outside `search`: the model and budget at the top, the task by its dataset id, and
# the device by where the deployment's workers run.
SET_BY_SERVICE = ("model", "task", "budget", "device")
MAX_METADATA_BYTES, MAX_METADATA_DEPTH = 4096, 8  # a job's metadata: a label set, not a store
# What a job request says about the job, not about its search: kept apart from the job's request (columns, a
# webhook of their own), and in what an idempotent replay must match only when given.
ABOUT_THE_JOB = {"name", "metadata", "webhook_url"}


def overrides_model(cls: type, name: str, exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """A pydantic model of the spec dataclass `cls` (nested dataclasses too) whose fields may all be left out:
    each keeps its annotation (type, bounds, description) and takes the engine's default, the class's
    `cross_checks` validator runs on it, and `model_dump(exclude_unset=True)` gives what the caller set."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, Any] = {}
    for spec_field in dataclasses.fields(cls):
        if spec_field.name in exclude:
            continue
        hint = hints[spec_field.name]
        base, *metadata = typing.get_args(hint) if typing.get_origin(hint) is Annotated else (hint,)
        if dataclasses.is_dataclass(base):
            part = overrides_model(base, base.__name__.removesuffix("Spec") + "Overrides")
            fields[spec_field.name] = (Annotated[(part, *metadata)], Field(default_factory=part))
        else:
            fields[spec_field.name] = (hint, spec_field.default)
    checks = getattr(cls, "cross_checks", None)
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=cls.__doc__,
                        __validators__={"cross_checks": model_validator(mode="after")(checks)} if checks else None,
                        **fields)


SearchOverrides = overrides_model(SearchSpec, "SearchOverrides", exclude=SET_BY_SERVICE)
Budget = typing.get_type_hints(SearchSpec, include_extras=True)["budget"]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), json_schema_extra={"examples": [
        {"model": "all-MiniLM-L6-v2", "dataset_id": "ds_0193f2a4c1d2a1b2c3d4e5f6", "budget": "0.5%",
         "search": {"schedule": {"rounds": 4, "steps_per_round": 30}, "train": {"steps": 300}}}]})

    model: str = Field(description="A base model name from GET /v1/models.")
    dataset_id: str = Field(description="An uploaded dataset (POST /v1/datasets).")
    budget: Budget = "0.5%"
    search: SearchOverrides = Field(default_factory=SearchOverrides, description=(  # type: ignore[valid-type]
        "Overrides of the engine's SearchSpec (pruning/spec.py); every field is optional. The model, budget and "
        "task (by its dataset_id) are set at the top; the deployment's workers choose the device."))
    name: str | None = Field(None, min_length=1, max_length=200, description="Your label for the job.")
    metadata: dict[str, Any] | None = Field(None, description=(
        f"Your own JSON object, returned as given: at most {MAX_METADATA_BYTES} bytes as compact JSON, nested "
        f"at most {MAX_METADATA_DEPTH} levels."))
    webhook_url: WebhookUrl | None = Field(None, description=(  # type: ignore[valid-type]
        "Notify this URL when the job ends (job.succeeded, job.failed, job.cancelled), besides your webhooks "
        "for all jobs (POST /v1/webhooks). The answer's `webhook_secret` signs its deliveries."))

    @model_validator(mode="before")
    @classmethod
    def storable(cls, data: Any) -> Any:
        check_values(data, "")
        return data

    @field_validator("metadata")
    @classmethod
    def small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_METADATA_BYTES:
            raise SpecError("", f"must be at most {MAX_METADATA_BYTES} bytes as compact JSON, got {size}")
        if _depth(value) > MAX_METADATA_DEPTH:
            raise SpecError("", f"must be nested at most {MAX_METADATA_DEPTH} levels deep")
        return value

    def as_submitted(self) -> dict[str, Any]:
        """What an idempotent replay must match: the top-level fields, the search fields the caller set, and the
        name, metadata and webhook URL when given (left out when not, as they were before jobs had them). The job
        keeps it as its request, less those three (their own columns, and the job's webhook)."""
        about = {k: v for k, v in self.model_dump(mode="json", include=ABOUT_THE_JOB).items() if v is not None}
        return {**self.model_dump(mode="json", exclude={"search", *ABOUT_THE_JOB}),
                "search": self.search.model_dump(mode="json", exclude_unset=True), **about}


class JobFilters(BaseModel):
    """What a list of jobs is narrowed to (GET /v1/jobs): every field optional, all of them together. The
    creation range is half-open, created_after <= created_at < created_before; a time without a zone is UTC."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    status: list[Literal[STATUSES]] | None = Field(  # type: ignore[valid-type]
        None, description="One status, or several (`status=failed&status=cancelled`).")
    model: str | None = Field(None, max_length=200, description="A base model name.")
    dataset_id: str | None = Field(None, max_length=40)
    created_after: datetime | None = Field(None, description="ISO 8601, e.g. 2026-12-01T00:00:00Z (inclusive).")
    created_before: datetime | None = Field(None, description="ISO 8601 (exclusive).")

    @field_validator("created_after", "created_before")
    @classmethod
    def utc(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value

    @model_validator(mode="after")
    def ordered(self) -> JobFilters:
        if self.created_after and self.created_before and self.created_after >= self.created_before:
            raise SpecError("created_before", "must be later than created_after")
        return self


def _depth(value: Any) -> int:
    """Levels of objects and arrays: 1 for {"a": 1}, 2 for {"a": [1]}."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


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


def resolve_model(models: dict[str, str], name: str) -> str:
    if name not in models:
        known = ", ".join(sorted(models)) or "none are configured"
        raise SpecError("model", f"unknown model {name!r}; this deployment has: {known}")
    return models[name]


def model_config(path: str) -> dict[str, Any]:
    """The base model's config.json (no torch): a local folder, or a hub id in the local hub cache; {} when it
    cannot be read offline."""
    return read_config(path) or {}


def admit(body: JobCreate, settings: Settings) -> str:
    """What a request is checked against besides its own fields, without a query: the model must be on offer,
    the search within the deployment's and the model's limits, and the budget within the supernet (a larger one
    prunes nothing; unchecked when the model's config cannot be read). Returns the model's local path."""
    path = resolve_model(settings.model_paths, body.model)
    config = model_config(path)
    _check_limits(body.search, settings, config)
    check_budget(body.budget, config, body.search.space)
    return path


def build_spec(body: JobCreate, model_path: str, task: TaskSpec) -> dict[str, Any]:
    """The validated SearchSpec as a dict (what the worker runs)."""
    overrides = body.search.model_dump(exclude_unset=True)
    return SearchSpec.from_dict({**overrides, "model": model_path, "budget": body.budget, "task": task}).to_dict()


def _check_limits(search: Any, settings: Settings, config: dict[str, Any]) -> None:
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
        value = attrgetter(field)(search)
        if cap is not None and value is not None and value > cap:
            raise SpecError(f"search.{field}", f"must be at most {cap} ({why}), got {value}")


def _positions(config: dict[str, Any]) -> int | None:
    """Tokens the model can take: its position embeddings (RoBERTa-style models reserve two, after padding)."""
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int):
        return None
    return positions - 2 if "roberta" in str(config.get("model_type", "")) else positions
