"""docker-compose.yml and the Dockerfiles, read as data (no Docker engine here; test_e2e runs each service's
command on this host)."""

from __future__ import annotations

import re

import pytest
import yaml

from .support import ROOT


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_database_and_broker_have_healthchecks(compose):
    services = compose["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]


def test_migrate_runs_once_after_the_database_is_healthy(compose):
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["alembic", "upgrade", "head"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"


@pytest.mark.parametrize("name", ["api", "worker", "worker-cpu"])
def test_api_and_workers_wait_for_healthy_stores_and_a_completed_migration(compose, name):
    assert compose["services"][name]["depends_on"] == {
        "postgres": {"condition": "service_healthy"}, "redis": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"}}


def test_api_and_workers_share_one_configuration_and_the_data_volumes(compose):
    services = compose["services"]
    env = services["api"]["environment"]
    assert env == services["worker"]["environment"] == services["worker-cpu"]["environment"]
    assert env == services["migrate"]["environment"]
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://") and "@postgres:5432/" in env["DATABASE_URL"]
    assert env["BROKER_URL"].startswith("redis://redis:6379")
    assert env["PEFTSEARCH_QUEUE"] == "gpu" and env["HF_HUB_OFFLINE"] == "1"
    mounts = {name: dict(v.split(":") for v in services[name]["volumes"]) for name in ("api", "worker")}
    for volume, variable in [("datasets", "PEFTSEARCH_DATASET_DIR"), ("artifacts", "PEFTSEARCH_ARTIFACT_DIR")]:
        assert mounts["api"][volume] == mounts["worker"][volume] == env[variable]
    assert mounts["worker"]["work"] == env["PEFTSEARCH_WORK_DIR"]
    named = set(compose["volumes"])
    assert {"pgdata", "redisdata", "datasets", "artifacts", "work"} <= named
    for service in services.values():
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in named  # named volumes only, no host paths


def test_the_gpu_worker_reserves_a_gpu_and_the_cpu_variant_is_a_profile(compose):
    services = compose["services"]
    (device,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "profiles" not in services["worker"]
    assert services["worker-cpu"]["profiles"] == ["cpu"] and "deploy" not in services["worker-cpu"]
    assert services["worker"]["command"] == services["worker-cpu"]["command"] == ["peftsearch", "worker"]


def test_api_image_has_no_torch_and_the_worker_image_has_the_engine(compose):
    services = compose["services"]
    assert services["api"]["build"]["dockerfile"] == services["migrate"]["build"]["dockerfile"] == \
        "docker/api.Dockerfile"
    assert services["worker"]["build"]["dockerfile"] == "docker/worker.Dockerfile"
    api = (ROOT / "docker/api.Dockerfile").read_text()
    installs = " ".join(re.findall(r"pip install[^&\n]*", api))
    assert ".[service]" in installs and "torch" not in installs and "engine" not in installs
    assert '! python -c "import torch"' in api  # the build fails if torch sneaks in as a dependency
    worker = (ROOT / "docker/worker.Dockerfile").read_text()
    assert ".[engine,service,qlora]" in worker and "TORCH_SPEC" in worker
    for dockerfile in (api, worker):
        for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
            for source in line.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_commands_exist(compose):
    from peftsearch.cli import COMMANDS

    for name in ("api", "worker"):
        command = compose["services"][name]["command"]
        assert command[0] == "peftsearch" and command[1] in COMMANDS
