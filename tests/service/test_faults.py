"""Fault injection, one case of each kind (bench/faults.py runs them many times): a throwaway PostgreSQL cluster
and Redis of this test's own, a real Celery worker. Each ends with every job succeeded, each round recorded once
and one archive."""

from __future__ import annotations

import shutil

import pytest

from bench import faults

pytestmark = [pytest.mark.service, pytest.mark.slow]


@pytest.fixture(scope="module")
def deployment(tiny_model, toy_files):
    dep, root = faults.deployment(tiny_model, *toy_files["csv"])
    yield dep
    dep.close()
    shutil.rmtree(root, ignore_errors=True)


# "checkpoint" passes once the engine re-reports the rounds a checkpoint holds when it resumes (pruning/pipeline.py).
@pytest.mark.parametrize("kind", faults.KINDS)
def test_every_job_survives_the_fault(deployment, kind):
    record = faults.run_kind(deployment, kind)
    assert record["ok"], record["problems"]
