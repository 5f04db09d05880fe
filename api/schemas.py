"""Request and response bodies. Separate from the tables: a column can change without changing the API."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, create_model

from pruning.arch import ModelKind
from pruning.result import PHASES, ProgressEvent, RoundRecord, SearchResult
from pruning.spec import PROBLEMS
from store.models import DELIVERY_STATUSES, STATUSES, Dataset, Job, Webhook
from store.webhooks import EVENT_TYPES, EventType, WebhookUrl

Status = Literal[STATUSES]  # type: ignore[valid-type]
T = TypeVar("T")


class ErrorBody(BaseModel):
    code: str = Field(examples=["invalid_request"])
    message: str
    param: str | None = Field(None, description="The request field at fault, when there is one.")


class ErrorOut(BaseModel):
    error: ErrorBody


class Page(BaseModel, Generic[T]):
    data: list[T]
    next: str | None = Field(None, description="Pass as `after` to get the next page; null on the last page.")

    @classmethod
    def of(cls, rows: list[Any], limit: int, convert: Callable[[Any], T], **fields: Any) -> Page[T]:
        """`rows` holds up to limit + 1 rows: one more than the page tells whether another page follows.
        `fields`: a subclass's own (JobPage's total)."""
        more = len(rows) > limit
        return cls(data=[convert(r) for r in rows[:limit]], next=str(rows[limit - 1].id) if more else None,
                   **fields)


def body_of(record: type, name: str, *, exclude: tuple[str, ...] = (), doc: str | None = None,
            **descriptions: str) -> type[BaseModel]:
    """A response body with the fields of one of the engine's records (a dataclass of pruning/result.py): their
    types and defaults, less `exclude`, so a field the engine adds shows up here by itself."""
    hints = typing.get_type_hints(record)
    fields: dict[str, Any] = {}
    for item in dataclasses.fields(record):
        if item.name in exclude:
            continue
        default = ({"default_factory": item.default_factory} if item.default_factory is not dataclasses.MISSING
                   else {"default": item.default} if item.default is not dataclasses.MISSING else {})
        fields[item.name] = (hints[item.name], Field(description=descriptions.get(item.name), **default))
    return create_model(name, __config__=ConfigDict(from_attributes=True, protected_namespaces=()),
                        __doc__=doc or record.__doc__, **fields)


PHASE = f"One of {', '.join(PHASES)}."
Progress = body_of(ProgressEvent, "Progress", exclude=("kind", "record"), doc="The latest progress of a job.",
                   phase=PHASE, done_steps="Training steps of the whole run done so far (all phases).",
                   total_steps="Training steps planned for the whole run (shrinks when learning ends early, unless "
                               "retrain is 'continue': those steps go to the retraining; shrinks by the rounds "
                               "when the search keeps its prior).",
                   eta_s="Estimated seconds left, at the pace of the steps done so far.")
# The search's outcome (pruning.SearchResult without its rounds: GET /v1/jobs/{id}/rounds has those).
JobResult = body_of(SearchResult, "JobResult", exclude=("out_dir", "rounds"), doc="The search's outcome.",
                    configuration="Module type per layer, ranks, sizes, backbone record; `prior`: why the "
                                  "search kept its prior instead of pruning, if it did.")
RoundOut = body_of(RoundRecord, "RoundOut", doc="One search round.")


class JobErrorOut(BaseModel):
    code: str
    message: str


class ArtifactOut(BaseModel):
    url: str
    sha256: str
    size_bytes: int


class JobFields(BaseModel):
    """What a job's summary and the whole job both show."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    status: Status
    name: str | None = Field(description="Your label, as submitted.")
    metadata: dict[str, Any] | None = Field(description="Your JSON object, as submitted.")
    model: str
    dataset_id: str
    budget: str | int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class JobWebhookOut(BaseModel):
    """The webhook given at submission (`webhook_url`); its deliveries: GET /v1/jobs/{id}/deliveries."""

    id: str
    url: str


class JobOut(JobFields):
    search: dict[str, Any]
    attempt: int
    progress: Progress | None
    result: JobResult | None
    error: JobErrorOut | None
    artifact: ArtifactOut | None
    webhook: JobWebhookOut | None = Field(None, description="The job's own webhook, when one was given.")
    estimate_s: float | None = Field(None, description=(
        "While queued: about how many seconds the job will run once a worker takes it, at most (its planned "
        "training steps and tokens per step, at the pace of this server's latest jobs on the same model); null "
        "before any job on the model has succeeded here, and once the job runs (progress.eta_s then)."))

    @classmethod
    def of(cls, job: Job, **fields: Any) -> JobOut:
        """`fields`: a subclass's own (JobCreated's webhook_secret)."""
        artifact = job.artifact and ArtifactOut(url=f"/v1/jobs/{job.id}/artifact", sha256=job.artifact.sha256,
                                                size_bytes=job.artifact.size_bytes)
        webhook = job.webhook and JobWebhookOut(id=job.webhook.id, url=job.webhook.url)
        return cls(id=job.id, status=job.status, name=job.name, metadata=job.job_metadata,
                   model=job.request["model"], dataset_id=job.dataset_id,
                   budget=job.request["budget"], search=job.request["search"], attempt=job.attempt,
                   created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
                   updated_at=job.updated_at, progress=job.progress, result=job.result, error=job.error,
                   artifact=artifact, webhook=webhook, **fields)


class JobCreated(JobOut):
    """The submitted job, with the secret of its own webhook."""

    webhook_secret: str | None = Field(None, description=(
        "Signs the deliveries to `webhook_url` (docs/client.md: verifying a delivery). Only in the submission's "
        "answer (and its idempotent replays): keep it."))

    @classmethod
    def of(cls, job: Job, estimate_s: float | None = None) -> JobCreated:
        return super().of(job, webhook_secret=job.webhook and job.webhook.secret, estimate_s=estimate_s)


class JobSummary(JobFields):
    """A job in a list: status, progress and outcome at a glance. GET /v1/jobs/{id} has the whole job (search
    overrides, progress, result, error, artifact)."""

    phase: str | None = Field(description=f"The progress phase; null before the job starts. {PHASE}")
    round: int | None = Field(description="The search round under way (of `rounds`).")
    rounds: int | None
    metric_name: str | None = Field(description="The primary dev metric, once the job has succeeded.")
    metric: float | None
    trainable_params: int | None = Field(description="Of the chosen configuration, once the job has succeeded.")
    has_artifact: bool = Field(description="The pruned adapter can be downloaded from /v1/jobs/{id}/artifact.")

    @classmethod
    def of(cls, row: Any) -> JobSummary:
        """From a row of store.jobs.list_jobs."""
        return cls(**row._mapping)


class JobPage(Page[JobSummary]):
    total: int = Field(description="Jobs matching the filters, on every page.")


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str = Field(description="status, phase, round or error.")
    message: str
    data: dict[str, Any] | None
    created_at: datetime


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"url": "https://example.com/hooks/peftsearch", "events": ["job.succeeded", "job.failed"]}]})

    url: WebhookUrl  # type: ignore[valid-type]
    events: list[EventType] | None = Field(None, min_length=1, description=(  # type: ignore[valid-type]
        f"Which job ends to be told of, of {', '.join(EVENT_TYPES)}; default all of them."))


class WebhookOut(BaseModel):
    """A webhook: every end of the owner's jobs (or of one job: `job_id`) that `events` names is POSTed to `url`,
    signed with the webhook's secret."""

    id: str
    url: str
    events: list[EventType]  # type: ignore[valid-type]
    job_id: str | None = Field(description="Set for a job's own webhook (the submission's `webhook_url`).")
    created_at: datetime

    @classmethod
    def of(cls, hook: Webhook, **fields: Any) -> WebhookOut:
        """`fields`: a subclass's own (WebhookCreated's secret)."""
        return cls(id=hook.id, url=hook.url, events=hook.event_types, job_id=hook.job_id,
                   created_at=hook.created_at, **fields)


class WebhookCreated(WebhookOut):
    secret: str = Field(description="Signs every delivery (docs/client.md: verifying a delivery). Only in this "
                                    "answer: keep it.")

    @classmethod
    def of(cls, hook: Webhook) -> WebhookCreated:
        return super().of(hook, secret=hook.secret)


class DeliveryOut(BaseModel):
    """One notification of a job's end to one webhook, and how its sending went."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="The payload's `id` and the `webhook-id` header (the same on every attempt).")
    webhook_id: str
    job_id: str
    type: EventType = Field(validation_alias=AliasChoices("type", "event_type"))  # type: ignore[valid-type]
    status: Literal[DELIVERY_STATUSES] = Field(description=(  # type: ignore[valid-type]
        "pending (its next attempt is due at `next_attempt_at`), delivered (a 2xx answer), failed (every "
        "attempt failed)."))
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    response_status: int | None = Field(description="The last attempt's answer; null when there was none.")
    response_excerpt: str | None = Field(description="The beginning of that answer's body (no more is kept).")
    error: str | None = Field(description="Why the last attempt failed: no answer in time, no connection, "
                                          "a non-2xx status.")
    created_at: datetime


class Columns(BaseModel):
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    problem: Literal[PROBLEMS] = "classification"  # type: ignore[valid-type]
    prompt_template: str | None = None
    label_words: dict[str, str] | None = None


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    format: Literal["csv", "tsv", "jsonl"]
    columns: Columns
    labels: list[str] | None
    metric_name: str
    train_rows: int
    dev_rows: int
    size_bytes: int
    created_at: datetime

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetOut:
        return cls.model_validate(dataset)


class ModelOut(BaseModel):
    name: str
    model_type: str | None = Field(None, description="From the model's config.json, e.g. bert.")
    kind: ModelKind | None = Field(None, description=(
        "An encoder labels text; a decoder (a causal language model) also learns completions. None: the model's "
        "family has no architecture map."))
    problems: list[str] = Field(default_factory=list, description=(
        "The dataset problems a job on this model can learn (a dataset's `problem`)."))
    layers: int | None = None
    hidden_size: int | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    database: str
    broker: str = Field(description="'embedded' when jobs run in the API process.")
