"""/v1/jobs: submit, list, poll, cancel, delete, follow events (JSON pages or a stream) and rounds, download the
pruned adapter, see the webhook deliveries of its end.

Each route does its database work in one `with caller.session()` block (see deps.py) and builds its answer after.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Query, Response
from fastapi.responses import FileResponse
from pydantic import Field
from sqlalchemy.orm import Session

from store import jobs, webhooks
from store.artifacts import remove_job_files
from store.models import FINAL, QUEUED, SUCCEEDED, Job
from store.specs import INT64, JobCreate, JobFilters
from worker.queue import enqueue

from ..deps import Config, CurrentCaller
from ..errors import ApiError, documented
from ..schemas import DeliveryOut, EventOut, JobCreated, JobOut, JobPage, JobSummary, Page, RoundOut
from ..streams import MEDIA_TYPE, event_stream, wants_event_stream

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=documented(400, 401, 404, 409, 422, 503))
Limit = Annotated[int, Query(ge=1, le=100, description="Page size, at most 100.")]


def owned_job(session: Session, owner: str, job_id: str) -> Job:
    job = jobs.get_job(session, owner, job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id!r}", param="job_id")
    return job


@router.post("", status_code=201, response_model=JobCreated, summary="Submit a search job")
def submit_job(body: JobCreate, response: Response, background: BackgroundTasks, caller: CurrentCaller,
               settings: Config, idempotency_key: Annotated[str | None, Header(max_length=255, description=(
                   "Retry-safe submission: the same key and body return the same job; "
                   "the same key with another body is a 409."))] = None) -> JobCreated:
    with caller.session() as session:
        job, replayed = jobs.submit(session, owner=caller.owner, body=body,
                                    idempotency_key=idempotency_key, settings=settings)
        session.commit()
        estimate = jobs.estimate_s(session, job) if job.status == QUEUED else None
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:  # committed, so the worker finds the row; sent after the answer, which a slow broker must not delay
        background.add_task(enqueue, settings, job.id)
    return JobCreated.of(job, estimate)


class JobListQuery(JobFilters):
    after: str | None = Field(None, max_length=40, description="The previous page's `next`.")
    limit: int = Field(20, ge=1, le=100, description="Page size, at most 100.")


@router.get("", response_model=JobPage, summary="List your jobs, newest first (summaries), with filters")
def list_jobs(caller: CurrentCaller, query: Annotated[JobListQuery, Query()]) -> JobPage:
    with caller.session() as session:
        rows = jobs.list_jobs(session, caller.owner, query, after=query.after, limit=query.limit + 1)
        total = jobs.count_jobs(session, caller.owner, query)
    return JobPage.of(rows, query.limit, JobSummary.of, total=total)


@router.get("/{job_id}", response_model=JobOut, summary="A job's status, progress and result")
def get_job(job_id: str, caller: CurrentCaller) -> JobOut:
    with caller.session() as session:
        job = owned_job(session, caller.owner, job_id)
        estimate = jobs.estimate_s(session, job) if job.status == QUEUED else None
    return JobOut.of(job, estimate_s=estimate)


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a queued, validating or running job")
def cancel_job(job_id: str, caller: CurrentCaller) -> JobOut:
    with caller.session() as session:
        job = owned_job(session, caller.owner, job_id)
        jobs.cancel(session, job)
        session.commit()
    return JobOut.of(job)


@router.delete("/{job_id}", status_code=204, response_class=Response,
               summary="Delete an ended job: its events, rounds and artifact, files too")
def delete_job(job_id: str, caller: CurrentCaller, settings: Config) -> Response:
    with caller.session() as session:
        if not jobs.delete_job(session, caller.owner, job_id):
            raise ApiError(404, f"no job {job_id!r}", param="job_id")
        session.commit()
    remove_job_files(settings.artifacts, settings.work, job_id)  # an ended job's files: no worker writes them
    return Response(status_code=204)


@router.get("/{job_id}/events", response_model=Page[EventOut], summary="A job's events, oldest first; or a stream",
            description="JSON pages by default. With `Accept: text/event-stream`, Server-Sent Events until the job "
                        "ends (see docs/service.md): each event with its id, `progress` when it changes, "
                        "heartbeat comments, `end`; resumable with `Last-Event-ID`.",
            responses={200: {"content": {MEDIA_TYPE: {"schema": {"type": "string"}}}},
                       204: {"description": "Stream only: the job has ended and nothing follows the cursor."}})
def list_events(job_id: str, caller: CurrentCaller, settings: Config,
                after: Annotated[int | None, Query(ge=0, le=INT64, description="The previous page's `next`.")] = None,
                limit: Limit = 100,
                accept: Annotated[str | None, Header(description=f"`{MEDIA_TYPE}` for a stream.")] = None,
                last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0, le=INT64, description=(
                    "A stream resumes after this event id (wins over `after`)."))] = None) -> Page[EventOut] | Response:
    stream = wants_event_stream(accept)
    cursor = last_event_id if stream and last_event_id is not None else after
    with caller.session() as session:
        job = owned_job(session, caller.owner, job_id)
        rows = jobs.list_events(session, job_id, after=cursor, limit=1 if stream else limit + 1)
    if not stream:
        return Page[EventOut].of(rows, limit, EventOut.model_validate)
    if job.status in FINAL and not rows:
        return Response(status_code=204)
    return event_stream(caller, job_id, cursor, settings)


@router.get("/{job_id}/rounds", response_model=Page[RoundOut], summary="The search's rounds so far")
def list_rounds(job_id: str, caller: CurrentCaller) -> Page[RoundOut]:
    with caller.session() as session:
        owned_job(session, caller.owner, job_id)
        rows = jobs.list_rounds(session, job_id)
    return Page[RoundOut](data=[RoundOut.model_validate(r) for r in rows])


@router.get("/{job_id}/deliveries", response_model=Page[DeliveryOut],
            summary="The webhook deliveries of the job's end, newest first (its own webhook's and your others')")
def list_deliveries(job_id: str, caller: CurrentCaller,
                    after: Annotated[str | None, Query(max_length=40, description="The previous page's `next`.")] = None,
                    limit: Limit = 20) -> Page[DeliveryOut]:
    with caller.session() as session:
        owned_job(session, caller.owner, job_id)
        rows = webhooks.list_deliveries(session, job_id=job_id, after=after, limit=limit + 1)
    return Page[DeliveryOut].of(rows, limit, DeliveryOut.model_validate)


@router.get("/{job_id}/artifact", response_class=FileResponse, summary="Download the pruned adapter (.tar.gz)",
            responses={200: {"content": {"application/gzip": {}},
                             "description": "The archive; its sha256 is in the X-Checksum-SHA256 header."},
                       **documented(410)})
def download_artifact(job_id: str, caller: CurrentCaller, settings: Config) -> FileResponse:
    with caller.session() as session:
        job = owned_job(session, caller.owner, job_id)
    expired = job.status == SUCCEEDED and (job.artifact is None  # a succeeded job always has one until it expires
                                           or not (settings.artifacts / job.artifact.path).exists())  # just now
    if expired:
        days = settings.artifact_retention_days
        raise ApiError(410, f"job {job.id}'s archive was deleted: this server keeps archives {days:g} days after a "
                            "job ends (its result, rounds and events remain)" if days else
                            f"job {job.id}'s archive was deleted", code="expired")
    if job.status != SUCCEEDED or job.artifact is None:
        raise ApiError(409, f"job {job.id} is {job.status}; its adapter exists once it has succeeded",
                       code="not_ready")
    return FileResponse(settings.artifacts / job.artifact.path, media_type="application/gzip",
                        filename=f"{job.id}.tar.gz", headers={"X-Checksum-SHA256": job.artifact.sha256})
