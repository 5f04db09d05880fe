"""The service's processes on this host: a throwaway database, Redis, `peftsearch serve` and worker."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from .config import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen | None) -> None:
    """SIGTERM the process group we started (the process leads its own group), then SIGKILL whatever is left of
    it, and reap it. The service tests stop their servers with it too."""
    if process is None:
        return
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children that outlived their parent
    except ProcessLookupError:
        pass
    process.wait()  # reaped: no zombie left behind
    process.wait()


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""



def compose_api_arguments(port: int) -> list[str]:
    """`peftsearch serve`'s arguments as docker-compose.yml's api service gives them (its API processes too), on
    loopback and this run's port."""
    import yaml

    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]["command"]
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
