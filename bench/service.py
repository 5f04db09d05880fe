"""The API under load on loopback with PostgreSQL, and the service's overhead on a job (issue: API under load).

    python -m bench.service

What it starts, all on this host, and tears down afterwards:

    database  a throwaway PostgreSQL database (default peftsearch_bench on 127.0.0.1:5432), created, migrated
              with the project's Alembic migrations (store.db.upgrade), dropped at the end
    broker    the local Redis (127.0.0.1:6379) on a dedicated, empty DB number (default 14) and a queue of this
              run's own; its keys are deleted at the end
    API       `peftsearch serve` with the compose `api` service's arguments (its API processes too), with that
              DATABASE_URL and BROKER_URL: POST /v1/jobs commits the job and really publishes it to Redis
    worker    `peftsearch worker` (Celery, as the compose `worker` service), only for the overhead phase

Phases (the load generator is this process, the server another; see the notes in the report):

    post      POST /v1/jobs, open loop at --rate req/s: valid bodies on an uploaded dataset and the bundled model,
              a distinct Idempotency-Key each; nobody consumes the queue, so the jobs stay queued
    get       GET /v1/jobs/{id} at --rate req/s over the jobs the post phase made
    overhead  the same real search (all-MiniLM-L6-v2 on the shipped SST-2 sample) run --reps times directly
              (pruning.search in a fresh process) and through the service (POST, Celery worker, poll until
              succeeded), alternating; same spec, seed, torch threads and environment
    list      --seed-jobs jobs bulk-inserted for a second owner (INSERT ... SELECT on the store's tables, statuses
              mixed, succeeded ones carrying the real result and artifact row of an overhead job), then
              GET /v1/jobs?limit=100 first page, a deep cursor page, and status=failed, each at --list-rate req/s

    burst     --burst GETs at one instant (how the API copes with more requests in flight than it has threads)

Latency is measured from each request's scheduled send time (no coordinated omission). With py-spy on PATH
(`pip install py-spy`; or --py-spy PATH), each load phase is followed by a short pass at the same rate during which
py-spy samples the server, and the report says where its CPU goes. Results go to results/service.json and
service.md. Needs PostgreSQL and Redis on this host (as the service tests do) and the bundled all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .common import machine, mean_spread

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "peftsearch" / "demo_data"
MODEL = "all-MiniLM-L6-v2"
BUDGET = "0.5%"
# The overhead job: about 30-45 s on one core of this machine, so that 3 % is about a second.
SEARCH = {"schedule": {"rounds": 2, "steps_per_round": 8, "eval_examples": 100},
          "train": {"steps": 30, "batch_size": 32, "max_length": 64, "lr": 2e-3}, "seed": 0}
TARGETS = {"post_p99_ms": 20.0, "get_p99_ms": 10.0, "list_p99_ms": 30.0, "overhead_pct": 3.0}
FINAL = ("succeeded", "failed", "cancelled")


# --- load generation --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    due: float  # scheduled send time (loop clock)
    sent: float  # when the request actually started
    done: float
    status: int | str  # HTTP status, or the exception's name


@dataclass
class Request:
    method: str
    url: str
    headers: dict = field(default_factory=dict)
    content: bytes | None = None
    params: dict | None = None


CONNECTIONS = 64  # the client's connections: requests beyond these wait (on the clock) for a free one
GRACE_S = 35.0  # after the last scheduled send, how long the phase waits for answers (the pool's timeout is 30 s)


async def open_loop(client, make, rate: float, warmup_s: float, duration_s: float, on_response=None,
                    answered: list[int] | None = None) -> list[Sample]:
    """Send make(i) at t0 + i/rate for warmup_s + duration_s, whatever the responses do (an open loop); return the
    samples scheduled after the warm-up. Latency counts from the due time, so a request that waits for one of the
    CONNECTIONS (the server is slow to answer) or that the client starts late is charged for it. Requests still
    unanswered GRACE_S after the last due time are cancelled and recorded as 'unfinished' at that time. `answered`
    (a one-item list) counts every response, warm-up included."""
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    start = loop.time() + 0.05
    measured_from = start + warmup_s
    slots = asyncio.Semaphore(CONNECTIONS)  # our own queue: httpcore's is quadratic in waiting requests

    async def fire(i: int, due: float) -> None:
        request = make(i)
        sent = loop.time()
        try:
            async with slots:
                sent = loop.time()
                response = await client.request(request.method, request.url, headers=request.headers,
                                                content=request.content, params=request.params)
            status: int | str = response.status_code
            if answered is not None:
                answered[0] += 1
            if on_response is not None:
                on_response(response)
        except asyncio.CancelledError:
            status = "unfinished"
        except Exception as e:  # a timeout or a refused connection is an error sample, not a crash
            status = type(e).__name__
        if due >= measured_from:
            samples.append(Sample(due, sent, loop.time(), status))

    tasks = []
    for i in range(round(rate * (warmup_s + duration_s))):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(i, due)))
    _, pending = await asyncio.wait(tasks, timeout=GRACE_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return samples


async def sequential(client, make, count: int, gap_s: float = 0.02) -> list[float]:
    """Latency of `count` requests sent one at a time on an otherwise idle server (ms; failures left out)."""
    out = []
    for i in range(count):
        request = make(i)
        t = time.perf_counter()
        try:
            response = await client.request(request.method, request.url, headers=request.headers,
                                            content=request.content, params=request.params)
            if response.status_code < 400:
                out.append((time.perf_counter() - t) * 1000)
        except Exception:
            pass
        await asyncio.sleep(gap_s)
    return out


async def settle(client, timeout_s: float = 150.0) -> float:
    """Wait until the API answers an authenticated request within a second again (after an overload, requests
    stuck in the connection pool take up to its 30 s timeout to clear). Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if (await client.get("/v1/jobs", params={"limit": 1}, timeout=1.0)).status_code == 200:
                return round(time.monotonic() - start, 1)
        except Exception:
            pass
        await asyncio.sleep(1.0)
    raise SystemExit(f"the API did not recover within {timeout_s:.0f} s")


def percentiles(values_ms: list[float]) -> dict:
    if not values_ms:
        return {}
    xs = sorted(values_ms)

    def p(q: float) -> float:
        return round(xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))], 2)

    return {"p50": p(0.50), "p90": p(0.90), "p99": p(0.99), "max": round(xs[-1], 2),
            "mean": round(sum(xs) / len(xs), 2), "n": len(xs)}


def summarize(samples: list[Sample], rate: float, duration_s: float, ok: tuple[int, ...]) -> dict:
    good = [s for s in samples if s.status in ok]
    errors: dict[str, int] = {}
    for s in samples:
        if s.status not in ok:
            errors[str(s.status)] = errors.get(str(s.status), 0) + 1
    first = min(s.due for s in samples)
    last = max(s.done for s in samples)
    # every request counts: a failure at the time it failed, an unfinished one at the time it was given up
    latency = [(s.done - s.due) * 1000 for s in samples]
    # p99 per 5 s window of scheduled time: a queue that keeps growing shows as a rising series
    windows = []
    for w in range(math.ceil(duration_s / 5)):
        inside = [(s.done - s.due) * 1000 for s in samples if first + 5 * w <= s.due < first + 5 * (w + 1)]
        windows.append(percentiles(inside).get("p99"))
    return {
        "target_rate": rate, "duration_s": duration_s, "requests": len(samples), "ok": len(good),
        "errors": sum(errors.values()), "error_kinds": errors,
        "achieved_rate": round(len(good) / max(last - first, 1e-9), 1),
        "latency_ms": percentiles(latency),
        "latency_ok_ms": percentiles([(s.done - s.due) * 1000 for s in good]),
        "send_lag_ms": percentiles([(s.sent - s.due) * 1000 for s in samples]),
        "p99_ms_per_5s": windows,
    }


# --- CPU accounting ---------------------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds spent during a phase by the API server, PostgreSQL, Redis, this process (the load generator),
    the worker, and everything else on the machine (other users of the cores)."""

    def __init__(self, server_pid: int, worker_pid: int | None = None):
        self.server_pid, self.worker_pid = server_pid, worker_pid

    def _group(self, proc) -> str:
        pid = proc.info["pid"]
        if pid == self.server_pid or self.server_pid in _ancestors(proc):  # with its API worker processes
            return "server"
        if pid == os.getpid():
            return "client"
        name = proc.info["name"] or ""
        if name.startswith("postgres"):
            return "postgres"
        if name.startswith("redis-server"):
            return "redis"
        if self.worker_pid and (pid == self.worker_pid or self.worker_pid in _ancestors(proc)):
            return "worker"
        return "other"

    def snapshot(self) -> tuple[float, float, dict[int, tuple[str, float]]]:
        import psutil

        procs = {}
        for proc in psutil.process_iter(["pid", "name", "cpu_times"]):
            times = proc.info["cpu_times"]
            if times is not None:
                procs[proc.info["pid"]] = (self._group(proc), times.user + times.system)
        total = psutil.cpu_times()
        busy = total.user + total.system + total.nice + getattr(total, "irq", 0) + getattr(total, "softirq", 0)
        return time.monotonic(), busy, procs

    @staticmethod
    def usage(before, after, requests: int | None = None) -> dict:
        """Percent of one core per group over the interval (and the server's CPU ms per request)."""
        wall = after[0] - before[0]
        groups: dict[str, float] = {}
        for pid, (group, cpu) in after[2].items():
            groups[group] = groups.get(group, 0.0) + cpu - before[2].get(pid, (group, 0.0))[1]
        named = sum(v for k, v in groups.items() if k != "other")
        groups["other"] = max(0.0, (after[1] - before[1]) - named)  # includes processes that came and went
        out = {f"{k}_pct": round(100 * v / wall, 1) for k, v in sorted(groups.items())}
        out["machine_pct"] = round(100 * (after[1] - before[1]) / wall, 1)
        if requests:
            out["server_ms_per_request"] = round(1000 * groups.get("server", 0.0) / requests, 2)
        return out


def _ancestors(proc) -> list[int]:
    try:
        return [p.pid for p in proc.parents()]
    except Exception:
        return []


# --- profiles -------------------------------------------------------------------------------------------------

PROJECT = ("api/routes/jobs.py", "api/deps.py", "api/schemas.py", "api/errors.py", "api/routes/meta.py", "store/",
           "worker/", "pruning/")
# Library functions worth naming when they show up (inclusive share): each is a cost a fix could remove.
NOTABLE = ("get_type_hints (typing.py)", "_LazyLoader._emit_lazyload", "_SelectInLoader._load_for_path",
           "_JsonLoader.load", "Celery.send_task", "Queue.put (queue.py)", "Handler.handle (logging",
           "BaseModel.__init__", "SQLCompiler.__init__", "_query2pg_nocache")


async def profile_server(py_spy: str, pid: int, seconds: int, load) -> dict:
    """Sample the server with py-spy (GIL holders only: where its CPU goes) while the coroutine `load` drives it.
    Returns the share of samples per package of the innermost frame, the project's functions and a few notable
    library functions by inclusive share (the function is anywhere on the stack)."""
    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as f:
        out = Path(f.name)
    spy = subprocess.Popen([py_spy, "record", "--subprocesses", "-p", str(pid), "-r", "100", "-f", "raw", "-o",
                            str(out), "-d", str(seconds), "--nonblocking", "--gil"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(0.3)
    await load
    while spy.poll() is None:
        await asyncio.sleep(0.1)
    total, inclusive, leaf = 0, {}, {}
    for line in (out.read_text().splitlines() if out.exists() else []):
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), []
        total += n
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            frames.append((name, where.split(":")[0]))
        if frames:
            path = frames[-1][1]
            package = "import machinery" if path.startswith("<frozen") else path.split("/")[0].removesuffix(".py")
            leaf[package] = leaf.get(package, 0) + n
        for function in {f"{name} ({path})" for name, path in frames}:
            inclusive[function] = inclusive.get(function, 0) + n
    out.unlink(missing_ok=True)
    if not total:
        return {"seconds": seconds, "samples": 0}

    def share(items, limit):
        return [[round(100 * n / total, 1), name] for name, n in sorted(items, key=lambda kv: -kv[1])[:limit]]

    return {"seconds": seconds, "samples": total,
            "by_package": share(leaf.items(), 12),
            "project": share([(k, v) for k, v in inclusive.items() if k.split(" (")[1].startswith(PROJECT)], 12),
            "notable": share([(k, v) for k, v in inclusive.items() if any(m in k for m in NOTABLE)], 10)}


# --- the service's processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen | None) -> None:
    """SIGTERM the process group we started, then SIGKILL whatever is left of it."""
    if process is None:
        return
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""



def compose_api_arguments(port: int) -> list[str]:
    """`peftsearch serve`'s arguments as docker-compose.yml's api service gives them (its API processes too), on
    loopback and this run's port."""
    import yaml

    command = yaml.safe_load((Path(__file__).parents[1] / "docker-compose.yml").read_text())["services"]["api"]["command"]
    assert command[0] == "peftsearch", command
    return [{"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(part, part) for part in command[1:]]


class Deployment:
    """A throwaway database and broker DB, the API server, and (on demand) a Celery worker."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.home = Path(tempfile.mkdtemp(prefix="peftsearch-bench-"))
        self.admin_url = f"{args.pg}/postgres"
        self.db_url = f"{args.pg}/{args.database}"
        self.redis_url = f"{args.redis}/{args.redis_db}"
        self.queue = f"bench-{uuid.uuid4().hex[:8]}"
        self.server: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        # One environment for the API, the worker and the direct engine runs (the fair comparison needs the
        # worker's and the direct run's to match): the service's settings, and the same torch threads.
        base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL")
                and not k.startswith("PEFTSEARCH_")}
        self.env = {**base, "DATABASE_URL": self.db_url, "BROKER_URL": self.redis_url,
                    "PEFTSEARCH_HOME": str(self.home), "PEFTSEARCH_QUEUE": self.queue, "HF_HUB_OFFLINE": "1",
                    "OMP_NUM_THREADS": str(args.torch_threads), "MKL_NUM_THREADS": str(args.torch_threads)}

    # database and broker

    def create(self) -> None:
        import redis
        from sqlalchemy import create_engine, text

        from store.db import upgrade

        self.redis = redis.Redis.from_url(self.redis_url)
        if self.redis.dbsize():
            raise SystemExit(f"Redis DB {self.args.redis_db} is not empty: pick an unused one with --redis-db")
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{self.args.database}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{self.args.database}"'))
        admin.dispose()
        upgrade(self.db_url)  # the project's Alembic migrations, as the compose `migrate` service runs them

    def make_key(self, owner: str) -> str:
        from store.db import session_factory
        from store.keys import create_key

        with session_factory(self.db_url).begin() as session:
            return create_key(session, owner, "bench.service")[1]

    def purge_queue(self) -> int:
        """Drop the messages the load phases published (no worker was consuming them), and cancel their jobs, so
        that a late re-send by the reaper finds nothing to claim. Returns how many jobs were cancelled."""
        from sqlalchemy import text

        from store.db import get_engine

        self.redis.delete(self.queue)
        with get_engine(self.db_url).begin() as connection:
            return connection.execute(text(
                "UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE status = 'queued'")).rowcount

    def destroy(self) -> None:
        from sqlalchemy import create_engine, text

        from store.db import get_engine

        stop(self.worker)
        stop(self.server)
        get_engine(self.db_url).dispose()
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{self.args.database}" WITH (FORCE)'))
        admin.dispose()
        if hasattr(self, "redis"):
            # the DB was empty at the start: what is there now is this run's queue and kombu/Celery bookkeeping
            ours = [k for k in self.redis.scan_iter()
                    if self.queue.encode() in k or k.startswith((b"unacked", b"_kombu."))]
            if ours:
                self.redis.delete(*ours)
        if not self.args.keep_logs:
            shutil.rmtree(self.home, ignore_errors=True)

    # processes

    def start_server(self) -> None:
        log = self.home / "serve.log"
        self.server = start([sys.executable, "-m", "peftsearch.cli", *compose_api_arguments(self.port)], self.env,
                            log)
        import httpx

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise SystemExit(f"the API exited ({self.server.returncode}):\n{tail(log)}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"the API was not ready within 90 s:\n{tail(log)}")

    def start_worker(self) -> None:
        log = self.home / "worker.log"
        self.worker = start([sys.executable, "-m", "peftsearch.cli", "worker"], self.env, log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise SystemExit(f"the worker exited ({self.worker.returncode}):\n{tail(log)}")
            if " ready." in tail(log, 20000):
                return
            time.sleep(0.3)
        raise SystemExit(f"the worker was not ready within 120 s:\n{tail(log)}")


# --- phases -----------------------------------------------------------------------------------------------------


def job_body(dataset_id: str) -> dict:
    return {"model": MODEL, "dataset_id": dataset_id, "budget": BUDGET, "search": SEARCH}


async def load_phase(dep: Deployment, name: str, key: str, make, rate: float, warmup_s: float, duration_s: float,
                     ok: tuple[int, ...], on_response=None, unloaded: int = 50, profile: bool = True) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=dep.base_url, headers=headers, limits=limits, timeout=30) as client:
        waited = await settle(client)
        idle = await sequential(client, make, unloaded) if unloaded else []
        meter = CpuMeter(dep.server.pid, dep.worker.pid if dep.worker else None)
        before = meter.snapshot()
        answered = [0]
        samples = await open_loop(client, make, rate, warmup_s, duration_s, on_response, answered)
        after = meter.snapshot()
        if profile and dep.args.py_spy:  # a separate pass at the same rate after the measured one: py-spy costs CPU too
            seconds = int(dep.args.profile_s)
            profile = await profile_server(dep.args.py_spy, dep.server.pid, seconds + 1,
                                           open_loop(client, make, rate, 0.5, seconds, on_response))
        else:
            profile = None
    result = summarize(samples, rate, duration_s, ok)
    result["unloaded_ms"] = percentiles(idle)
    if waited:
        result["waited_for_recovery_s"] = waited
    if profile:
        result["server_profile"] = profile
    result["cpu"] = CpuMeter.usage(before, after, requests=answered[0])  # warm-up included, as in the CPU window
    lat = result["latency_ms"]
    print(f"  {name}: {result['ok']}/{result['requests']} ok at {result['achieved_rate']}/s, p50 {lat.get('p50')} "
          f"p99 {lat.get('p99')} max {lat.get('max')} ms; server {result['cpu'].get('server_pct')}% of a core, "
          f"unloaded p50 {result['unloaded_ms'].get('p50')} ms", flush=True)
    return result


def post_and_get(dep: Deployment, key: str, dataset_id: str, args) -> tuple[dict, dict, list[str]]:
    body = json.dumps(job_body(dataset_id)).encode()
    ids: list[str] = []

    def make_post(_: int) -> Request:
        return Request("POST", "/v1/jobs", {"Content-Type": "application/json",
                                            "Idempotency-Key": uuid.uuid4().hex}, body)

    def collect(response) -> None:
        if response.status_code == 201:
            ids.append(json.loads(response.content)["id"])

    post = asyncio.run(load_phase(dep, "POST /v1/jobs", key, make_post, args.rate, args.warmup, args.duration,
                                  (201,), collect))
    rng = random.Random(0)

    def make_get(_: int) -> Request:
        return Request("GET", f"/v1/jobs/{rng.choice(ids)}")

    get = asyncio.run(load_phase(dep, "GET /v1/jobs/{id}", key, make_get, args.rate, args.warmup, args.duration,
                                 (200,)))
    # The same at other rates, shorter and unprofiled: where the latency bends
    for rate in [float(r) for r in args.other_rates.split(",") if r]:
        for result, name, make, ok in ((post, "POST /v1/jobs", make_post, (201,)),
                                       (get, "GET /v1/jobs/{id}", make_get, (200,))):
            result.setdefault("other_rates", []).append(asyncio.run(load_phase(
                dep, f"{name} at {rate:g}/s", key, make, rate, 2.0, args.other_duration, ok, collect
                if make is make_post else None, unloaded=0, profile=False)))
    return post, get, ids


def seed_jobs(dep: Deployment, owner: str, count: int, template: dict) -> dict:
    """`count` jobs for `owner` in one INSERT ... SELECT: ids in the store's format (creation-time ordered) over
    the last 30 days; 80 % succeeded (the real result, progress and an artifact row), 10 % failed, 7 % cancelled,
    3 % queued (already enqueued, so the reaper leaves them alone). Then VACUUM ANALYZE, as autovacuum would."""
    from sqlalchemy import create_engine, text

    from store.db import get_engine

    now_ms = int(time.time() * 1000)
    span_ms = 30 * 86400 * 1000
    params = {
        "owner": owner, "n": count, "base": now_ms - span_ms - 60_000, "step": max(1, span_ms // count),
        "request": json.dumps(template["request"]), "request_hash": template["request_hash"],
        "spec": json.dumps(template["spec"]), "dataset_id": template["dataset_id"],
        "progress": json.dumps(template["progress"]), "result": json.dumps(template["result"]),
        "error": json.dumps({"code": "engine_error", "message": "RuntimeError: CUDA out of memory (seeded)"}),
    }
    insert_jobs = text("""
        INSERT INTO jobs (id, owner, status, request, request_hash, idempotency_key, spec, dataset_id, progress,
                          result, error, attempt, worker, created_at, updated_at, enqueued_at, started_at,
                          finished_at, heartbeat_at)
        SELECT 'job_' || lpad(to_hex(t.ms), 12, '0') || substr(md5(t.g::text || 'seed'), 1, 12), :owner, t.status,
               CAST(:request AS jsonb), :request_hash, NULL, CAST(:spec AS jsonb), :dataset_id,
               CASE WHEN t.status = 'succeeded' THEN CAST(:progress AS jsonb) END,
               CASE WHEN t.status = 'succeeded' THEN CAST(:result AS jsonb) END,
               CASE WHEN t.status = 'failed' THEN CAST(:error AS jsonb) END,
               CASE WHEN t.status = 'queued' THEN 0 ELSE 1 END,
               CASE WHEN t.status = 'queued' THEN NULL ELSE 'bench-host:1' END,
               t.at, t.at + interval '45 seconds', t.at,
               CASE WHEN t.status IN ('succeeded', 'failed') THEN t.at + interval '1 second' END,
               CASE WHEN t.status = 'queued' THEN NULL ELSE t.at + interval '45 seconds' END,
               CASE WHEN t.status IN ('succeeded', 'failed') THEN t.at + interval '40 seconds' END
        FROM (SELECT g, CAST(:base AS bigint) + g * CAST(:step AS bigint) AS ms,
                     to_timestamp((CAST(:base AS bigint) + g * CAST(:step AS bigint)) / 1000.0) AS at,
                     CASE WHEN r < 80 THEN 'succeeded' WHEN r < 90 THEN 'failed' WHEN r < 97 THEN 'cancelled'
                          ELSE 'queued' END AS status
              FROM (SELECT g, abs(hashtext(g::text)) % 100 AS r FROM generate_series(1, :n) g) s) t
    """)
    insert_artifacts = text("""
        INSERT INTO artifacts (id, job_id, path, sha256, size_bytes, created_at)
        SELECT 'art_' || substr(id, 5), id, id || '-1.tar.gz', md5(id) || md5(id || 'x'), 181234, finished_at
        FROM jobs WHERE owner = :owner AND status = 'succeeded'
    """)
    t = time.monotonic()
    with get_engine(dep.db_url).begin() as connection:
        connection.execute(insert_jobs, params)
        connection.execute(insert_artifacts, {"owner": owner})
    maintenance = create_engine(dep.db_url, isolation_level="AUTOCOMMIT")
    with maintenance.connect() as connection:
        for table in ("jobs", "artifacts"):
            connection.execute(text(f"VACUUM ANALYZE {table}"))
        counts = dict(connection.execute(text(
            "SELECT status, count(*) FROM jobs WHERE owner = :owner GROUP BY status"), {"owner": owner}).all())
        total = connection.execute(text("SELECT count(*) FROM jobs")).scalar()
        size = connection.execute(text("SELECT pg_size_pretty(pg_total_relation_size('jobs'))")).scalar()
        ids = list(connection.execute(text(
            "SELECT id FROM jobs WHERE owner = :owner ORDER BY id DESC"), {"owner": owner}).scalars())
    maintenance.dispose()
    print(f"  seeded {count:,} jobs in {time.monotonic() - t:.1f} s ({counts}); jobs table {size}", flush=True)
    return {"owner_jobs": count, "statuses": counts, "table_rows": total, "table_size": size,
            "seconds": round(time.monotonic() - t, 1), "ids": ids}


def list_phases(dep: Deployment, key: str, seeded: dict, args) -> dict:
    ids = seeded["ids"]
    rng = random.Random(1)
    # cursors in the older half: the page after them lies deep in the owner's index range
    deep = [ids[rng.randrange(len(ids) // 2, len(ids) - 101)] for _ in range(64)] if len(ids) > 300 else ids[:1]
    variants = {
        "list_first_page": lambda i: Request("GET", "/v1/jobs", params={"limit": 100}),
        "list_deep_page": lambda i: Request("GET", "/v1/jobs", params={"limit": 100, "after": deep[i % len(deep)]}),
        "list_status_failed": lambda i: Request("GET", "/v1/jobs", params={"limit": 100, "status": "failed"}),
    }
    out = {}
    for name, make in variants.items():
        out[name] = asyncio.run(load_phase(dep, f"GET /v1/jobs ({name})", key, make, args.list_rate,
                                           args.list_warmup, args.list_duration, (200,), unloaded=20))
    # what a page weighs, for the report
    import httpx

    response = httpx.get(f"{dep.base_url}/v1/jobs", params={"limit": 100}, headers={"Authorization": f"Bearer {key}"})
    out["page_bytes"] = len(response.content)
    return out


def wait_recovered(dep: Deployment, key: str) -> float:
    import httpx

    async def run() -> float:
        async with httpx.AsyncClient(base_url=dep.base_url, headers={"Authorization": f"Bearer {key}"}) as client:
            return await settle(client)

    return asyncio.run(run())


async def burst(dep: Deployment, key: str, job_ids: list[str], size: int) -> dict:
    """`size` GET /v1/jobs/{id} sent at the same instant (each on its own connection): how the API copes with a
    queue longer than its thread pool (anyio's 40) and connection pool (10 + 20 overflow)."""
    import httpx

    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    async with httpx.AsyncClient(base_url=dep.base_url, headers={"Authorization": f"Bearer {key}"},
                                 limits=limits, timeout=35) as client:  # the pool's checkout gives up at 30 s
        loop = asyncio.get_running_loop()

        async def one(i: int) -> tuple[int | str, float]:
            start = loop.time()
            try:
                status: int | str = (await client.get(f"/v1/jobs/{job_ids[i % len(job_ids)]}")).status_code
            except Exception as e:
                status = type(e).__name__
            return status, (loop.time() - start) * 1000

        results = await asyncio.gather(*(one(i) for i in range(size)))
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    out = {"size": size, "statuses": statuses, "latency_ms": percentiles([ms for _, ms in results])}
    print(f"  burst of {size} concurrent GET /v1/jobs/{{id}}: {statuses}, p50 {out['latency_ms']['p50']} ms, "
          f"max {out['latency_ms']['max']} ms", flush=True)
    return out


# overhead


def direct_run(dep: Deployment, spec: dict, out_dir: Path) -> dict:
    """pruning.search in a fresh process with the worker's environment. `process_s` counts from the spawn (Python
    start and the torch import included), `engine_s` the call alone."""
    spawned = time.time()
    proc = subprocess.run([sys.executable, "-m", "bench.service", "--child",
                           json.dumps({"spec": spec, "out": str(out_dir)})],
                          cwd=ROOT, env=dep.env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"direct run failed:\n{proc.stderr[-4000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"mode": "direct", "process_s": child["search_end"] - spawned,
            "engine_s": child["search_end"] - child["search_start"], "import_s": child["search_start"] - spawned,
            "metric": child["metric"], "search_wall_s": child["search_wall_s"],
            "retrain_wall_s": child["retrain_wall_s"], "torch_threads": child["torch_threads"]}


def child_main(payload: dict) -> dict:
    started = time.time()
    import torch

    import pruning

    search = pruning.search  # the lazy attribute imports the engine (transformers, peft): count it as import
    search_start = time.time()
    result = search(pruning.SearchSpec.from_dict(payload["spec"]), payload["out"])
    search_end = time.time()
    return {"started": started, "search_start": search_start, "search_end": search_end, "metric": result.metric,
            "search_wall_s": result.search_wall_s, "retrain_wall_s": result.retrain_wall_s,
            "torch_threads": torch.get_num_threads()}


def service_run(dep: Deployment, client, dataset_id: str, poll_s: float) -> dict:
    """Submit over REST and poll GET /v1/jobs/{id} every poll_s until the job is final; wall = POST sent to the
    first response that reads succeeded. The breakdown uses the job's own timestamps and phase events."""
    posted = time.time()
    response = client.post("/v1/jobs", json=job_body(dataset_id), headers={"Idempotency-Key": uuid.uuid4().hex})
    response.raise_for_status()
    job = response.json()
    while job["status"] not in FINAL:
        time.sleep(poll_s)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    seen = time.time()
    if job["status"] != "succeeded":
        raise RuntimeError(f"service job {job['id']} {job['status']}: {job['error']}")
    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
    phase_at = {}
    for event in events:
        if event["kind"] == "phase":
            phase_at.setdefault(event["data"]["phase"], _ts(event["created_at"]))
    created, started, finished = _ts(job["created_at"]), _ts(job["started_at"]), _ts(job["finished_at"])
    load, done = phase_at.get("load"), phase_at.get("done")
    breakdown = {
        "post_to_created": created - posted,  # the POST's own latency up to the insert
        "created_to_claimed": started - created,  # commit, publish, Celery delivery to the pre-forked child, claim
        "claimed_to_engine": load - started if load else None,  # importing torch + pruning in the child
        "engine": done - load if load and done else None,  # pruning.search with the worker's callbacks
        "done_to_finished": finished - done if done else None,  # pack the archive, final transaction
        "finished_to_seen": seen - finished,  # the client's poll interval and one GET
    }
    return {"mode": "service", "wall_s": seen - posted, "job_id": job["id"], "metric": job["result"]["metric"],
            "search_wall_s": job["result"]["search_wall_s"], "retrain_wall_s": job["result"]["retrain_wall_s"],
            "breakdown_s": {k: None if v is None else round(v, 3) for k, v in breakdown.items()},
            "events": len(events)}


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def overhead_phase(dep: Deployment, key: str, owner: str, dataset_id: str, args) -> tuple[dict, dict]:
    import httpx

    from store.datasets import get_dataset, task_spec
    from store.db import session_factory
    from store.settings import Settings
    from store.specs import JobCreate, admit, build_spec

    dropped = dep.purge_queue()
    print(f"  dropped the load phases' queue and cancelled their {dropped} jobs; starting `peftsearch worker`",
          flush=True)
    dep.start_worker()
    settings = Settings(home=dep.home)
    body = JobCreate(model=MODEL, dataset_id=dataset_id, budget=BUDGET, search=SEARCH)
    with session_factory(dep.db_url)() as session:
        task = task_spec(get_dataset(session, owner, dataset_id), settings.datasets)
    spec = build_spec(body, admit(body, settings), task)
    # Neither side should pay for a cold page cache: load the engine's libraries and the model's files once.
    subprocess.run([sys.executable, "-c", "import pruning.pipeline"], cwd=ROOT, env=dep.env, check=True)
    for path in Path(spec["model"]).rglob("*"):
        if path.is_file():
            path.read_bytes()
    runs = []
    client = httpx.Client(base_url=dep.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    try:
        for rep in range(args.reps):
            order = ("direct", "service") if rep % 2 == 0 else ("service", "direct")
            for mode in order:
                time.sleep(2)  # let the previous run's processes exit and the worker fork its next child
                if mode == "direct":
                    run = direct_run(dep, spec, dep.home / f"direct-{rep}")
                    shutil.rmtree(dep.home / f"direct-{rep}", ignore_errors=True)
                    print(f"  rep {rep} direct: process {run['process_s']:.2f} s, engine {run['engine_s']:.2f} s",
                          flush=True)
                else:
                    run = service_run(dep, client, dataset_id, args.poll)
                    print(f"  rep {rep} service: {run['wall_s']:.2f} s {run['breakdown_s']}", flush=True)
                runs.append({"rep": rep, **run})
        template_job = runs[-1]["job_id"] if runs[-1]["mode"] == "service" else runs[-2]["job_id"]
        template = job_template(dep, template_job)
    finally:
        client.close()
        stop(dep.worker)
        dep.worker = None
    direct = [r for r in runs if r["mode"] == "direct"]
    service = [r for r in runs if r["mode"] == "service"]
    process_mean, process_sd = mean_spread([r["process_s"] for r in direct])
    engine_mean, engine_sd = mean_spread([r["engine_s"] for r in direct])
    service_mean, service_sd = mean_spread([r["wall_s"] for r in service])
    keys = service[0]["breakdown_s"].keys()
    breakdown = {k: round(mean_spread([r["breakdown_s"][k] for r in service if r["breakdown_s"][k] is not None])[0], 3)
                 for k in keys}
    summary = {
        "spec": {"model": MODEL, "budget": BUDGET, "search": SEARCH, "data": "peftsearch/demo_data (SST-2 sample)"},
        "torch_threads": args.torch_threads, "reps": args.reps, "poll_s": args.poll, "runs": runs,
        "direct_process_s": {"mean": round(process_mean, 3), "std": round(process_sd, 3)},
        "direct_engine_s": {"mean": round(engine_mean, 3), "std": round(engine_sd, 3)},
        "service_s": {"mean": round(service_mean, 3), "std": round(service_sd, 3)},
        "overhead_pct_vs_process": round(100 * (service_mean / process_mean - 1), 2),
        "overhead_pct_vs_engine_call": round(100 * (service_mean / engine_mean - 1), 2),
        "service_breakdown_s": breakdown,
        "direct_import_s": round(mean_spread([r["import_s"] for r in direct])[0], 3),
    }
    print(f"  overhead: service {service_mean:.2f} s vs direct process {process_mean:.2f} s "
          f"({summary['overhead_pct_vs_process']:+.2f} %), vs the engine call alone {engine_mean:.2f} s "
          f"({summary['overhead_pct_vs_engine_call']:+.2f} %)", flush=True)
    return summary, template


def job_template(dep: Deployment, job_id: str) -> dict:
    from sqlalchemy import select

    from store.db import session_factory
    from store.models import Job

    with session_factory(dep.db_url)() as session:
        job = session.scalar(select(Job).where(Job.id == job_id))
        return {"request": job.request, "request_hash": job.request_hash, "spec": job.spec,
                "dataset_id": job.dataset_id, "progress": job.progress, "result": job.result}


def fallback_template(dep: Deployment, job_id: str) -> dict:
    """With --skip-overhead no job ran: seed from a queued job (no result), which makes list pages lighter."""
    template = job_template(dep, job_id)
    return {**template, "progress": None, "result": None}


# --- report -----------------------------------------------------------------------------------------------------


def busy_processes(limit: int = 5) -> list[str]:
    """The processes using the most CPU right now (over one second), to show the machine was quiet."""
    import psutil

    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    rows = []
    for p in procs:
        try:
            rows.append((p.cpu_percent(None), p.info["pid"], " ".join(p.info["cmdline"] or [p.info["name"]])[:100]))
        except psutil.Error:
            pass
    rows.sort(reverse=True)
    return [f"{cpu:.0f}% pid {pid}: {cmd}" for cpu, pid, cmd in rows[:limit] if cpu >= 1.0]


def targets(endpoints: dict, overhead: dict | None) -> dict:
    out = {}

    def check(name: str, value: float | None, limit: float) -> None:
        out[name] = {"value": value, "target": f"<= {limit:g}", "met": value is not None and value <= limit}

    if "post_jobs" in endpoints:
        check("post_p99_ms", endpoints["post_jobs"]["latency_ms"].get("p99"), TARGETS["post_p99_ms"])
        check("get_p99_ms", endpoints["get_job"]["latency_ms"].get("p99"), TARGETS["get_p99_ms"])
    lists = [endpoints[k]["latency_ms"].get("p99") for k in ("list_first_page", "list_deep_page",
                                                             "list_status_failed") if k in endpoints]
    if lists:
        check("list_p99_ms", max(v for v in lists if v is not None), TARGETS["list_p99_ms"])
    if overhead:
        check("overhead_pct_vs_process", overhead["overhead_pct_vs_process"], TARGETS["overhead_pct"])
        check("overhead_pct_vs_engine_call", overhead["overhead_pct_vs_engine_call"], TARGETS["overhead_pct"])
    return out


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# The API under load (loopback, PostgreSQL) and the service's overhead on a job",
        "",
        f"Command: `{data['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}; "
        f"{data['setup']['server']}; PostgreSQL {data['setup']['postgres']}, Redis {data['setup']['redis']}  ",
        f"Run: {data['started']}, {data['wall_s']:.0f} s; load average at start {data['load_average']['start']}, "
        f"at end {data['load_average']['end']}; profiler: {data['setup'].get('profiler') or 'none (py-spy not on PATH)'}  ",
        "",
        "## Latency (ms from the scheduled send time; open loop)",
        "",
        "| endpoint | rate req/s (achieved) | ok / sent | errors | p50 | p90 | p99 | max | unloaded p50 | "
        "server CPU % of a core (ms/req) | postgres % | client % | other % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"post_jobs": "POST /v1/jobs", "get_job": "GET /v1/jobs/{id}",
             "list_first_page": "GET /v1/jobs?limit=100 (first page)",
             "list_deep_page": "GET /v1/jobs?limit=100&after= (deep cursor)",
             "list_status_failed": "GET /v1/jobs?status=failed&limit=100"}
    for key, name in names.items():
        r = data["endpoints"].get(key)
        if not r:
            continue
        lat, cpu = r["latency_ms"], r["cpu"]
        lines.append(
            f"| {name} | {r['target_rate']:g} ({r['achieved_rate']:g}) | {r['ok']} / {r['requests']} | "
            f"{r['errors']} | {lat.get('p50')} | {lat.get('p90')} | {lat.get('p99')} | {lat.get('max')} | "
            f"{r['unloaded_ms'].get('p50')} | {cpu.get('server_pct')} ({cpu.get('server_ms_per_request')}) | "
            f"{cpu.get('postgres_pct')} | {cpu.get('client_pct')} | {cpu.get('other_pct')} |")
    for key in ("post_jobs", "get_job"):
        for r in data["endpoints"].get(key, {}).get("other_rates", []):
            lat, cpu = r["latency_ms"], r["cpu"]
            lines.append(
                f"| {names[key]} | {r['target_rate']:g} ({r['achieved_rate']:g}) | {r['ok']} / {r['requests']} | "
                f"{r['errors']} | {lat.get('p50')} | {lat.get('p90')} | {lat.get('p99')} | {lat.get('max')} | | "
                f"{cpu.get('server_pct')} ({cpu.get('server_ms_per_request')}) | {cpu.get('postgres_pct')} | "
                f"{cpu.get('client_pct')} | {cpu.get('other_pct')} |")
    lines += ["", "p99 per 5 s window (a rising series is a queue that grows):", ""]
    for key, name in names.items():
        if key in data["endpoints"]:
            lines.append(f"- {name}: {data['endpoints'][key]['p99_ms_per_5s']}")
    if data["endpoints"].get("burst"):
        b = data["endpoints"]["burst"]
        lines += ["", f"Burst probe: {b['size']} GET /v1/jobs/{{id}} at the same instant: statuses {b['statuses']}, "
                      f"p50 {b['latency_ms'].get('p50')} ms, max {b['latency_ms'].get('max')} ms (see the notes)."]
    profiled = [(name, data["endpoints"][key]["server_profile"]) for key, name in names.items()
                if data["endpoints"].get(key, {}).get("server_profile")]
    if profiled:
        lines += ["", "## Where the server's CPU goes", "",
                  "py-spy on the API process (GIL-holding samples, 100 Hz) during a separate pass at the same rate "
                  "after each measured phase. Share of samples by package of the innermost frame (self time), "
                  "then the project's functions and a few library functions anywhere on the stack (inclusive).",
                  ""]
        for name, profile in profiled:
            lines.append(f"- {name}, {profile['samples']} samples")
            for part in ("by_package", "project", "notable"):
                lines.append(f"  - {part.replace('_', ' ')}: " + "; ".join(
                    f"{pct}% {fn}" for pct, fn in profile.get(part, [])))
    o = data.get("overhead")
    if o:
        lines += [
            "",
            "## Overhead on a job's wall time",
            "",
            f"The same search ({o['spec']['model']}, budget {o['spec']['budget']}, search "
            f"`{json.dumps(o['spec']['search'])}`, {o['spec']['data']}), {o['reps']} repetitions alternating "
            f"direct and service, {o['torch_threads']} torch thread(s) in both (same environment). "
            f"Service = POST sent to the first poll (every {o['poll_s']} s) that reads succeeded, through "
            "`peftsearch serve` + `peftsearch worker` (Celery on Redis).",
            "",
            "| | mean s | std s |",
            "|---|---|---|",
            f"| direct, fresh process (spawn, imports, `pruning.search`) | {o['direct_process_s']['mean']:.2f} | "
            f"{o['direct_process_s']['std']:.2f} |",
            f"| direct, the `pruning.search` call alone | {o['direct_engine_s']['mean']:.2f} | "
            f"{o['direct_engine_s']['std']:.2f} |",
            f"| service (POST to succeeded) | {o['service_s']['mean']:.2f} | {o['service_s']['std']:.2f} |",
            "",
            f"Overhead: **{o['overhead_pct_vs_process']:+.2f} %** against the fresh process, "
            f"**{o['overhead_pct_vs_engine_call']:+.2f} %** against the bare call "
            f"(the direct process spends {o['direct_import_s']:.2f} s starting Python and importing torch).",
            "",
            "Where the service's time goes (mean s): " + ", ".join(
                f"{k.replace('_', ' ')} {v:.3f}" for k, v in o["service_breakdown_s"].items()),
            "",
            "| rep | mode | wall s | engine s | search s | retrain s | dev metric |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in o["runs"]:
            wall = r["wall_s"] if r["mode"] == "service" else r["process_s"]
            engine = r.get("engine_s", r.get("breakdown_s", {}).get("engine"))
            lines.append(f"| {r['rep']} | {r['mode']} | {wall:.2f} | {engine:.2f} | {r['search_wall_s']:.2f} | "
                         f"{r['retrain_wall_s']:.2f} | {r['metric']:.4f} |")
    lines += ["", "## Reading", ""] + [f"- {line}" for line in reading(data)]
    lines += ["", "## Targets", ""]
    for name, t in data["targets"].items():
        lines.append(f"- {name}: {t['value']} (target {t['target']}) — {'met' if t['met'] else 'MISSED'}")
    s = data["setup"]
    lines += ["", "## Method", ""] + [f"- {note}" for note in data["notes"]]
    if s.get("seeded"):
        lines += ["", f"Seeded: {s['seeded']['owner_jobs']:,} jobs for the list owner ({s['seeded']['statuses']}), "
                      f"{s['seeded']['table_rows']:,} rows in `jobs` ({s['seeded']['table_size']}); "
                      f"a first page of 100 is {data['endpoints'].get('page_bytes', 0):,} bytes of JSON."]
    return "\n".join(lines) + "\n"


def reading(data: dict) -> list[str]:
    """What the numbers say, in sentences computed from them."""
    out = []
    names = {"post_jobs": "POST /v1/jobs", "get_job": "GET /v1/jobs/{id}", "list_first_page": "list, first page",
             "list_deep_page": "list, deep cursor", "list_status_failed": "list, status=failed"}
    for key, name in names.items():
        r = data["endpoints"].get(key)
        if not r or not r["latency_ms"]:
            continue
        lat, cpu = r["latency_ms"], r["cpu"]
        others = "; ".join(f"at {o['target_rate']:g}/s p50 {o['latency_ms'].get('p50')} ms, p99 "
                           f"{o['latency_ms'].get('p99')} ms" for o in r.get("other_rates", []))
        others = f" For comparison, {others}." if others else ""
        if r["achieved_rate"] < 0.95 * r["target_rate"]:
            out.append(
                f"{name}: saturated. The API answered {r['achieved_rate']:g} req/s of the {r['target_rate']:g} asked "
                f"({cpu.get('server_ms_per_request')} ms of API CPU per request) while the machine was "
                f"{cpu.get('machine_pct')}% busy of {100 * (os.cpu_count() or 1)}% (API processes "
                f"{cpu.get('server_pct')}%, load generator {cpu.get('client_pct')}%, PostgreSQL "
                f"{cpu.get('postgres_pct')}%), so the queue grew for the whole phase: p99 per 5 s "
                f"{r['p99_ms_per_5s']} ms.{others}")
        else:
            out.append(
                f"{name}: kept up ({r['achieved_rate']:g} req/s, API process at {cpu.get('server_pct')}% of a core, "
                f"{cpu.get('server_ms_per_request')} ms of CPU per request); p50 {lat['p50']} ms against "
                f"{r['unloaded_ms'].get('p50')} ms unloaded, p99 {lat['p99']} ms, max {lat['max']} ms; p99 per 5 s "
                f"{r['p99_ms_per_5s']} ms.{others}")
    b = data["endpoints"].get("burst")
    if b:
        ok = b["statuses"].get("200", 0)
        out.append(f"Burst: {ok} of {b['size']} simultaneous GETs answered 200 ({b['statuses']}); "
                   + f"p50 {b['latency_ms'].get('p50')} ms, max {b['latency_ms'].get('max')} ms (see Method).")
    o = data.get("overhead")
    if o:
        k = o["service_breakdown_s"]
        out.append(
            f"Overhead: the job took {o['service_s']['mean']:.2f} s through the service against "
            f"{o['direct_process_s']['mean']:.2f} s for a fresh process calling the engine "
            f"({o['overhead_pct_vs_process']:+.2f} %) and {o['direct_engine_s']['mean']:.2f} s for the call alone "
            f"({o['overhead_pct_vs_engine_call']:+.2f} %). In the worker the engine ran {k['engine']:.2f} s with its "
            f"progress, event, round and checkpoint writes; before it, the job's fresh Celery child imported torch "
            f"and the engine for {k['claimed_to_engine']:.2f} s (the direct process spends {o['direct_import_s']:.2f} s "
            f"starting and importing); submit to claim {k['created_to_claimed']:.3f} s, archive and final write "
            f"{k['done_to_finished']:.3f} s, the client's poll {k['finished_to_seen']:.3f} s.")
    return out


NOTES = [
    "The API is `peftsearch serve` with the compose `api` service's arguments (its uvicorn processes, FastAPI's "
    "sync routes on each one's thread pool, the reaper thread, INFO access logs), with DATABASE_URL "
    "on a throwaway PostgreSQL database migrated by Alembic and BROKER_URL on the local Redis (a dedicated DB "
    "number and queue). So POST /v1/jobs does all of its production work: authenticate, idempotency lookup, "
    "dataset lookup, SearchSpec validation, insert job + event, commit, publish to Redis, stamp enqueued_at, "
    "commit. No worker consumes the queue during the load phases; it is deleted before the worker starts.",
    "Load: one asyncio + httpx process (this one), separate from the server, up to 64 keep-alive connections. "
    "Requests are scheduled on a clock at the target rate whatever the responses do (open loop); latency is "
    "from the scheduled send time, so a stalled server, a request waiting for a free connection and a late "
    "client all show. Percentiles cover every request: an error at the time it failed, a request unanswered "
    "35 s after the last send at that time (a lower bound); `latency_ok_ms` in the JSON has the successes only. "
    "Each phase has a warm-up whose samples are dropped; `send_lag_ms` is how late the client started requests.",
    "CPU columns: share of one core during the phase, per process group (/proc via psutil); `other` is the rest "
    "of the machine's busy time (other users of the 2 cores); `unloaded p50` is 50 requests one at a time.",
    "List: the jobs are seeded for a second owner so that its list holds exactly the seeded jobs; the deep "
    "cursor is one of 64 ids drawn from the older half of that owner's jobs.",
    "Overhead: direct = `pruning.search` in a fresh Python process with the worker's environment (no "
    "checkpoint dir, no callbacks); service = a real Celery worker (prefork, one task per child, as deployed) "
    "whose child imports torch per job, writes progress (at most 1/s), events, rounds, per-round checkpoints, "
    "packs the archive; all of that is the service's overhead by design. Torch threads are set by "
    "OMP_NUM_THREADS for both, to the same value.",
    "Burst probe: many GETs at one instant (clients that poll in step, a retry storm). A request holds a pooled "
    "database connection only while it queries (routes open their session themselves; a key's owner comes from "
    "an in-process cache), and at most PEFTSEARCH_MAX_CONCURRENCY requests per API process are inside the "
    "application at once; the others wait in the event loop and get a 503 `overloaded` after "
    "PEFTSEARCH_ADMISSION_WAIT_S. (With the session injected as a dependency, an earlier version stalled every "
    "thread on the pool's checkout for 30 s in this probe: 160 timeouts and 40 500s of 200.)",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432",
                        help="PostgreSQL server URL (no database): the bench creates and drops --database there")
    parser.add_argument("--database", default="peftsearch_bench")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--redis-db", type=int, default=14, help="a Redis DB number nobody else uses (checked empty)")
    parser.add_argument("--rate", type=float, default=200.0, help="POST and GET arrival rate, req/s")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=25.0)
    parser.add_argument("--other-rates", default="100", help="POST and GET also at these rates (comma-separated)")
    parser.add_argument("--other-duration", type=float, default=10.0)
    parser.add_argument("--seed-jobs", type=int, default=100_000)
    parser.add_argument("--list-rate", type=float, default=20.0)
    parser.add_argument("--list-warmup", type=float, default=3.0)
    parser.add_argument("--list-duration", type=float, default=15.0)
    parser.add_argument("--reps", type=int, default=3, help="overhead repetitions (each: one direct, one service)")
    parser.add_argument("--poll", type=float, default=0.1, help="the overhead client's poll interval, s")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--phases", default="post,get,overhead,list,burst")
    parser.add_argument("--burst", type=int, default=200, help="concurrent requests of the burst probe (0: skip)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--py-spy", default=shutil.which("py-spy"),
                        help="py-spy executable: profile the server in a pass after each load phase (default: on PATH)")
    parser.add_argument("--profile-s", type=float, default=6.0)
    parser.add_argument("--report-only", action="store_true", help="rebuild service.md from service.json")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server and worker logs (path printed)")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_main(json.loads(args.child))))
        return 0
    if args.report_only:
        data = json.loads((args.results / "service.json").read_text())
        (args.results / "service.md").write_text(markdown(data))
        return 0
    command = " ".join(["python -m bench.service", shlex.join(argv if argv is not None else sys.argv[1:])]).strip()
    phases = set(args.phases.split(","))
    if "get" in phases:
        phases.add("post")
    started, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]
    busy = busy_processes()
    print(f"load average {load_start}; busy: {busy or 'nothing'}", flush=True)
    dep = Deployment(args)
    endpoints: dict = {}
    overhead = None
    setup: dict = {}
    try:
        dep.create()
        owner, list_owner = "bench", "bench-list"
        key, list_key = dep.make_key(owner), dep.make_key(list_owner)
        dep.start_server()
        import httpx

        files = {s: (f"{s}.tsv", (DEMO_DATA / f"{s}.tsv").read_bytes()) for s in ("train", "dev")}
        response = httpx.post(f"{dep.base_url}/v1/datasets", files=files, data={"text_column": "sentence"},
                              headers={"Authorization": f"Bearer {key}"}, timeout=60)
        response.raise_for_status()
        dataset_id = response.json()["id"]
        setup = {"server": f"`peftsearch serve` (uvicorn {_version('uvicorn')}, FastAPI {_version('fastapi')}, "
                           f"SQLAlchemy {_version('sqlalchemy')}, psycopg {_version('psycopg')})",
                 "postgres": _pg_version(dep), "redis": dep.redis.info()["redis_version"],
                 "database": args.database, "broker": f"{dep.redis_url} queue {dep.queue}",
                 "profiler": _py_spy_version(args.py_spy)}
        print(f"API on {dep.base_url}, database {args.database}, broker {dep.redis_url} (logs {dep.home})",
              flush=True)
        post_ids: list[str] = []
        if "post" in phases:
            endpoints["post_jobs"], endpoints["get_job"], post_ids = post_and_get(dep, key, dataset_id, args)
        template = None
        if "overhead" in phases:
            wait_recovered(dep, key)
            overhead, template = overhead_phase(dep, key, owner, dataset_id, args)
        if "list" in phases:
            if template is None:
                if not post_ids:
                    response = httpx.post(f"{dep.base_url}/v1/jobs", json=job_body(dataset_id),
                                          headers={"Authorization": f"Bearer {key}"})
                    post_ids = [response.json()["id"]]
                template = fallback_template(dep, post_ids[0])
            seeded = seed_jobs(dep, list_owner, args.seed_jobs, template)
            setup["seeded"] = {k: v for k, v in seeded.items() if k != "ids"}
            endpoints.update(list_phases(dep, list_key, seeded, args))
        if "burst" in phases and args.burst:
            ids = post_ids or [httpx.post(f"{dep.base_url}/v1/jobs", json=job_body(dataset_id),
                                          headers={"Authorization": f"Bearer {key}"}).json()["id"]]
            wait_recovered(dep, key)
            endpoints["burst"] = asyncio.run(burst(dep, key, ids, args.burst))
    finally:
        dep.destroy()
    data = {
        "machine": machine(), "command": command, "started": started, "wall_s": round(time.monotonic() - t0, 1),
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "busy_processes_at_start": busy, "setup": setup, "endpoints": endpoints, "overhead": overhead,
        "targets": targets(endpoints, overhead), "notes": NOTES,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "service.json").write_text(json.dumps(data, indent=2))
    (args.results / "service.md").write_text(markdown(data))
    print(markdown(data))
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _py_spy_version(py_spy: str | None) -> str | None:
    if not py_spy:
        return None
    return subprocess.run([py_spy, "--version"], capture_output=True, text=True).stdout.strip() or py_spy


def _pg_version(dep: Deployment) -> str:
    from sqlalchemy import text

    from store.db import get_engine

    with get_engine(dep.db_url).connect() as connection:
        return connection.execute(text("SHOW server_version")).scalar()


if __name__ == "__main__":
    raise SystemExit(main())
