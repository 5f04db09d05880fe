"""A job's life in the database. The API creates, lists and cancels; the worker claims, reports and finishes.

Every status change is a conditional UPDATE, so two parties racing (a cancel against a finish, two workers given
the same message) never both win. A worker's writes carry the attempt it claimed: once the reaper hands the
job to another attempt, the old worker's writes match no row and it stops.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.attributes import set_committed_value

from pruning.result import PHASES, RoundRecord
from pruning.sizes import check_problem
from pruning.spec import SearchSpec, SpecError

from .datasets import get_dataset, task_spec
from .models import (
    ACTIVE,
    CANCELLED,
    CANCELLING,
    FAILED,
    FINAL,
    QUEUED,
    RUNNING,
    STARTED,
    SUCCEEDED,
    VALIDATING,
    Artifact,
    Job,
    JobEvent,
    Round,
    new_id,
    utcnow,
)
from .settings import Settings
from .specs import ABOUT_THE_JOB, JobCreate, JobFilters, admit, build_spec, model_config
from .webhooks import create_webhook, record_deliveries


class NotCancellable(Exception):
    pass


class IdempotencyConflict(Exception):
    pass


class NotDeletable(Exception):
    """A job that has not ended yet: cancel it first."""


def add_event(session: Session, job_id: str, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, message=message, data=data))


# --- API side ---------------------------------------------------------------------------------------------------


def submit(session: Session, *, owner: str, body: JobCreate, idempotency_key: str | None,
           settings: Settings) -> tuple[Job, bool]:
    """Create a queued job from a request body, or return the job an earlier request with the same idempotency
    key created (True: a replay). Raises SpecError for a bad body (checked before any query),
    IdempotencyConflict for a reused key."""
    model_path = admit(body, settings)
    submitted = body.as_submitted()
    request_hash = hashlib.sha256(json.dumps(submitted, sort_keys=True).encode()).hexdigest()
    if idempotency_key and (earlier := job_by_idempotency_key(session, owner, idempotency_key)):
        return _replay(earlier, request_hash), True
    # Shared with other submissions, exclusive against store.datasets.delete_dataset: a job is never created on
    # a dataset being deleted (either the deletion sees this job, or this finds the dataset gone).
    dataset = get_dataset(session, owner, body.dataset_id, lock="share")
    if dataset is None:
        raise SpecError("dataset_id", f"no dataset {body.dataset_id!r}; upload one first (POST /v1/datasets, or "
                                          "`peftsearch datasets upload`)")
    task = task_spec(dataset, settings.datasets)
    check_problem(task.learned_as, model_config(model_path), field="dataset_id")
    spec = build_spec(body, model_path, task)
    request = {k: v for k, v in submitted.items() if k not in ABOUT_THE_JOB}
    try:
        return create_job(session, owner=owner, request=request, request_hash=request_hash,
                          idempotency_key=idempotency_key, spec=spec, dataset_id=dataset.id, name=body.name,
                          metadata=body.metadata, webhook_url=body.webhook_url), False
    except IntegrityError:  # a concurrent request with the same key got there first
        session.rollback()
        return _replay(job_by_idempotency_key(session, owner, idempotency_key), request_hash), True


def _replay(job: Job, request_hash: str) -> Job:
    if job.request_hash != request_hash:
        raise IdempotencyConflict(f"this Idempotency-Key was used for job {job.id} with a different body")
    return job


def create_job(session: Session, *, owner: str, request: dict[str, Any], request_hash: str,
               idempotency_key: str | None, spec: dict[str, Any], dataset_id: str, name: str | None = None,
               metadata: dict[str, Any] | None = None, webhook_url: str | None = None) -> Job:
    """The queued job, with its own webhook when a URL is given (notified of every end)."""
    job = Job(id=new_id("job"), owner=owner, status=QUEUED, request=request, request_hash=request_hash,
              idempotency_key=idempotency_key, spec=spec, dataset_id=dataset_id, name=name,
              job_metadata=metadata)
    set_committed_value(job, "artifact", None)  # a new job has none: reading it must not cost a query
    session.add(job)
    add_event(session, job.id, "status", QUEUED)
    session.flush()  # here, so that a duplicate idempotency key raises inside submit's try
    hook = create_webhook(session, owner=owner, url=webhook_url, job_id=job.id) if webhook_url else None
    set_committed_value(job, "webhook", hook)
    return job


def get_job(session: Session, owner: str, job_id: str) -> Job | None:
    """The job with its artifact, without the resolved spec (only the worker reads that)."""
    return session.scalar(select(Job).options(defer(Job.spec)).where(Job.id == job_id, Job.owner == owner))


def job_by_idempotency_key(session: Session, owner: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


# What a list of jobs shows: plain columns, a few fields the database reads out of the JSON documents (so the
# documents themselves, kilobytes per job, are neither sent nor decoded), and whether an artifact exists.
SUMMARY = (
    Job.id, Job.status, Job.name, Job.job_metadata.label("metadata"),
    Job.request["model"].as_string().label("model"), Job.dataset_id,
    Job.request["budget"].label("budget"), Job.created_at, Job.started_at, Job.finished_at, Job.updated_at,
    Job.progress["phase"].as_string().label("phase"), Job.progress["round"].as_integer().label("round"),
    Job.progress["rounds"].as_integer().label("rounds"),
    Job.result["metric_name"].as_string().label("metric_name"), Job.result["metric"].as_float().label("metric"),
    Job.result["trainable_params"].as_integer().label("trainable_params"),
    Artifact.id.is_not(None).label("has_artifact"),
)


def list_jobs(session: Session, owner: str, filters: JobFilters, *, after: str | None, limit: int) -> list[Row]:
    """Summaries (SUMMARY's fields) of the jobs `filters` admits, newest first; `after` is the last id of the
    previous page."""
    query = select(*SUMMARY).outerjoin(Artifact, Artifact.job_id == Job.id).where(*_admitted(owner, filters))
    if after:
        query = query.where(Job.id < after)
    return list(session.execute(query.order_by(Job.id.desc()).limit(limit)))


def count_jobs(session: Session, owner: str, filters: JobFilters) -> int:
    """How many jobs `filters` admits, on every page."""
    return session.scalar(select(func.count()).select_from(Job).where(*_admitted(owner, filters)))


def _admitted(owner: str, filters: JobFilters) -> list[ColumnElement[bool]]:
    conditions = [Job.owner == owner]
    if filters.status:
        conditions.append(Job.status.in_(filters.status))
    if filters.model is not None:
        conditions.append(Job.request["model"].as_string() == filters.model)
    if filters.dataset_id is not None:
        conditions.append(Job.dataset_id == filters.dataset_id)
    if filters.created_after is not None:
        conditions.append(Job.created_at >= filters.created_after)
    if filters.created_before is not None:
        conditions.append(Job.created_at < filters.created_before)
    return conditions


def delete_job(session: Session, owner: str, job_id: str) -> bool:
    """Delete an ended job (succeeded, failed or cancelled) with its events, rounds and artifact row (the
    foreign keys cascade); False when the owner has no such job, NotDeletable when it has not ended. A job that
    has ended never runs again, so its files (store.artifacts.remove_job_files) can go once this commits."""
    if session.execute(delete(Job).where(Job.id == job_id, Job.owner == owner, Job.status.in_(FINAL))).rowcount:
        return True
    status = session.scalar(select(Job.status).where(Job.id == job_id, Job.owner == owner))
    if status is None:
        return False
    hint = (f"cancel it first (POST /v1/jobs/{job_id}/cancel), then delete it" if status in (QUEUED, *STARTED)
            else "it is stopping; delete it once it is cancelled")
    raise NotDeletable(f"job {job_id} is {status}: only a job that has ended can be deleted; {hint}")


def cancel(session: Session, job: Job) -> None:
    """queued -> cancelled at once; validating or running -> cancelling (the worker stops at its next step); else
    refuse."""
    now = utcnow()
    if _move(session, job.id, (QUEUED,), status=CANCELLED, finished_at=now):
        add_event(session, job.id, "status", CANCELLED)
        record_deliveries(session, job.id, CANCELLED)
    elif _move(session, job.id, STARTED, status=CANCELLING):
        add_event(session, job.id, "status", CANCELLING)
    session.refresh(job)
    if job.status not in (CANCELLING, CANCELLED):
        raise NotCancellable(f"job {job.id} is {job.status}")


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.status == QUEUED).values(enqueued_at=utcnow()))


def list_events(session: Session, job_id: str, *, after: int | None, limit: int) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        query = query.where(JobEvent.id > after)
    return list(session.scalars(query.order_by(JobEvent.id).limit(limit)))


def look(session: Session, job_id: str, *, after: int | None, limit: int) -> JobLook | None:
    """The job's status and progress, then its events after `after` (what a stream of them sends next); None
    once the job is gone. Read in this order, a final status comes with every event before it: the status and
    its event commit together."""
    row = session.execute(select(Job.status, Job.progress).where(Job.id == job_id)).first()
    if row is None:
        return None
    return JobLook(row.status, row.progress, list_events(session, job_id, after=after, limit=limit))


@dataclasses.dataclass(frozen=True)
class JobLook:
    status: str
    progress: dict[str, Any] | None
    events: list[JobEvent]


def list_rounds(session: Session, job_id: str) -> list[Round]:
    return list(session.scalars(select(Round).where(Round.job_id == job_id).order_by(Round.round)))


def expire_artifacts(session: Session, ended_before: datetime, limit: int = 500) -> list[str]:
    """Delete the artifact rows of up to `limit` jobs that ended before `ended_before` (settings'
    artifact_retention_days); returns their archives' paths (relative to the artifact directory), for the caller
    to remove once this commits: a crash in between leaves files no row names, never a row without its file."""
    rows = session.execute(select(Artifact.id, Artifact.path).join(Job, Job.id == Artifact.job_id)
                           .where(Job.finished_at < ended_before).order_by(Job.finished_at).limit(limit)).all()
    if rows:
        session.execute(delete(Artifact).where(Artifact.id.in_([row.id for row in rows])))
    return [row.path for row in rows]


ESTIMATE_FROM = 20  # the latest succeeded jobs on a model whose pace estimates the next one's time


def estimate_s(session: Session, job: Job) -> float | None:
    """About how long `job` will run once a worker takes it, at most: the training steps its search plans (a
    learning phase that ends early shortens it) x its tokens per step (batch x max length), at the median pace
    (seconds per step and token, loading and evaluation included) of the latest ESTIMATE_FROM jobs on the same
    model that succeeded on this deployment in one attempt, any owner's. None before one has."""
    rows = session.execute(
        select(Job.spec, Job.progress, Job.started_at, Job.finished_at)
        .where(Job.status == SUCCEEDED, Job.attempt == 1, Job.request["model"].as_string() == job.request["model"],
               Job.started_at.is_not(None), Job.finished_at.is_not(None))
        .order_by(Job.finished_at.desc()).limit(ESTIMATE_FROM)).all()
    paces = [(row.finished_at - row.started_at).total_seconds() / (steps * _tokens_per_step(row.spec))
             for row in rows if (steps := (row.progress or {}).get("total_steps"))]
    if not paces:
        return None
    planned = SearchSpec.from_dict(job.spec).planned_steps()
    return round(planned * _tokens_per_step(job.spec) * statistics.median(paces), 1)


def _tokens_per_step(spec: dict[str, Any]) -> int:
    return spec["train"]["batch_size"] * spec["train"]["max_length"]


def get_artifact(session: Session, job_id: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id))


# --- Worker side ------------------------------------------------------------------------------------------------


def claim(session: Session, job_id: str, worker: str, stale_before: datetime) -> int | None:
    """Take a queued job, or a started one whose worker stopped beating (a redelivered message): it is
    validating until the search's first phase after loading (`set_progress`). Returns the attempt number that
    fences this worker's writes, or None when someone else has the job or it is over."""
    now = utcnow()
    claimable = (Job.status == QUEUED) | (Job.status.in_(STARTED) & (Job.heartbeat_at < stale_before))
    moved = session.execute(
        update(Job).where(Job.id == job_id, claimable)
        .values(status=VALIDATING, attempt=Job.attempt + 1, worker=worker, heartbeat_at=now, updated_at=now)
    ).rowcount
    if not moved:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    if job.started_at is None:
        job.started_at = now
    add_event(session, job_id, "status", VALIDATING, {"attempt": job.attempt, "worker": worker})
    return job.attempt


def heartbeat(session: Session, job_id: str, attempt: int) -> str | None:
    """Touch the job; returns its status (cancelling tells the worker to stop), or None once it is not ours."""
    owned = (Job.id == job_id) & (Job.attempt == attempt) & Job.status.in_(ACTIVE)
    if not session.execute(update(Job).where(owned).values(heartbeat_at=utcnow())).rowcount:
        return None
    return session.scalar(select(Job.status).where(Job.id == job_id))


LOADING = PHASES[0]  # the engine's first phase: it reads and tokenises the data and loads the model


def set_progress(session: Session, job_id: str, attempt: int, progress: dict[str, Any]) -> bool:
    """Write this attempt's progress; a validating job runs from the first phase after loading. False when the
    job is no longer ours."""
    owned = (Job.id == job_id) & (Job.attempt == attempt) & Job.status.in_(ACTIVE)
    if not session.execute(update(Job).where(owned).values(progress=progress, updated_at=utcnow())).rowcount:
        return False
    if progress.get("phase") != LOADING and _move(session, job_id, (VALIDATING,), status=RUNNING):
        add_event(session, job_id, "status", RUNNING, {"attempt": attempt})
    return True


def add_round(session: Session, job_id: str, record: RoundRecord) -> bool:
    """Insert a round unless a previous attempt already did (a resumed search reports it again); True when it
    was new. A field of the record that has no column is an error, not silently dropped: it needs a column and a
    migration."""
    values = dataclasses.asdict(record)
    if unknown := sorted(set(values) - set(Round.__table__.columns.keys())):
        raise ValueError(f"RoundRecord fields without a column in rounds: {', '.join(unknown)} (add them to "
                         "store/models.py with a migration)")
    if session.get(Round, (job_id, record.round)) is not None:
        return False
    session.add(Round(job_id=job_id, **values))
    return True


def finish(session: Session, job_id: str, attempt: int, status: str, *, result: dict[str, Any] | None = None,
           error: dict[str, str] | None = None, artifact: dict[str, Any] | None = None) -> bool:
    """Final status for this attempt. False (and nothing written) when the job is no longer ours."""
    assert status in FINAL
    now = utcnow()
    owned = (Job.id == job_id) & (Job.attempt == attempt) & Job.status.in_(ACTIVE)
    moved = session.execute(update(Job).where(owned).values(
        status=status, result=result, error=error, finished_at=now, updated_at=now)).rowcount
    if not moved:
        return False
    if artifact is not None:
        session.add(Artifact(id=new_id("art"), job_id=job_id, **artifact))
    add_event(session, job_id, "status", status, error)
    record_deliveries(session, job_id, status)
    return True


def next_queued(session: Session) -> str | None:
    return session.scalar(select(Job.id).where(Job.status == QUEUED).order_by(Job.id).limit(1))


def reaper_turn(session: Session) -> bool:
    """Whether this transaction may run a reaper pass: on PostgreSQL it takes a transaction-scoped advisory lock
    of this schema's deployment (without waiting), so of several processes reaping (API processes, workers) one
    passes at a time and the others skip; SQLite serialises its writers itself."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(hashtext('peftsearch.reaper.' || "
                                    "current_schema()))")))


def reap(session: Session, *, stale_before: datetime, max_attempts: int, unsent_before: datetime,
         resend_after_s: float, resend_max_s: float) -> list[str]:
    """Deal with jobs whose worker died (no heartbeat since `stale_before`): re-queue them, or fail them after
    `max_attempts`; a dead worker's cancelling job is cancelled. Returns the queued jobs to send (again) once the
    caller has committed: re-queued ones, ones the broker never accepted (`enqueued_at` unset, unchanged since
    `unsent_before`), and ones sent but not claimed by any worker in time (see `resend_due`). Each is taken with
    a conditional UPDATE, so two reapers never both send one."""
    requeued = []
    stale = select(Job.id, Job.status, Job.attempt).where(Job.status.in_(ACTIVE), Job.heartbeat_at < stale_before)
    for job_id, status, attempt in session.execute(stale).all():
        still_stale = (Job.id == job_id) & (Job.attempt == attempt) & Job.status.in_(ACTIVE)
        now = utcnow()
        if status == CANCELLING:
            values, message = dict(status=CANCELLED, finished_at=now), CANCELLED
        elif attempt >= max_attempts:
            error = {"code": "worker_lost", "message": f"the worker died {attempt} times; giving up"}
            values, message = dict(status=FAILED, finished_at=now, error=error), FAILED
        else:
            values, message = dict(status=QUEUED, enqueued_at=None), QUEUED
        if session.execute(update(Job).where(still_stale).values(updated_at=now, **values)).rowcount:
            add_event(session, job_id, "status", message, {"reason": "no heartbeat from the worker"})
            if message in FINAL:
                record_deliveries(session, job_id, message)
            requeued += [job_id] if message == QUEUED else []
    unsent = (Job.status == QUEUED) & Job.enqueued_at.is_(None) & (Job.updated_at < unsent_before)
    to_send = set(requeued)
    for job_id in session.scalars(select(Job.id).where(unsent)).all():
        if session.execute(update(Job).where(Job.id == job_id, unsent).values(updated_at=utcnow())).rowcount:
            to_send.add(job_id)
    now = utcnow()
    sent = select(Job.id, Job.enqueued_at, Job.created_at).where(
        Job.status == QUEUED, Job.enqueued_at < now - timedelta(seconds=resend_after_s))
    for job_id, enqueued_at, created_at in session.execute(sent).all():
        if not resend_due(now, enqueued_at, created_at, resend_after_s, resend_max_s):
            continue
        same_send = (Job.id == job_id) & (Job.status == QUEUED) & (Job.enqueued_at == enqueued_at)
        if session.execute(update(Job).where(same_send).values(enqueued_at=None)).rowcount:
            to_send.add(job_id)
    return sorted(to_send)


def resend_due(now: datetime, enqueued_at: datetime, created_at: datetime, resend_after_s: float,
               resend_max_s: float) -> bool:
    """A sent job still queued is sent again once it has waited as long as it had existed when it was last sent
    (at least resend_after_s, at most resend_max_s): the waits double, so a job queued behind hours of work costs
    a handful of duplicate messages, not one per reaper pass."""
    wait = min(max(resend_after_s, (enqueued_at - created_at).total_seconds()), resend_max_s)
    return (now - enqueued_at).total_seconds() >= wait


def _move(session: Session, job_id: str, from_statuses: tuple[str, ...], **values: Any) -> bool:
    values.setdefault("updated_at", utcnow())
    return bool(session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(from_statuses)).values(**values)).rowcount)
