"""Input the database or the engine cannot take is refused at the door with a 422 (or a 413) naming the field,
never a 500: NUL characters anywhere, integers beyond 64 bits, search parameters past the deployment's or the
model's limits, JSON the parser refuses, uploads over the limit whatever their framing; a database outage is a
503 `unavailable` with Retry-After."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from store.settings import Settings

from .support import TINY, TINY_SEARCH, upload
from .test_api import assert_error, job_body

pytestmark = pytest.mark.service


def test_nul_in_path_query_or_header_is_422(client, auth):
    assert_error(client.get("/v1/jobs/job_%00x", headers=auth), 422, "invalid_request")
    assert_error(client.get("/v1/jobs", params={"after": "a\x00"}, headers=auth), 422, "invalid_request", "after")
    assert_error(client.get("/v1/datasets?after=%00", headers=auth), 422, "invalid_request", "after")
    response = client.post("/v1/jobs", headers={**auth, "Idempotency-Key": "k\x00"}, json={})
    assert_error(response, 422, "invalid_request", "idempotency-key")


def test_nul_in_a_json_body_is_422_naming_the_field(client, auth, dataset_id):
    assert_error(client.post("/v1/jobs", headers=auth, json=job_body("ds_\x00")), 422, "invalid_request",
                 "dataset_id")
    body = job_body(dataset_id, search={"space": {"adapter": {"activation": "relu\x00"}}})
    assert_error(client.post("/v1/jobs", headers=auth, json=body), 422, "invalid_request",
                 "search.space.adapter.activation")


def test_nul_in_form_fields_and_labels_is_422_and_keeps_nothing(client, auth, toy_files, tmp_path, settings):
    train, dev = toy_files["csv"]
    assert_error(upload(client, auth, train, dev, name="a\x00b"), 422, "invalid_request", "name")
    assert_error(upload(client, auth, train, dev, label_column="label\x00"), 422, "invalid_request",
                 "label_column")
    nul_label = tmp_path / "train.jsonl"
    nul_label.write_text(json.dumps({"text": "fine", "label": "a\x00"}) + "\n")
    assert_error(upload(client, auth, nul_label, nul_label), 422, "invalid_request", "train")
    assert not any(settings.datasets.glob("*/*"))


@pytest.mark.parametrize("label", ["9" * 5000, "[" * 5000 + "]" * 5000])  # a huge integer; deep nesting
def test_json_the_parser_refuses_is_422(client, auth, tmp_path, label):
    line = '{"text": "x", "label": ' + label + "}"
    path = tmp_path / "train.jsonl"
    path.write_text(line + "\n")
    assert_error(upload(client, auth, path, path), 422, "invalid_request")


def test_integers_beyond_64_bits_are_422(client, auth, dataset_id):
    job = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id)).json()["id"]
    assert_error(client.get(f"/v1/jobs/{job}/events", params={"after": 2**63}, headers=auth), 422,
                 "invalid_request", "after")
    assert client.get(f"/v1/jobs/{job}/events", params={"after": 2**63 - 1}, headers=auth).status_code == 200
    body = job_body(dataset_id, search={"seed": 2**70})
    assert_error(client.post("/v1/jobs", headers=auth, json=body), 422, "invalid_request", "search.seed")


@pytest.mark.parametrize("search, param, limit", [
    ({"schedule": {"rounds": 10**10}}, "search.schedule.rounds", "PEFTSEARCH_MAX_ROUNDS"),
    ({"train": {"steps": 10**12}}, "search.train.steps", "PEFTSEARCH_MAX_STEPS"),
    ({"schedule": {"steps_per_round": 10**6}}, "search.schedule.steps_per_round", "PEFTSEARCH_MAX_STEPS"),
    ({"train": {"batch_size": 10**9}}, "search.train.batch_size", "PEFTSEARCH_MAX_BATCH_SIZE"),
    ({"space": {"lora": {"rank": 65}}}, "search.space.lora.rank", "hidden size"),
    ({"space": {"adapter": {"size": 10**9}}}, "search.space.adapter.size", "hidden size"),
    ({"space": {"prefix": {"length": 10**7}}}, "search.space.prefix.length", "PEFTSEARCH_MAX_MODULE_SIZE"),
    ({"train": {"max_length": 129}}, "search.train.max_length", "position embeddings"),
    ({"seed": 2**32}, "search.seed", "seed range"),
    ({"space": {"lora": {"targets": "qv"}}}, "search.space.lora.targets", "array"),
    ({"space": {"types": "lora"}}, "search.space.types", "array"),
])
def test_search_parameters_past_their_limits_are_422_saying_the_limit(client, auth, dataset_id, search, param,
                                                                      limit):
    error = assert_error(client.post("/v1/jobs", headers=auth, json=job_body(dataset_id, search=search)), 422,
                         "invalid_request", param)
    assert limit in error["message"]


def test_search_parameters_at_their_limits_are_accepted(client, auth, dataset_id, settings):
    search = {**TINY_SEARCH, "seed": 2**32 - 1, "space": {"lora": {"rank": 64, "targets": ["q", "v"]}},
              "train": {**TINY_SEARCH["train"], "max_length": 128, "batch_size": settings.max_batch_size}}
    response = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id, search=search))
    assert response.status_code == 201, response.text


def test_a_budget_above_the_supernet_is_422_saying_the_maximum(client, auth, dataset_id, settings):
    from pruning.sizes import read_config, supernet_params
    from pruning.spec import SpaceSpec

    config = read_config(settings.models[TINY])
    default_max = supernet_params(config, SpaceSpec())
    for budget in (default_max + 1, "100%", f"{default_max // 1000 + 1}k"):
        error = assert_error(client.post("/v1/jobs", headers=auth, json=job_body(dataset_id, budget=budget)), 422,
                             "invalid_request", "budget")
        assert f"at most {default_max:,} parameters" in error["message"], error
    accepted = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id, budget=default_max))
    assert accepted.status_code == 201, accepted.text
    # The maximum is the request's own space: a higher LoRA rank holds more.
    wide = {**TINY_SEARCH, "space": {"lora": {"rank": 16}}}
    accepted = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id, budget=default_max + 1, search=wide))
    assert accepted.status_code == 201, accepted.text


def test_a_model_whose_config_cannot_be_read_offline_gets_no_budget_check(settings):
    from store.specs import JobCreate, admit

    remote = settings.model_copy(update={"models": {"remote": "someone/not-in-the-hub-cache"}})
    body = JobCreate(model="remote", dataset_id="ds_0", budget=10**12)
    assert admit(body, remote) == "someone/not-in-the-hub-cache"


def test_a_database_outage_is_503_unavailable_with_retry_after(tmp_path):
    # A port nothing listens on: every query fails to connect, as when PostgreSQL is down.
    down = Settings(home=tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:9/none",
                    models={TINY: str(tmp_path)})
    with TestClient(create_app(down), headers={"Authorization": "Bearer psk_whatever"}) as client:
        for response in (client.get("/v1/jobs"), client.get("/v1/jobs/job_x"),
                         client.post("/v1/jobs", json={"model": TINY, "dataset_id": "ds_x"})):
            assert_error(response, 503, "unavailable")
            assert int(response.headers["Retry-After"]) > 0


def test_an_unknown_method_is_405_with_allow(client, auth):
    response = client.request("TRACE", "/v1/jobs", headers=auth)
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_a_chunked_upload_is_cut_off_at_the_limit(settings):
    """No Content-Length: the body is counted as it streams, and reading stops once it passes the limit."""
    app = create_app(settings)
    limit = 2 * settings.max_upload_bytes + 64 * 1024
    chunk, pulled, sent = b"x" * 8192, 0, []
    total_chunks = 10 * limit // len(chunk)

    head = (b'--b\r\nContent-Disposition: form-data; name="train"; filename="train.csv"\r\n'
            b"Content-Type: text/csv\r\n\r\n")

    async def receive():  # one file part that never ends
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": head if pulled == 1 else chunk, "more_body": pulled < total_chunks}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/datasets", "raw_path": b"/v1/datasets", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [413]
    assert pulled * len(chunk) <= limit + len(chunk)  # read no further than one chunk past the limit
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert body["error"]["code"] == "payload_too_large"


def test_openapi_documents_400_and_retry_after(client):
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/datasets"]["post"]["responses"]
    assert "400" in post and "Retry-After" in post["503"]["headers"]
    assert "Retry-After" in spec["paths"]["/v1/jobs"]["get"]["responses"]["503"]["headers"]
