"""A property-based fuzz of the whole API from its OpenAPI document (schemathesis): generated requests, valid
and invalid, with a real key and a real dataset and job to aim at, on committed PostgreSQL sessions. Any 5xx, or
a response that breaks its documented schema, status codes or headers, fails the test.

PEFTSEARCH_FUZZ_EXAMPLES sets the examples per operation (about 13 operations; the suite's default keeps it to a
minute or two on 2 cores, a larger count is the issue's >= 10,000-request run)."""

from __future__ import annotations

import itertools
import os
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from store.db import session_factory
from store.keys import create_key

from .support import TINY, TINY_SEARCH, forget_owner

pytestmark = [pytest.mark.service, pytest.mark.slow]
EXAMPLES = int(os.environ.get("PEFTSEARCH_FUZZ_EXAMPLES", "60"))
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def fuzz_target(pg_url, tiny_model, toy_files, tmp_path_factory):
    """The app, a key, and the ids of an uploaded dataset and a submitted job (so generated paths can hit them)."""
    from fastapi.testclient import TestClient

    from store.settings import Settings

    app_settings = Settings(home=tmp_path_factory.mktemp("fuzz"), database_url=pg_url, models={TINY: tiny_model},
                            max_upload_bytes=64 * 1024)
    app = create_app(app_settings)
    owner = f"fuzz-{uuid.uuid4().hex[:8]}"
    with session_factory(pg_url).begin() as session:
        _, key = create_key(session, owner)
    headers = {"Authorization": f"Bearer {key}"}
    train, dev = toy_files["csv"]
    with TestClient(app, headers=headers) as client:
        dataset = client.post("/v1/datasets", files={"train": (train.name, train.read_bytes()),
                                                     "dev": (dev.name, dev.read_bytes())}).json()["id"]
        job = client.post("/v1/jobs", json={"model": TINY, "dataset_id": dataset, "budget": "2%",
                                            "search": TINY_SEARCH}).json()["id"]
    yield app, headers, dataset, job
    forget_owner(pg_url, owner)


def test_no_request_gets_a_server_error_or_breaks_the_schema(fuzz_target):
    app, headers, dataset, job = fuzz_target
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    sent, failures = 0, {}
    for result, mode in itertools.product(list(schema.get_all_operations()), GenerationMode):
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            nonlocal sent
            if (case.path_parameters or {}).get("job_id") == "job":
                case.path_parameters["job_id"] = job  # now and then, a job that exists
            sent += 1
            case.call_and_validate(headers={**headers, **(case.headers or {})}, checks=CHECKS)

        try:
            fuzz()
        except Unsatisfiable:  # no parameter to make invalid (GET /healthz, negative)
            pass
        except Exception as e:  # hypothesis re-raises the shrunk failure
            failures[f"{operation.label} ({mode.value})"] = f"{type(e).__name__}: {str(e)[:2000]}"
    print(f"fuzz: {sent} requests over the API")
    assert sent >= EXAMPLES, sent
    assert not failures, "\n\n".join(f"{label}\n{why}" for label, why in failures.items())
