"""Run one job: claim it, call `pruning.search` with callbacks that write progress, events and rounds, pack the
output, record the outcome. The Celery task and the in-process runner both come here; torch loads inside."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from pruning.result import RoundRecord, format_round
from store import jobs
from store.artifacts import remove_attempt_files, write_archive
from store.db import session_factory
from store.models import CANCELLED, CANCELLING, FAILED, SUCCEEDED, Job, utcnow
from store.settings import Settings

log = logging.getLogger("peftsearch.worker")
DATABASE_DOWN = (OperationalError, InterfaceError, PoolTimeout)  # worth retrying: the database may come back
FINISH_RETRY_MAX_S = 30.0  # the longest wait between tries to record an outcome while the database is down


class ClaimFailed(Exception):
    """The database could not be reached before the claim committed: nothing was done, retry the message."""


def run_job(job_id: str, settings: Settings) -> str:
    """Returns what became of the job: succeeded, failed, cancelled, or skipped (not ours to run). Raises
    ClaimFailed when the database is unreachable before the job is claimed."""
    sessions = session_factory(settings.db_url)
    try:
        with sessions.begin() as session:
            stale_before = utcnow() - timedelta(seconds=settings.reap_after_s)
            attempt = jobs.claim(session, job_id, f"{socket.gethostname()}:{os.getpid()}", stale_before)
            job = session.get(Job, job_id) if attempt else None
            spec, model = (job.spec, job.request.get("model", "model")) if job else (None, None)
    except DATABASE_DOWN as e:
        raise ClaimFailed(f"job {job_id}: {type(e).__name__}") from e
    if attempt is None:
        log.info("job %s is not claimable (taken, finished or cancelled); skipping", job_id)
        return "skipped"
    return JobRun(job_id, attempt, spec, settings, model_name=model).execute()


class JobRun:
    def __init__(self, job_id: str, attempt: int, spec: dict[str, Any], settings: Settings,
                 model_name: str = "model"):
        self.job_id, self.attempt, self.spec, self.settings = job_id, attempt, spec, settings
        self.sessions = session_factory(settings.db_url)
        self.stop = threading.Event()  # the engine polls it between steps: cancelled, or the job was taken away
        self.done = threading.Event()
        self.last_step_write = 0.0
        self.work = settings.work / job_id
        self.unwritten_rounds: list[RoundRecord] = []  # reported while the database was down
        # Callers see names, never this server's paths: the model's, the dataset files', the work directory.
        task = spec.get("task", {})
        self.redactions = sorted(((str(path), label) for path, label in (
            (spec.get("model"), model_name), (task.get("train"), Path(task.get("train") or "train").name),
            (task.get("dev"), Path(task.get("dev") or "dev").name),
            (self.work, job_id), (settings.work, "work"), (settings.datasets, "datasets"),
            (settings.artifacts, "artifacts")) if path), key=lambda pair: -len(pair[0]))

    def redact(self, text: str) -> str:
        for path, label in self.redactions:
            text = text.replace(path, label)
        return text

    def redact_all(self, value: Any) -> Any:
        """A JSON value (the result) with every string redacted."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {key: self.redact_all(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.redact_all(item) for item in value]
        return value

    def execute(self) -> str:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time: models are local paths
        from celery.exceptions import SoftTimeLimitExceeded

        import pruning
        from pruning.checkpoint import CheckpointEvery

        every = CheckpointEvery(steps=self.settings.retrain_checkpoint_steps, seconds=self.settings.retrain_checkpoint_s)
        out_dir, checkpoint_dir = self.work / "out", self.work / "checkpoint"
        shutil.rmtree(out_dir, ignore_errors=True)  # a previous attempt's partial export; its checkpoint stays
        heart = threading.Thread(target=self.beat, name=f"heartbeat-{self.job_id}", daemon=True)
        heart.start()
        try:
            result = pruning.search(pruning.SearchSpec.from_dict(self.spec), out_dir, on_progress=self.on_progress,
                                    should_stop=self.stop.is_set, checkpoint_dir=checkpoint_dir,
                                    checkpoint_every=every)
            summary = self.redact_all({k: v for k, v in result.to_dict().items() if k not in ("rounds", "out_dir")})
            artifact = write_archive(out_dir, self.settings.artifacts, self.job_id, self.attempt)
            outcome = self.finish(SUCCEEDED, result=summary, artifact=artifact)
            if outcome != SUCCEEDED:
                (self.settings.artifacts / artifact["path"]).unlink(missing_ok=True)
        except pruning.Cancelled:
            outcome = self.finish(CANCELLED)
        except SoftTimeLimitExceeded:
            outcome = self.fail("time_limit", f"the job ran past its {self.settings.job_time_limit_s} s limit")
        except Exception as e:
            log.exception("job %s failed", self.job_id)
            outcome = self.fail(error_code(e), self.redact(f"{type(e).__name__}: {e}"))
        finally:
            self.done.set()
            heart.join()
        if outcome != "lost":
            shutil.rmtree(self.work, ignore_errors=True)
        if outcome in (FAILED, CANCELLED):
            remove_attempt_files(self.settings.artifacts, self.job_id)
        return outcome

    def fail(self, code: str, message: str) -> str:
        return self.finish(FAILED, error={"code": code, "message": message})

    def finish(self, status: str, **fields: Any) -> str:
        """Record the outcome, with any round the database missed, waiting out a database outage (the work is
        done; the Celery time limit bounds the wait)."""
        wait = 1.0
        while True:
            try:
                with self.sessions.begin() as session:
                    finished = jobs.finish(session, self.job_id, self.attempt, status, **fields)
                    if finished:
                        self.write_rounds(session)
                self.unwritten_rounds = []
                return status if finished else "lost"  # lost: another attempt owns the job; leave it all to it
            except DATABASE_DOWN:
                log.warning("job %s: database unreachable, outcome %s not recorded yet; retrying in %.0f s",
                            self.job_id, status, wait)
                time.sleep(wait)
                wait = min(2 * wait, FINISH_RETRY_MAX_S)

    def write_rounds(self, session) -> None:
        for record in self.unwritten_rounds:
            if not jobs.add_round(session, self.job_id, record):
                continue  # re-reported by a resumed search: its row and its event are there already
            jobs.add_event(session, self.job_id, "round", format_round(record, self.spec["schedule"]["rounds"]),
                           {"round": record.round, "trainable_params": record.trainable_params,
                            "metric": record.metric, "metric_name": record.metric_name})

    def beat(self) -> None:
        """Prove this worker is alive, and pick up a cancellation, every heartbeat_s."""
        while not self.done.wait(self.settings.heartbeat_s):
            try:
                with self.sessions.begin() as session:
                    status = jobs.heartbeat(session, self.job_id, self.attempt)
            except Exception:
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)
                continue
            if status is None or status == CANCELLING:  # None: the job was handed to another attempt
                self.stop.set()

    def on_progress(self, event) -> None:
        """The engine's callback (its own thread): every phase and round is written, steps at most once per
        progress_every_s."""
        if event.kind == "step":
            if time.monotonic() - self.last_step_write < self.settings.progress_every_s:
                return
            self.last_step_write = time.monotonic()
        progress = {k: v for k, v in event.to_dict().items() if k not in ("kind", "record")}
        progress["message"] = self.redact(progress.get("message") or "")
        if event.kind == "round":
            self.unwritten_rounds.append(event.record)
        try:
            with self.sessions.begin() as session:
                if not jobs.set_progress(session, self.job_id, self.attempt, progress):  # not ours any more
                    self.stop.set()
                    return
                if event.kind == "phase":  # the phase is data; the message is for people
                    message = f"{event.phase}: {progress['message']}" if progress["message"] else event.phase
                    jobs.add_event(session, self.job_id, "phase", message,
                                   {"phase": event.phase, "elapsed_s": event.elapsed_s})
                self.write_rounds(session)
            self.unwritten_rounds = []
        except DATABASE_DOWN:  # the search goes on; its rounds are written with the next write that succeeds
            log.warning("job %s: database unreachable, %s progress not written", self.job_id, event.kind)


def error_code(error: Exception) -> str:
    from pruning.data import DataError
    from pruning.spec import SpecError

    if isinstance(error, DataError):
        return "invalid_dataset"
    if isinstance(error, SpecError):
        return "invalid_spec"
    return "engine_error"

