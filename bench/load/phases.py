"""The bench's phases: post, get, list, burst, and the service's overhead on a real job."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

from ..common import mean_spread
from .config import BUDGET, FINAL, MODEL, ROOT, SEARCH
from .cpu import CpuMeter
from .deployment import Deployment, stop
from .generate import CONNECTIONS, Request, open_loop, percentiles, sequential, settle, summarize
from .profile import profile_server


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
