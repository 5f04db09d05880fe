"""The job lifecycle in the database (PostgreSQL, rolled back per test): claims, fencing by attempt, heartbeats,
cancellation, and the reaper."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import sqlalchemy

from pruning.result import RemovedUnit, RoundRecord
from store import jobs
from store.models import Dataset, Job, JobEvent, Round, new_id, utcnow

pytestmark = pytest.mark.service
LONG_AGO = timedelta(hours=1)


@pytest.fixture
def new_job(db):
    dataset = Dataset(id=new_id("ds"), owner="olga", name="toy", format="csv", columns={}, train_path="t",
                      dev_path="d", labels=None, metric_name="accuracy", train_rows=1, dev_rows=1, size_bytes=2)
    db.add(dataset)

    def make() -> str:
        return jobs.create_job(db, owner="olga", request={}, request_hash="h", idempotency_key=None, spec={},
                               dataset_id=dataset.id).id

    return make


def reap(db, cutoff, resend_after_s: float = 3600.0, resend_max_s: float = 7200.0) -> list[str]:
    return jobs.reap(db, stale_before=cutoff, max_attempts=3, unsent_before=cutoff, resend_after_s=resend_after_s,
                     resend_max_s=resend_max_s)


def status(db, job_id: str) -> str:
    return db.get(Job, job_id, populate_existing=True).status


def events(db, job_id: str) -> list[str]:
    return [e.message for e in db.query(JobEvent).filter_by(job_id=job_id).order_by(JobEvent.id)]


def test_a_job_is_claimed_once(db, new_job):
    job_id = new_job()
    assert jobs.claim(db, job_id, "w1", utcnow() - LONG_AGO) == 1
    assert jobs.claim(db, job_id, "w2", utcnow() - LONG_AGO) is None  # validating, heartbeat fresh
    job = db.get(Job, job_id, populate_existing=True)
    assert (job.status, job.worker, job.attempt) == ("validating", "w1", 1)
    assert job.started_at is not None and job.heartbeat_at is not None


def test_a_claimed_job_validates_until_the_search_is_past_loading(db, new_job):
    job_id = new_job()
    attempt = jobs.claim(db, job_id, "w", utcnow())
    assert jobs.set_progress(db, job_id, attempt, {"phase": "load", "step": 0})
    assert status(db, job_id) == "validating"  # the model loads, the data is read and tokenised
    assert jobs.set_progress(db, job_id, attempt, {"phase": "learn", "step": 0})
    assert jobs.set_progress(db, job_id, attempt, {"phase": "learn", "step": 5})
    assert status(db, job_id) == "running"
    assert events(db, job_id) == ["queued", "validating", "running"]  # the move is told once
    jobs.cancel(db, db.get(Job, job_id))
    assert status(db, job_id) == "cancelling"


def test_a_validating_job_can_be_cancelled_and_a_dead_one_is_claimed_again(db, new_job):
    job_id = new_job()
    attempt = jobs.claim(db, job_id, "w1", utcnow())
    assert jobs.claim(db, job_id, "w2", utcnow() + timedelta(seconds=1)) == attempt + 1  # w1 stopped beating
    jobs.cancel(db, db.get(Job, job_id))
    assert jobs.heartbeat(db, job_id, attempt + 1) == "cancelling"
    assert events(db, job_id) == ["queued", "validating", "validating", "cancelling"]


def test_a_redelivered_message_takes_over_a_job_whose_worker_stopped_beating(db, new_job):
    job_id = new_job()
    assert jobs.claim(db, job_id, "w1", utcnow()) == 1
    assert jobs.claim(db, job_id, "w2", utcnow() + timedelta(seconds=1)) == 2  # w1's heartbeat is now stale
    # w1's writes are fenced off: it learns the job is not its own any more.
    assert jobs.heartbeat(db, job_id, 1) is None
    assert not jobs.set_progress(db, job_id, 1, {"phase": "search"})
    assert not jobs.finish(db, job_id, 1, "succeeded")
    assert jobs.heartbeat(db, job_id, 2) == "validating"
    assert jobs.finish(db, job_id, 2, "succeeded", result={"metric": 1.0})
    assert status(db, job_id) == "succeeded"


def test_final_jobs_are_not_claimed(db, new_job):
    cancelled = new_job()
    jobs.cancel(db, db.get(Job, cancelled))
    assert jobs.claim(db, cancelled, "w", utcnow() + LONG_AGO) is None
    done = new_job()
    jobs.finish(db, done, jobs.claim(db, done, "w", utcnow()), "failed", error={"code": "x", "message": "y"})
    assert jobs.claim(db, done, "w", utcnow() + LONG_AGO) is None


def test_heartbeat_reports_a_cancellation(db, new_job):
    job_id = new_job()
    attempt = jobs.claim(db, job_id, "w", utcnow())
    jobs.cancel(db, db.get(Job, job_id))
    assert jobs.heartbeat(db, job_id, attempt) == "cancelling"
    assert jobs.finish(db, job_id, attempt, "cancelled")
    assert events(db, job_id) == ["queued", "validating", "cancelling", "cancelled"]


def test_cancel_refuses_finished_jobs(db, new_job):
    job_id = new_job()
    jobs.finish(db, job_id, jobs.claim(db, job_id, "w", utcnow()), "succeeded")
    with pytest.raises(jobs.NotCancellable):
        jobs.cancel(db, db.get(Job, job_id))
    assert status(db, job_id) == "succeeded"


def test_rounds_are_recorded_once(db, new_job):
    job_id = new_job()
    record = RoundRecord(round=1, trainable_params=10, target_params=9, metric_name="accuracy", metric=0.5,
                         train_loss=0.7, units_left=["lora.0"], removed=[RemovedUnit("adapter.1", 4, 0.1)],
                         wall_s=1.0, chance_metric=0.5, type_values={"lora": 0.02})
    assert jobs.add_round(db, job_id, record) is True
    db.flush()
    # a resumed search reporting round 1 again: not stored twice, and the caller learns it was not new
    assert jobs.add_round(db, job_id, dataclasses.replace(record, metric=0.9)) is False
    db.flush()
    assert [(r.round, r.metric) for r in jobs.list_rounds(db, job_id)] == [(1, 0.5)]
    assert db.query(Round).filter_by(job_id=job_id).count() == 1
    row = jobs.list_rounds(db, job_id)[0]
    assert (row.chance_metric, row.type_values, row.removed) == (
        0.5, {"lora": 0.02}, [dataclasses.asdict(unit) for unit in record.removed])


def test_a_round_field_without_a_column_is_refused(db, new_job):
    job_id = new_job()
    Newer = dataclasses.make_dataclass("Newer", [("novelty", float, 0.0)], bases=(RoundRecord,))
    record = Newer(round=1, trainable_params=10, target_params=9, metric_name="accuracy", metric=0.5,
                   train_loss=0.7, units_left=[], removed=[], wall_s=1.0)
    with pytest.raises(ValueError, match="novelty"):
        jobs.add_round(db, job_id, record)
    assert jobs.list_rounds(db, job_id) == []


def test_reaper_requeues_fails_and_cancels_jobs_of_dead_workers(db, new_job):
    alive, dead, dead_too_often, dead_cancelling = new_job(), new_job(), new_job(), new_job()
    for job_id in (alive, dead, dead_too_often, dead_cancelling):
        jobs.claim(db, job_id, "w", utcnow())
    for _ in range(2):  # two more deaths and redeliveries: attempt 3
        jobs.claim(db, dead_too_often, "w", utcnow() + LONG_AGO)
    jobs.cancel(db, db.get(Job, dead_cancelling))
    for job_id in (dead, dead_too_often, dead_cancelling):
        db.get(Job, job_id).heartbeat_at = utcnow() - LONG_AGO
    db.flush()

    cutoff = utcnow() - timedelta(minutes=1)
    to_send = reap(db, cutoff)
    assert to_send == [dead]
    assert [status(db, j) for j in (alive, dead, dead_too_often, dead_cancelling)] == [
        "validating", "queued", "failed", "cancelled"]
    assert db.get(Job, dead_too_often).error["code"] == "worker_lost"
    assert db.get(Job, dead).enqueued_at is None
    assert events(db, dead)[-1] == "queued"
    # The re-queued job resumes as attempt 2; the reaper then leaves it alone.
    assert jobs.claim(db, dead, "w2", cutoff) == 2
    assert reap(db, cutoff) == []


def test_reaper_sends_queued_jobs_the_broker_never_took(db, new_job):
    sent, unsent, _fresh = new_job(), new_job(), new_job()
    jobs.mark_enqueued(db, sent)
    for job_id in (sent, unsent):
        db.get(Job, job_id).updated_at = utcnow() - LONG_AGO
    db.flush()
    cutoff = utcnow() - timedelta(minutes=1)
    assert reap(db, cutoff) == [unsent]  # not fresh


def test_reaper_resends_queued_jobs_no_worker_claimed(db, new_job):
    """A message lost by the broker, or acked by a worker that could not reach the database, must not strand the
    job: once sent and still queued past the deadline, it is sent again, and only once per deadline."""
    lost, recent, claimed = new_job(), new_job(), new_job()
    for job_id in (lost, recent, claimed):
        jobs.mark_enqueued(db, job_id)
    jobs.claim(db, claimed, "w", utcnow())
    db.get(Job, lost).enqueued_at = utcnow() - timedelta(minutes=10)
    db.get(Job, claimed).enqueued_at = utcnow() - timedelta(minutes=10)
    db.flush()
    cutoff = utcnow() - timedelta(minutes=1)
    assert reap(db, cutoff, resend_after_s=300) == [lost]
    assert db.get(Job, lost, populate_existing=True).enqueued_at is None  # sending it stamps it again
    assert reap(db, cutoff, resend_after_s=300) == []  # taken: a second reaper does not send it too
    jobs.mark_enqueued(db, lost)
    assert reap(db, cutoff, resend_after_s=300) == []  # just sent again: wait for the next deadline


def test_resend_waits_double_with_the_jobs_age():
    created = utcnow()
    first_send = created + timedelta(seconds=1)
    assert not jobs.resend_due(first_send + timedelta(seconds=299), first_send, created, 300, 3600)
    assert jobs.resend_due(first_send + timedelta(seconds=300), first_send, created, 300, 3600)
    resent = created + timedelta(seconds=1000)  # it had existed 1000 s: wait that long now
    assert not jobs.resend_due(resent + timedelta(seconds=999), resent, created, 300, 3600)
    assert jobs.resend_due(resent + timedelta(seconds=1000), resent, created, 300, 3600)
    old = created + timedelta(days=1)  # never more than resend_max_s
    assert jobs.resend_due(old + timedelta(seconds=3600), old, created, 300, 3600)


def test_one_reaper_passes_at_a_time(db, settings):
    """Several processes reap (API processes, workers): while one holds the pass, another skips its own."""
    from store.db import get_engine

    with get_engine(settings.db_url).connect() as other:
        with other.begin():
            assert other.scalar(sqlalchemy.text(
                "SELECT pg_try_advisory_xact_lock(hashtext('peftsearch.reaper.' || current_schema()))"))
            assert jobs.reaper_turn(db) is False
        # the other pass committed: its lock went with its transaction
        assert jobs.reaper_turn(db) is True
