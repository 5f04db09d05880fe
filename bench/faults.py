"""Fault injection against a throwaway deployment: a PostgreSQL cluster and a Redis of its own (other ports, a
temporary directory; the shared ones are never touched), a real Celery worker, and the reaper's loop.

Kinds (each run submits tiny searches and ends when every job is final):
- `postgres`: PostgreSQL stopped (immediate) while a job runs with jobs queued behind it, restarted seconds later;
- `redis`: Redis killed and restarted empty (no persistence) while a job runs with jobs queued behind it;
- `checkpoint`: a worker killed between a round's checkpoint and its database write;
- `retrain`: a worker killed mid-retrain, after a retrain checkpoint (every RETRAIN_CHECKPOINT_STEPS steps);
- `archive`: a worker killed while it writes the archive.
A run passes when every job succeeded, with each round recorded once and one archive (no other file of the job
in the artifact directory); a `retrain` run also needs the next attempt to have resumed the retrain after that
checkpoint, not started it over. Recovery time: from the fault's end (restart, or the kill) to the last job succeeded.

    python -m bench.faults --runs 20            # each kind 20 times; writes bench/results/faults.{json,md}
    python -m bench.faults --runs 3 --kinds redis

tests/service/test_faults.py runs each kind once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KINDS = ("postgres", "redis", "checkpoint", "retrain", "archive")
MODEL = "tiny-bert"
# pruned by the scores although ten steps teach the tiny model nothing: the faults strike during the rounds
SEARCH = {"schedule": {"rounds": 2, "steps_per_round": 10, "eval_examples": 32, "unlearned": "prune"},
          "train": {"steps": 10, "batch_size": 8, "max_length": 32}}
RETRAIN_CHECKPOINT_STEPS, RETRAIN_KILL_STEP = 3, 5  # the retrain is killed 2 steps after its checkpoint at step 3
JOBS_BEHIND = 2  # queued behind the running job when the database or the broker goes away
OUTAGE_S = 4.0
TIMEOUT_S = 120.0

# The worker process dies by its own hand at the chosen point (the job's state on disk is then exactly what a
# kill -9 there leaves); everything else is the production code path.
DOOMED = {
    "checkpoint": """
import os, signal
import worker.job as job
report = job.JobRun.on_progress
def on_progress(self, event):
    if event.kind == "round":  # the engine saved the round's checkpoint and is about to report it
        os.kill(os.getpid(), signal.SIGKILL)
    report(self, event)
job.JobRun.on_progress = on_progress
""",
    "retrain": f"""
import os, signal
import worker.job as job
report = job.JobRun.on_progress
def on_progress(self, event):
    if event.kind == "step" and event.phase == "retrain" and event.step == {RETRAIN_KILL_STEP}:
        os.kill(os.getpid(), signal.SIGKILL)
    report(self, event)
job.JobRun.on_progress = on_progress
""",
    "archive": """
import os, signal, tarfile
addfile = tarfile.TarFile.addfile
def dying_addfile(self, *args, **kwargs):
    addfile(self, *args, **kwargs)
    self.fileobj.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # the .partial archive holds one member
tarfile.TarFile.addfile = dying_addfile
""",
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class Postgres:
    """A PostgreSQL cluster of its own in a temporary directory, on a port of its own (trust auth, loopback)."""

    def __init__(self, root: Path):
        self.dir, self.port = root / "pg", free_port()
        self.dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
            shutil.chown(self.dir, "postgres")
        subprocess.run(_as_postgres(["initdb", "-D", str(self.dir), "-U", "postgres", "--auth=trust", "-N"]),
                       check=True, capture_output=True)
        self.start()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(self.dir), "-o", options, "-l", str(self.dir / "log"),
                                     "-w", "start"]), check=True, capture_output=True)

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(self.dir), "-m", mode, "-w", "stop"]),
                       check=False, capture_output=True)


class Redis:
    """A Redis of its own without persistence: a restart loses every message."""

    def __init__(self, root: Path):
        self.dir, self.port = root, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                                     text=True).stdout.strip() == "PONG", 20, "redis to start")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


class Deployment:
    """The throwaway services, the settings every process of it reads, one Celery worker and the reaper loop."""

    def __init__(self, root: Path, model_path: str, train: Path, dev: Path):
        from store.db import upgrade
        from store.settings import Settings

        self.root = root
        self.pg, self.redis = Postgres(root), Redis(root)
        upgrade(self.pg.url)
        self.env = {"DATABASE_URL": self.pg.url, "BROKER_URL": self.redis.url, "PEFTSEARCH_HOME": str(root / "home"),
                    "PEFTSEARCH_MODELS": json.dumps({MODEL: model_path}), "PEFTSEARCH_QUEUE": "faults",
                    "PEFTSEARCH_HEARTBEAT_S": "0.2", "PEFTSEARCH_REAP_AFTER_S": "2", "PEFTSEARCH_REAP_EVERY_S": "0.5",
                    "PEFTSEARCH_RESEND_AFTER_S": "3", "PEFTSEARCH_RESEND_MAX_S": "6",
                    "PEFTSEARCH_CLAIM_RETRY_S": "0.5", "PEFTSEARCH_CLAIM_RETRIES": "8",
                    "PEFTSEARCH_RETRAIN_CHECKPOINT_STEPS": str(RETRAIN_CHECKPOINT_STEPS),
                    "PEFTSEARCH_PROGRESS_EVERY_S": "0", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                    # The reaper is this process's loop, paused while a doomed worker claims its job: the Celery
                    # worker's own would send that job to the Celery worker first.
                    "PEFTSEARCH_WORKER_REAPER": "false"}
        self.settings = Settings(home=root / "home", database_url=self.pg.url, broker_url=self.redis.url,
                                 models={MODEL: model_path}, queue="faults", heartbeat_s=0.2, reap_after_s=2,
                                 reap_every_s=0.5, resend_after_s=3, resend_max_s=6, progress_every_s=0)
        self.dataset_id = self._upload(train, dev)
        self.worker: subprocess.Popen | None = None
        self.reaping = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self._reap, daemon=True).start()

    def _upload(self, train: Path, dev: Path) -> str:
        from store.datasets import create_dataset
        from store.db import session_factory

        with session_factory(self.pg.url).begin() as session, open(train, "rb") as t, open(dev, "rb") as d:
            return create_dataset(session, self.settings.datasets, owner="faults", name="toy", fmt=None,
                                  files={"train": (train.name, t), "dev": (dev.name, d)}, columns={},
                                  max_bytes=self.settings.max_upload_bytes).id

    def _reap(self) -> None:  # what `peftsearch serve` runs in a thread, faster
        from worker.reaper import reap_once

        while not self.closed.wait(0.5):
            if self.reaping.is_set():
                try:
                    reap_once(self.settings)
                except Exception:  # the database is down: the next pass tries again
                    pass

    def process_env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PEFTSEARCH_")
                and k not in ("DATABASE_URL", "BROKER_URL")}
        return {**base, **self.env}

    def start_worker(self) -> None:
        log = open(self.root / "worker.log", "ab")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--queues", "faults",
             "--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=self.process_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def submit(self, send: bool = True) -> str:
        from store import jobs
        from store.db import session_factory
        from store.specs import JobCreate
        from worker.queue import enqueue

        body = JobCreate(model=MODEL, dataset_id=self.dataset_id, budget="2%", search=SEARCH)
        with session_factory(self.pg.url).begin() as session:
            job_id = jobs.submit(session, owner="faults", body=body, idempotency_key=None,
                                 settings=self.settings)[0].id
        if send:
            enqueue(self.settings, job_id)
        return job_id

    def job(self, job_id: str):
        from store.db import session_factory
        from store.models import Job

        try:
            with session_factory(self.pg.url)() as session:
                return session.get(Job, job_id)
        except Exception:
            return None

    def run_doomed(self, kind: str, job_id: str) -> None:
        """A worker that claims the job and dies at the kind's point; returns once it is dead."""
        code = DOOMED[kind] + ("from store.settings import get_settings\nfrom worker.job import run_job\n"
                               f"run_job({job_id!r}, get_settings())\n")
        with open(self.root / f"doomed-{kind}.log", "ab") as log:
            done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=self.process_env(), stdout=log,
                                  stderr=subprocess.STDOUT, timeout=TIMEOUT_S)
        assert done.returncode == -signal.SIGKILL, f"the doomed worker exited {done.returncode}, not killed"

    def verify(self, job_ids: list[str], resumed_retrain: bool = False) -> list[str]:
        """What is wrong with these jobs now (empty: all succeeded, rounds once each, one archive; with
        `resumed_retrain`, a retrain resumed after its checkpoint)."""
        from store.artifacts import sha256_file
        from store.db import session_factory
        from store.models import Job, JobEvent, Round

        problems = []
        with session_factory(self.pg.url)() as session:
            for job_id in job_ids:
                job = session.get(Job, job_id)
                rounds = [r.round for r in session.query(Round).filter_by(job_id=job_id).order_by(Round.round)]
                files = sorted(p.name for p in self.settings.artifacts.glob(f"{job_id}-*"))
                if job.status != "succeeded":
                    problems.append(f"{job_id} {job.status} {job.error}")
                elif rounds != list(range(1, SEARCH["schedule"]["rounds"] + 1)):
                    problems.append(f"{job_id} rounds {rounds}")
                elif job.artifact is None or files != [job.artifact.path]:
                    problems.append(f"{job_id} archive files {files}")
                elif sha256_file(self.settings.artifacts / job.artifact.path) != job.artifact.sha256:
                    problems.append(f"{job_id} archive checksum")
                elif resumed_retrain and not session.query(JobEvent).filter(
                        JobEvent.job_id == job_id, JobEvent.kind == "phase",
                        JobEvent.message.contains(f"resuming after step {RETRAIN_CHECKPOINT_STEPS}")).count():
                    problems.append(f"{job_id} retrain not resumed after step {RETRAIN_CHECKPOINT_STEPS}")
        return problems

    def wait_final(self, job_ids: list[str]) -> None:
        _wait(lambda: all((job := self.job(j)) is not None and job.status in ("succeeded", "failed", "cancelled")
                          for j in job_ids), TIMEOUT_S, f"jobs {job_ids} to end", [self.root / "worker.log"])

    def close(self) -> None:
        self.closed.set()
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait()
        from store.db import get_engine

        get_engine(self.pg.url).dispose()
        self.pg.stop("fast")
        self.redis.kill()


def run_kind(dep: Deployment, kind: str) -> dict[str, Any]:
    """One fault of `kind`; returns {"kind", "ok", "problems", "recovery_s", "jobs"}."""
    if kind in ("postgres", "redis"):
        dep.reaping.set()
        running, behind = dep.submit(), [dep.submit() for _ in range(JOBS_BEHIND)]
        job_ids = [running, *behind]
        _wait(lambda: (job := dep.job(running)) is not None and job.status == "running", TIMEOUT_S,
              f"job {running} to start", [dep.root / "worker.log"])
        if kind == "postgres":
            dep.pg.stop("immediate")
            time.sleep(OUTAGE_S)
            dep.pg.start()
        else:
            dep.redis.kill()
            dep.redis.start()
    else:
        dep.reaping.clear()  # the doomed worker must claim the job first
        job_ids = [dep.submit(send=False)]
        dep.run_doomed(kind, job_ids[0])
        dep.reaping.set()  # the reaper re-queues the dead worker's job; the Celery worker resumes it
    recovered_from = time.monotonic()
    dep.wait_final(job_ids)
    recovery_s = time.monotonic() - recovered_from
    problems = dep.verify(job_ids, resumed_retrain=kind == "retrain")
    return {"kind": kind, "ok": not problems, "problems": problems, "recovery_s": round(recovery_s, 2),
            "jobs": len(job_ids)}


def _wait(check, timeout: float, what: str, logs: list[Path] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def deployment(model_path: str, train: Path, dev: Path) -> tuple[Deployment, Path]:
    root = Path(tempfile.mkdtemp(prefix="peftsearch-faults-", dir="/tmp"))
    dep = Deployment(root, model_path, train, dev)
    dep.start_worker()
    return dep, root


def report(records: list[dict[str, Any]], runs: int, wall_s: float) -> tuple[dict, str]:
    kinds = {}
    for kind in dict.fromkeys(r["kind"] for r in records):
        mine = [r for r in records if r["kind"] == kind]
        times = sorted(r["recovery_s"] for r in mine)
        kinds[kind] = {"runs": len(mine), "ok": sum(r["ok"] for r in mine), "jobs": sum(r["jobs"] for r in mine),
                       "recovery_s_median": times[len(times) // 2], "recovery_s_max": times[-1],
                       "problems": [p for r in mine for p in r["problems"]]}
    summary = {"runs_per_kind": runs, "wall_s": round(wall_s, 1), "kinds": kinds,
               "machine": f"{os.cpu_count()} CPU cores", "command": " ".join(["python -m bench.faults", *sys.argv[1:]])}
    lines = ["# Fault injection", "", f"`{summary['command']}` on {summary['machine']}, {summary['wall_s']} s. "
             "Throwaway PostgreSQL and Redis, one Celery worker (solo pool), tiny BERT searches of 2 rounds. "
             "Recovery: from the fault's end to the last job succeeded (reaper every 0.5 s, REAP_AFTER_S 2, "
             "RESEND_AFTER_S 3, CLAIM_RETRY_S 0.5).", "",
             "| kind | runs | all jobs succeeded, rounds once, one archive | jobs | recovery median s | max s |",
             "|---|---|---|---|---|---|"]
    for kind, k in kinds.items():
        lines.append(f"| {kind} | {k['runs']} | {k['ok']} | {k['jobs']} | {k['recovery_s_median']} | "
                     f"{k['recovery_s_max']} |")
    problems = [f"- {kind}: {p}" for kind, k in kinds.items() for p in k["problems"]]
    return summary, "\n".join(lines + ([""] + ["Problems:"] + problems if problems else []) + [""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tests.tiny import make_tiny_model, make_toy_task

    scratch = Path(tempfile.mkdtemp(prefix="peftsearch-faults-data-"))
    model = make_tiny_model(scratch / "model")
    train, dev = make_toy_task(scratch / "toy", fmt="csv")
    dep, root = deployment(str(model), train, dev)
    records, start = [], time.monotonic()
    try:
        for i in range(args.runs):
            for kind in args.kinds:
                record = run_kind(dep, kind)
                records.append(record)
                print(f"{i + 1}/{args.runs} {kind}: ok={record['ok']} recovery {record['recovery_s']} s "
                      f"{record['problems'] or ''}", flush=True)
    finally:
        dep.close()
    summary, markdown = report(records, args.runs, time.monotonic() - start)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps({**summary, "records": records}, indent=2) + "\n")
    (RESULTS / "faults.md").write_text(markdown)
    print(markdown)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
