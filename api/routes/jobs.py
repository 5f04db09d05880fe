"""/v1/jobs: submit, list, poll, cancel, follow events and rounds, download the pruned adapter.

Each route does its database work in one `with caller.session()` block (see deps.py) and builds its answer after.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Query, Response
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from store import jobs
from store.models import SUCCEEDED, Job
from store.specs import INT64, JobCreate
from worker.queue import enqueue

from ..deps import Config, CurrentCaller
from ..errors import ApiError, documented
from ..schemas import EventOut, JobOut, JobSummary, Page, RoundOut, Status

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=documented(400, 401, 404, 409, 422, 503))
Limit = Annotated[int, Query(ge=1, le=100, description="Page size, at most 100.")]


def owned_job(session: Session, owner: str, job_id: str) -> Job:
    job = jobs.get_job(session, owner, job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id!r}", param="job_id")
    return job


@router.post("", status_code=201, response_model=JobOut, summary="Submit a search job")
def submit_job(body: JobCreate, response: Response, background: BackgroundTasks, caller: CurrentCaller,
               settings: Config, idempotency_key: Annotated[str | None, Header(max_length=255, description=(
                   "Retry-safe submission: the same key and body return the same job; "
                   "the same key with another body is a 409."))] = None) -> JobOut:
    with caller.session() as session:
        job, replayed = jobs.submit(session, owner=caller.owner, body=body,
                                    idempotency_key=idempotency_key, settings=settings)
        session.commit()
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:  # committed, so the worker finds the row; sent after the answer, which a slow broker must not delay
        background.add_task(enqueue, settings, job.id)
    return JobOut.of(job)


@router.get("", response_model=Page[JobSummary], summary="List your jobs, newest first (summaries)")
def list_jobs(caller: CurrentCaller, status: Status | None = None, after: str | None = None,
              limit: Limit = 20) -> Page[JobSummary]:
    with caller.session() as session:
        rows = jobs.list_jobs(session, caller.owner, status=status, after=after, limit=limit + 1)
    return Page[JobSummary].of(rows, limit, JobSummary.of)


@router.get("/{job_id}", response_model=JobOut, summary="A job's status, progress and result")
def get_job(job_id: str, caller: CurrentCaller) -> JobOut:
    with caller.session() as session:
        job = owned_job(session, caller.owner, job_id)
    return JobOut.of(job)


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a queued or running job")
def cancel_job(job_id: str, caller: CurrentCaller) -> JobOut:
    with caller.session() as session:
        job = owned_job(session, caller.owner, job_id)
        jobs.cancel(session, job)
        session.commit()
    return JobOut.of(job)


@router.get("/{job_id}/events", response_model=Page[EventOut], summary="A job's events, oldest first")
def list_events(job_id: str, caller: CurrentCaller,
                after: Annotated[int | None, Query(ge=0, le=INT64, description="The previous page's `next`.")] = None,
                limit: Limit = 100) -> Page[EventOut]:
    with caller.session() as session:
        owned_job(session, caller.owner, job_id)
        rows = jobs.list_events(session, job_id, after=after, limit=limit + 1)
    return Page[EventOut].of(rows, limit, EventOut.model_validate)


@router.get("/{job_id}/rounds", response_model=Page[RoundOut], summary="The search's rounds so far")
def list_rounds(job_id: str, caller: CurrentCaller) -> Page[RoundOut]:
    with caller.session() as session:
        owned_job(session, caller.owner, job_id)
        rows = jobs.list_rounds(session, job_id)
    return Page[RoundOut](data=[RoundOut.model_validate(r) for r in rows])


@router.get("/{job_id}/artifact", response_class=FileResponse, summary="Download the pruned adapter (.tar.gz)",
            responses={200: {"content": {"application/gzip": {}},
                             "description": "The archive; its sha256 is in the X-Checksum-SHA256 header."}})
def download_artifact(job_id: str, caller: CurrentCaller, settings: Config) -> FileResponse:
    with caller.session() as session:
        job = owned_job(session, caller.owner, job_id)
    if job.status != SUCCEEDED or job.artifact is None:
        raise ApiError(409, f"job {job.id} is {job.status}; its adapter exists once it has succeeded",
                       code="not_ready")
    return FileResponse(settings.artifacts / job.artifact.path, media_type="application/gzip",
                        filename=f"{job.id}.tar.gz", headers={"X-Checksum-SHA256": job.artifact.sha256})
