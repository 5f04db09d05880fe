"""End to end, with real processes: the docker-compose services' own commands run on this host against the local
PostgreSQL and Redis (a real Celery worker), and `peftsearch serve` with no configuration (SQLite, in-process
worker). Each submits a tiny search over REST, follows it to the end, downloads the archive, checks its sha256,
reloads the adapter inside to reproduce the job's dev metric, and gets the job's end at a webhook (sent by the
serving process)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from .support import (
    REDIS_URL,
    ROOT,
    TINY,
    TINY_SEARCH,
    Receiver,
    empty_schema,
    free_port,
    receiver,
    start,
    stop,
    wait_until,
)

pytestmark = pytest.mark.slow
COMPOSE_HOME = "/var/lib/peftsearch"


@pytest.fixture
def fresh_schema():
    """An empty PostgreSQL schema: the compose `migrate` command builds the tables."""
    with empty_schema("peftsearch_e2e") as url:
        yield url


def host_env(compose_env: dict[str, str], home: Path, database_url: str, queue: str) -> dict[str, str]:
    """The compose environment, pointed at this host: local PostgreSQL and Redis, a temporary data directory, and
    a queue of this test's own (other runs may share the Redis)."""
    env = {}
    for name, value in compose_env.items():
        value = str(value)
        if name == "DATABASE_URL":
            assert value.startswith("postgresql+psycopg://")
            value = database_url
        elif name == "BROKER_URL":
            assert value.startswith("redis://")
            value = REDIS_URL
        elif name == "PEFTSEARCH_QUEUE":
            value = queue
        elif value.startswith(COMPOSE_HOME):
            value = str(home) + value.removeprefix(COMPOSE_HOME)
        env[name] = value
    return env


def on_loopback(command: list[str], port: int) -> list[str]:
    return [{"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(part, part) for part in command]


def make_key(env: dict[str, str]) -> str:
    run = subprocess.run([sys.executable, "-m", "peftsearch.cli", "keys", "create", "--owner", "e2e"], cwd=ROOT,
                         env=full_env(env), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()[0]


def full_env(env: dict[str, str]) -> dict[str, str]:
    """This environment without any service setting of its own, plus `env`; the venv's commands come first."""
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL")
            and not k.startswith("PEFTSEARCH_")}
    return {**base, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **env}


def run_a_job(base_url: str, key: str, toy: tuple[Path, Path], tiny_model: str, tmp_path: Path,
              logs: list[Path]) -> None:
    """The user's path through the API, checked at each step."""
    client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    wait_until(lambda: _ready(client), 120, "the API to be ready", logs)
    with receiver() as hooks:
        hook = client.post("/v1/webhooks", json={"url": hooks.url + "/e2e"})
        assert hook.status_code == 201, hook.text
        job_id = follow_a_job(client, toy, tiny_model, tmp_path, logs)
        notified(client, hooks, hook.json(), job_id, logs)


def notified(client: httpx.Client, hooks: Receiver, hook: dict, job_id: str, logs: list[Path]) -> None:
    """The serving process's sender POSTed the job's end to the webhook, once, signed, and recorded it."""
    from peftsearch import verify_webhook

    wait_until(lambda: hooks.received, 60, "the job's end at the webhook", logs)
    payload = verify_webhook(hooks.received[0].body, hooks.received[0].headers, hook["secret"])
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["job"] == client.get(f"/v1/jobs/{job_id}").json()
    (delivery,) = wait_until(lambda: [d for d in client.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["data"]
                                      if d["status"] == "delivered"], 30, "the delivery's record", logs)
    assert (delivery["id"], delivery["attempts"], delivery["response_status"]) == (payload["id"], 1, 200)
    assert len(hooks.received) == 1


def follow_a_job(client: httpx.Client, toy: tuple[Path, Path], tiny_model: str, tmp_path: Path,
                 logs: list[Path]) -> str:
    """Submit, follow, download, reload and re-evaluate; returns the job's id."""
    from pruning import evaluate

    assert [m["name"] for m in client.get("/v1/models").json()["data"]] == [TINY]
    train, dev = toy
    dataset = client.post("/v1/datasets", files={"train": (train.name, train.read_bytes()),
                                                 "dev": (dev.name, dev.read_bytes())})
    assert dataset.status_code == 201, dataset.text
    body = {"model": TINY, "dataset_id": dataset.json()["id"], "budget": "2%", "search": TINY_SEARCH}
    submitted = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "e2e-1"})
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]

    job = wait_until(lambda: _final(client, job_id), 180, f"job {job_id} to finish", logs)
    assert job["status"] == "succeeded", job
    assert job["progress"]["phase"] == "done" and job["attempt"] == 1
    result = job["result"]
    assert result["trainable_params"] <= result["budget_params"] and result["metric_name"] == "accuracy"
    assert result["configuration"]["base_model_path"] == TINY  # names, never the server's paths
    assert tiny_model not in json.dumps(job) and "/datasets/" not in json.dumps(job)

    events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
    assert [e["message"] for e in events if e["kind"] == "status"] == ["queued", "validating", "running", "succeeded"]
    phases = [e["data"]["phase"] for e in events if e["kind"] == "phase"]
    assert phases == ["load", "learn", "search", "retrain", "evaluate", "export", "done"]
    rounds = client.get(f"/v1/jobs/{job_id}/rounds").json()["data"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["trainable_params"] == result["trainable_params"]
    assert len([e for e in events if e["kind"] == "round"]) == 2

    download = client.get(f"/v1/jobs/{job_id}/artifact")
    assert download.status_code == 200 and download.headers["content-type"] == "application/gzip"
    digest = hashlib.sha256(download.content).hexdigest()
    assert digest == download.headers["X-Checksum-SHA256"] == job["artifact"]["sha256"]
    assert len(download.content) == job["artifact"]["size_bytes"]
    archive = tmp_path / "adapter.tar.gz"
    archive.write_bytes(download.content)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    (adapter,) = (tmp_path / "unpacked").iterdir()
    assert adapter.name == job_id
    expected = {"peftsearch_config.json", "peftsearch_weights.safetensors", "trace.json", "README.md"}
    if result["configuration"]["lora_ranks"]:  # the stock-peft LoRA part exists when a LoRA unit survived
        expected |= {"adapter_config.json", "adapter_model.safetensors"}
    assert expected <= {p.name for p in adapter.iterdir()}
    metrics = evaluate(adapter, tiny_model)
    assert metrics == pytest.approx(result["metrics"], abs=1e-6)
    assert metrics[result["metric_name"]] == pytest.approx(result["metric"], abs=1e-6)

    # The idempotent retry of the submission returns the finished job; the job can no longer be cancelled.
    replay = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "e2e-1"})
    assert replay.json()["id"] == job_id and replay.json()["status"] == "succeeded"
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
    return job_id


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def _final(client: httpx.Client, job_id: str) -> dict | None:
    job = client.get(f"/v1/jobs/{job_id}").json()
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


@pytest.mark.service
def test_compose_services_on_this_host(tmp_path, fresh_schema, tiny_model, toy_files):
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    env = host_env(services["api"]["environment"], tmp_path / "data", fresh_schema, f"e2e-{uuid.uuid4().hex[:8]}")
    assert host_env(services["worker"]["environment"], tmp_path / "data", fresh_schema, env["PEFTSEARCH_QUEUE"]) == env
    env.update(PEFTSEARCH_MODELS=f'{{"{TINY}": "{tiny_model}"}}', PEFTSEARCH_HEARTBEAT_S="0.5")
    env = full_env(env)

    migrate = subprocess.run(services["migrate"]["command"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    key = make_key(env)
    port = free_port()
    logs = [tmp_path / "worker.log", tmp_path / "api.log"]
    worker = start(services["worker"]["command"], env, logs[0])
    api = start(on_loopback(services["api"]["command"], port), env, logs[1])
    try:
        run_a_job(f"http://127.0.0.1:{port}", key, toy_files["csv"], tiny_model, tmp_path, logs)
    finally:
        stop(api)
        stop(worker)
    assert "peftsearch.run_job" in logs[0].read_text()  # the job went through Celery


def test_embedded_default(tmp_path, tiny_model, toy_files):
    """`peftsearch serve` with nothing configured but where it keeps its files and which model it offers."""
    env = full_env({"PEFTSEARCH_HOME": str(tmp_path / "home"), "PEFTSEARCH_MODELS": f'{{"{TINY}": "{tiny_model}"}}'})
    key = make_key(env)
    port = free_port()
    log = tmp_path / "serve.log"
    server = start(["peftsearch", "serve", "--port", str(port)], env, log)
    try:
        run_a_job(f"http://127.0.0.1:{port}", key, toy_files["jsonl"], tiny_model, tmp_path, [log])
    finally:
        stop(server)
    assert (tmp_path / "home" / "peftsearch.sqlite3").exists()
    assert "embedded worker" in log.read_text()
