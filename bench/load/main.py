"""`python -m bench.service`: the command line, the run of every phase, the results."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..common import machine
from . import DESCRIPTION
from .config import DEMO_DATA, RESULTS
from .deployment import Deployment
from .phases import (
    burst,
    child_main,
    fallback_template,
    job_body,
    list_phases,
    overhead_phase,
    post_and_get,
    seed_jobs,
    wait_recovered,
)
from .report import NOTES, busy_processes, markdown, targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION.split("\n")[0])
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
