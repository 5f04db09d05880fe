"""Helpers of the service tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from bench.load.deployment import stop  # noqa: F401  (one way to stop a process group: SIGTERM, then SIGKILL)

ROOT = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("PEFTSEARCH_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("PEFTSEARCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TINY = "tiny-bert"
# A search small enough to take about a second on the tiny model, big enough to prune over two rounds (by the
# scores, although 30 steps teach the tiny model nothing: these tests are about the rounds).
TINY_SEARCH = {"schedule": {"rounds": 2, "steps_per_round": 8, "eval_examples": 64, "unlearned": "prune"},
               "train": {"steps": 30, "batch_size": 16, "max_length": 32}}


def job_body(dataset: str, **changes) -> dict:
    """A job on the tiny model and TINY_SEARCH, as POST /v1/jobs takes it."""
    return {"model": TINY, "dataset_id": dataset, "budget": "2%", "search": TINY_SEARCH, **changes}


@contextmanager
def empty_schema(prefix: str) -> Iterator[str]:
    """A new schema in the `test` database, dropped afterwards; yields a URL whose search_path is that schema."""
    from sqlalchemy import create_engine, text

    from store.db import get_engine

    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        get_engine(url).dispose()
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def upload(client, headers, train: Path, dev: Path, **form) -> httpx.Response:
    files = {"train": (train.name, train.read_bytes()), "dev": (dev.name, dev.read_bytes())}
    return client.post("/v1/datasets", headers=headers, files=files, data=form)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # One torch thread, as in tests/conftest.py: on a shared 2-core machine spinning OpenMP threads make the tiny
    # model's seconds minutes. A test-machine setting, not the service's.
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_until(check: Callable[[], object], timeout: float, what: str, logs: list[Path] = ()) -> object:
    """Poll `check` until it returns something truthy; fail with the processes' log tails after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def forget_owner(url: str, owner: str) -> None:
    """Delete what a test committed for `owner` (webhooks and deliveries; jobs with their events, rounds and
    artifacts; datasets; keys):
    the session's schema is shared, and the reaper's tests see every queued job in it."""
    from sqlalchemy import delete

    from store.db import session_factory
    from store.models import ApiKey, Dataset, Job, Webhook

    with session_factory(url).begin() as session:
        session.execute(delete(Webhook).where(Webhook.owner == owner))
        session.execute(delete(Job).where(Job.owner == owner))
        session.execute(delete(Dataset).where(Dataset.owner == owner))
        session.execute(delete(ApiKey).where(ApiKey.owner == owner))



@dataclasses.dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class Receiver:
    """A webhook receiver on 127.0.0.1 (a free port) that records every POST. It answers each with the next of
    `answers` (HTTP statuses; 200 once they are used up), after holding it while `hold` is set (a slow
    receiver; released on close)."""

    def __init__(self):
        self.received: list[Received] = []
        self.answers: list[int] = []
        self.hold = threading.Event()
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                  body))
                if receiver.hold.is_set():
                    receiver.released.wait(60)
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(f"status {status} ".encode() + b"x" * 1000)  # longer than what is kept

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    try:
        yield running
    finally:
        running.close()
