"""The job runner on PostgreSQL with committed rows (a worker has its own connections): cancelling a running
search, a worker killed mid-search whose job the reaper re-queues and the next attempt resumes, and the reaper of
a Celery worker's main process resending a job whose message was lost."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text, update

from store import jobs
from store.db import get_engine, session_factory
from store.models import Job, JobEvent, Round, utcnow
from worker.job import run_job
from worker.reaper import reap_once

from .support import REDIS_URL, TINY, start, stop, wait_until

pytestmark = [pytest.mark.service, pytest.mark.slow]


@pytest.fixture
def submit(committed_client, toy_files):
    """Submit a job through the API, committed for real; returns its id."""
    client = committed_client
    train, dev = toy_files["csv"]
    dataset = client.post("/v1/datasets", files={"train": (train.name, train.read_bytes()),
                                                 "dev": (dev.name, dev.read_bytes())}).json()["id"]

    def make(search: dict) -> str:
        response = client.post("/v1/jobs", json={"model": TINY, "dataset_id": dataset, "budget": "2%",
                                                 "search": search})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    return make


def read(settings, job_id: str) -> tuple[Job, list[str], list[int]]:
    with session_factory(settings.db_url)() as session:
        job = session.get(Job, job_id)
        events = [e.message for e in session.query(JobEvent).filter_by(job_id=job_id).order_by(JobEvent.id)]
        rounds = [r.round for r in session.query(Round).filter_by(job_id=job_id).order_by(Round.round)]
        return job, events, rounds


def test_cancelling_a_running_job_stops_the_search(settings, submit):
    job_id = submit({"schedule": {"rounds": 2, "steps_per_round": 100000, "unlearned": "prune"},
                     "train": {"batch_size": 8}})
    outcome = []
    runner = threading.Thread(target=lambda: outcome.append(run_job(job_id, settings)))
    runner.start()
    wait_until(lambda: (read(settings, job_id)[0].progress or {}).get("phase") == "search", 120, "the search")
    with session_factory(settings.db_url).begin() as session:
        jobs.cancel(session, session.get(Job, job_id))
    runner.join(120)
    assert outcome == ["cancelled"]
    job, events, rounds = read(settings, job_id)
    assert job.status == "cancelled" and job.artifact is None and rounds == []
    assert [e for e in events if e in ("queued", "running", "cancelling", "cancelled")] == [
        "queued", "running", "cancelling", "cancelled"]
    assert not (settings.work / job_id).exists()


def test_a_killed_worker_is_reaped_and_the_next_attempt_resumes(settings, submit, tmp_path):
    job_id = submit({"schedule": {"rounds": 2, "steps_per_round": 20, "eval_examples": 32, "unlearned": "prune"},
                     "train": {"steps": 20, "batch_size": 8, "max_length": 32}})
    env = {"DATABASE_URL": settings.db_url, "PEFTSEARCH_HOME": str(settings.home),
           "PEFTSEARCH_MODELS": json.dumps(settings.models), "PEFTSEARCH_HEARTBEAT_S": "0.2"}
    log = tmp_path / "doomed-worker.log"
    doomed = start([sys.executable, "-c", f"from worker.celery_app import TASK, app; app.tasks[TASK]({job_id!r})"],
                   env, log)
    try:
        wait_until(lambda: read(settings, job_id)[2] == [1], 120, "round 1 of the first attempt", [log])
    finally:
        os.killpg(doomed.pid, signal.SIGKILL)  # dies mid round 2: no final status, no clean-up
        doomed.wait()
    assert read(settings, job_id)[0].status == "running"
    assert (settings.work / job_id / "checkpoint").exists()

    wait_until(lambda: job_id in reap_once(settings), 30, "the reaper to re-queue the job")
    job, events, _ = read(settings, job_id)
    assert job.status == "queued" and job.attempt == 1

    assert run_job(job_id, settings) == "succeeded"
    job, events, rounds = read(settings, job_id)
    assert job.status == "succeeded" and job.attempt == 2 and rounds == [1, 2]
    assert [e for e in events if e in ("queued", "validating", "running", "succeeded")] == [
        "queued", "validating", "running", "queued", "validating", "running", "succeeded"]
    assert any(e.endswith("resuming after round 1 of 2") for e in events)
    # the resumed search re-reports round 1: its row and its event are there once
    assert [e.split(":")[0] for e in events if e.startswith("round ")] == ["round 1/2", "round 2/2"]
    assert job.artifact is not None and (settings.artifacts / job.artifact.path).exists()


def test_an_engine_error_fails_the_job_with_its_reason(settings, submit):
    job_id = submit({"schedule": {"rounds": 1, "steps_per_round": 2}, "train": {"steps": 2}})
    with session_factory(settings.db_url)() as session:
        dev_file = session.get(Job, job_id).spec["task"]["dev"]
    os.remove(dev_file)  # the dataset vanished from the shared volume after it was accepted
    assert run_job(job_id, settings) == "failed"
    job, events, _ = read(settings, job_id)
    assert job.status == "failed" and job.error["code"] == "invalid_dataset"
    assert "dev.csv" in job.error["message"]
    assert [e for e in events if e in ("queued", "validating", "running", "failed")] == [
        "queued", "validating", "failed"]  # the data is read before any training: the job never ran
    assert job.artifact is None
    assert not (settings.work / job_id).exists()
    assert run_job(job_id, settings) == "skipped"  # a redelivered message finds nothing to do


def test_a_celery_worker_resends_a_job_whose_message_was_lost(settings, submit, tmp_path):
    import redis

    job_id = submit({"train": {"steps": 2}})
    lost_at = utcnow() - timedelta(hours=1)
    with session_factory(settings.db_url).begin() as session:  # sent an hour ago; the message never arrived
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=lost_at))
    queue = f"unconsumed-{uuid.uuid4().hex[:8]}"  # the job's queue: no worker takes from it
    env = {"DATABASE_URL": settings.db_url, "BROKER_URL": REDIS_URL, "PEFTSEARCH_HOME": str(settings.home),
           "PEFTSEARCH_QUEUE": queue, "PEFTSEARCH_REAP_EVERY_S": "0.2", "PEFTSEARCH_RESEND_AFTER_S": "1"}
    log = tmp_path / "worker.log"
    worker = start([sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--queues", f"{queue}-other",
                    "--pool", "prefork", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
                    "--without-heartbeat"], env, log)
    broker = redis.Redis.from_url(REDIS_URL)
    try:
        messages = wait_until(lambda: broker.lrange(queue, 0, -1), 90, "the worker's reaper to resend the job", [log])
    finally:
        stop(worker)
        broker.delete(queue)
    assert len(messages) == 1 and job_id.encode() in messages[0]
    job = read(settings, job_id)[0]
    assert job.status == "queued" and job.enqueued_at > lost_at  # sent again, and marked sent


def test_a_forked_process_opens_its_own_database_connections(settings):
    """A Celery worker forks each job's process from its main process, where the reaper's connections are pooled:
    the child must not use them (store/db.py)."""
    url = f"{settings.db_url}&application_name=fork-{uuid.uuid4().hex[:8]}"  # an engine of its own: one connection
    backend = text("SELECT pg_backend_pid()")
    with get_engine(url).connect() as connection:
        parent_backend = connection.scalar(backend)
    child = os.fork()
    if child == 0:  # the child: exit 0 only if it talks to a backend of its own
        try:
            with session_factory(url)() as session:
                os._exit(0 if session.scalar(backend) != parent_backend else 1)
        finally:
            os._exit(2)
    try:
        assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
        with get_engine(url).connect() as connection:  # and the parent's pooled connection is intact
            assert connection.scalar(backend) == parent_backend
    finally:
        get_engine(url).dispose()
