"""The REST API on PostgreSQL (each test in a transaction rolled back at its end): auth, jobs, idempotency,
pagination, cancellation, uploads, and one error envelope for every bad request."""

from __future__ import annotations

from contextlib import nullcontext

import pytest

from store import jobs
from store.db import session_factory
from store.models import Job

from .support import TINY, TINY_SEARCH, job_body, upload

pytestmark = pytest.mark.service


def assert_error(response, status: int, code: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "param"} and error["message"]
    assert error["code"] == code
    assert error["param"] == param
    return error


# --- auth ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer psk_nope"}, {"Authorization": "Basic abc"}])
def test_routes_need_a_valid_key(client, headers):
    for path in ("/v1/jobs", "/v1/datasets", "/v1/models", "/v1/jobs/job_x"):
        response = client.get(path, headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_revoked_key_is_refused(client, db):
    from store.keys import create_key, revoke_key

    row, key = create_key(db, "carol")
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert revoke_key(db, row.id)
    assert_error(client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}), 401, "unauthorized")


def test_a_keys_owner_is_cached_for_at_most_key_cache_s(db):
    from store.keys import cached_owner, create_key, owner_cache, owner_of, revoke_key

    cache, expired = owner_cache(ttl_s=30), owner_cache(ttl_s=0)
    row, key = create_key(db, "dave")
    assert cached_owner(cache, key) is None  # not looked up yet
    assert owner_of(db, key, cache) == "dave" and owner_of(db, key, expired) == "dave"
    assert cached_owner(cache, key) == "dave" and cached_owner(expired, key) is None
    revoke_key(db, row.id)
    assert cached_owner(cache, key) is None and owner_of(db, key) is None


def test_a_key_sees_only_its_owners_jobs_datasets_and_artifacts(client, make_key, dataset_id, auth):
    job = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id)).json()
    other = make_key("mallory")
    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/events", f"/v1/jobs/{job['id']}/rounds",
                 f"/v1/jobs/{job['id']}/artifact"):
        assert_error(client.get(path, headers=other), 404, "not_found", "job_id")
    assert_error(client.post(f"/v1/jobs/{job['id']}/cancel", headers=other), 404, "not_found", "job_id")
    assert client.get("/v1/jobs", headers=other).json()["data"] == []
    assert client.get("/v1/datasets", headers=other).json()["data"] == []
    # Another owner cannot submit on this dataset either.
    assert_error(client.post("/v1/jobs", headers=other, json=job_body(dataset_id)), 422, "invalid_request",
                 "dataset_id")


# --- jobs ---------------------------------------------------------------------------------------------------------


def test_submit_returns_a_queued_job_and_records_its_spec(client, auth, dataset_id, db, tiny_model):
    response = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id))
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["model"] == TINY and job["dataset_id"] == dataset_id
    assert job["budget"] == "2%" and job["search"] == TINY_SEARCH and job["attempt"] == 0
    assert job["progress"] is None and job["result"] is None and job["artifact"] is None
    spec = db.get(Job, job["id"]).spec  # the resolved SearchSpec the worker will run
    assert spec["model"] == tiny_model and spec["budget"] == "2%"
    assert spec["schedule"]["rounds"] == 2 and spec["train"]["steps"] == 30
    assert spec["task"]["train"].endswith(f"{dataset_id}/train.csv")
    # The submission's answer is the job, and the secret of its own webhook (none asked for here).
    assert {**client.get(f"/v1/jobs/{job['id']}", headers=auth).json(), "webhook_secret": None} == job
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()
    assert [(e["kind"], e["message"]) for e in events["data"]] == [("status", "queued")]
    assert client.get(f"/v1/jobs/{job['id']}/rounds", headers=auth).json() == {"data": [], "next": None}


@pytest.mark.parametrize("changes, param", [
    ({"model": "gpt-17"}, "model"),
    ({"budget": "lots"}, "budget"),
    ({"budget": 0}, "budget"),
    ({"dataset_id": "ds_missing"}, "dataset_id"),
    ({"search": {"schedule": {"roundz": 3}}}, "search.schedule.roundz"),
    ({"search": {"train": {"steps": 0}}}, "search.train.steps"),
    ({"search": {"space": {"types": ["lora", "bitfit"]}}}, "search.space.types"),
    ({"search": {"device": "cuda:3"}}, "search.device"),
    ({"search": {"task": {"glue": "sst2"}}}, "search.task"),
    ({"search": "fast"}, "search"),
    ({"colour": "blue"}, "colour"),
])
def test_bad_job_bodies_are_422_naming_the_field(client, auth, dataset_id, changes, param):
    assert_error(client.post("/v1/jobs", headers=auth, json=job_body(dataset_id, **changes)), 422,
                 "invalid_request", param)
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []  # nothing was created


def test_malformed_json_is_422(client, auth):
    response = client.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=b"{nope")
    assert "not valid JSON" in assert_error(response, 422, "invalid_request")["message"]


def test_idempotency_key_replays_the_same_job_and_refuses_another_body(client, auth, dataset_id):
    headers = {**auth, "Idempotency-Key": "retry-1"}
    first = client.post("/v1/jobs", headers=headers, json=job_body(dataset_id))
    again = client.post("/v1/jobs", headers=headers, json=job_body(dataset_id))
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    conflict = client.post("/v1/jobs", headers=headers, json=job_body(dataset_id, budget="1%"))
    assert_error(conflict, 409, "idempotency_conflict", "Idempotency-Key")
    other = client.post("/v1/jobs", headers={**auth, "Idempotency-Key": "retry-2"}, json=job_body(dataset_id))
    assert other.json()["id"] != first.json()["id"]
    assert len(client.get("/v1/jobs", headers=auth).json()["data"]) == 2


def test_concurrent_requests_with_one_idempotency_key_make_one_job(committed_client, toy_files, settings):
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    dataset = upload(committed_client, {}, *toy_files["csv"]).json()["id"]
    key = f"race-{dataset}"

    def post(_) -> str:
        with TestClient(committed_client.app, headers=committed_client.headers) as client:
            response = client.post("/v1/jobs", headers={"Idempotency-Key": key}, json=job_body(dataset))
            assert response.status_code == 201, response.text
            return response.json()["id"]

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(post, range(16)))
    assert len(ids) == 1
    with session_factory(settings.db_url)() as session:
        assert session.query(Job).filter_by(idempotency_key=key).count() == 1


def test_routes_answer_from_their_own_sessions_once_closed(committed_client, toy_files):
    """The `client` fixture keeps one session open; here each route's session is closed before its answer is
    built, so reading an attribute that was not loaded would raise DetachedInstanceError (a 500)."""
    client = committed_client
    dataset = upload(client, {}, *toy_files["csv"]).json()["id"]
    for budget in ("2%", 7000):
        submitted = client.post("/v1/jobs", headers={"Idempotency-Key": f"closed-{dataset}-{budget}"},
                                json=job_body(dataset, budget=budget))
        assert submitted.status_code == 201, submitted.text
        replayed = client.post("/v1/jobs", headers={"Idempotency-Key": f"closed-{dataset}-{budget}"},
                               json=job_body(dataset, budget=budget))
        assert replayed.status_code == 201 and replayed.json() == submitted.json()
    job_id = submitted.json()["id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["budget"] == 7000
    assert {j["budget"] for j in client.get("/v1/jobs").json()["data"]} == {7000, "2%"}  # JSON extracts
    assert client.get(f"/v1/jobs/{job_id}/events").status_code == 200
    assert client.get(f"/v1/jobs/{job_id}/rounds").status_code == 200
    assert_error(client.get(f"/v1/jobs/{job_id}/artifact"), 409, "not_ready")
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.get("/v1/datasets").json()["data"][0]["id"] == dataset


def test_same_idempotency_key_of_two_owners_makes_two_jobs(client, make_key, toy_files):
    ids = []
    for owner in ("alice", "bob"):
        headers = make_key(owner)
        dataset = upload(client, headers, *toy_files["csv"]).json()["id"]
        ids.append(client.post("/v1/jobs", headers={**headers, "Idempotency-Key": "k"},
                               json=job_body(dataset)).json()["id"])
    assert ids[0] != ids[1]


def test_list_pages_newest_first_with_a_cursor_and_filters_by_status(client, auth, dataset_id, db):
    created = [client.post("/v1/jobs", headers=auth, json=job_body(dataset_id)).json()["id"] for _ in range(5)]
    seen, after = [], None
    while True:
        page = client.get("/v1/jobs", headers=auth, params={"limit": 2, **({"after": after} if after else {})})
        body = page.json()
        seen += [j["id"] for j in body["data"]]
        assert len(body["data"]) <= 2
        if body["next"] is None:
            break
        after = body["next"]
    assert seen == created[::-1]
    jobs.cancel(db, db.get(Job, created[1]))
    cancelled = client.get("/v1/jobs", headers=auth, params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["data"]] == [created[1]]
    assert len(client.get("/v1/jobs", headers=auth, params={"status": "queued"}).json()["data"]) == 4


def test_list_shows_each_jobs_progress_and_outcome_at_a_glance(client, auth, dataset_id, db):
    from datetime import timedelta

    from store.models import utcnow

    running, done = (client.post("/v1/jobs", headers=auth, json=job_body(dataset_id)).json()["id"] for _ in "ab")
    for job_id in (running, done):
        attempt = jobs.claim(db, job_id, "worker-1", stale_before=utcnow() - timedelta(seconds=60))
        jobs.set_progress(db, job_id, attempt, {"phase": "search", "round": 2, "rounds": 4})
    jobs.finish(db, done, attempt, "succeeded",
                result={"metric_name": "accuracy", "metric": 0.75, "trainable_params": 1234, "rounds": []},
                artifact={"path": "x.tar.gz", "sha256": "0" * 64, "size_bytes": 10})
    listed = {j["id"]: j for j in client.get("/v1/jobs", headers=auth).json()["data"]}
    assert listed[running] | {"id": None} == listed[running] | {
        "id": None, "status": "running", "model": TINY, "dataset_id": dataset_id, "budget": "2%",
        "phase": "search", "round": 2, "rounds": 4, "metric_name": None, "metric": None, "trainable_params": None,
        "has_artifact": False}
    assert (listed[done]["status"], listed[done]["metric_name"], listed[done]["metric"],
            listed[done]["trainable_params"], listed[done]["has_artifact"]) == ("succeeded", "accuracy", 0.75, 1234,
                                                                                True)
    assert "result" not in listed[done] and "spec" not in listed[done]  # the whole job is GET /v1/jobs/{id}


@pytest.mark.parametrize("params, param", [({"limit": 101}, "limit"), ({"limit": 0}, "limit"),
                                           ({"status": "sleeping"}, "status")])
def test_bad_list_parameters_are_422(client, auth, params, param):
    assert_error(client.get("/v1/jobs", headers=auth, params=params), 422, "invalid_request", param)


def test_cancel_a_queued_job_at_once_and_a_started_one_through_cancelling(client, auth, dataset_id, db):
    queued = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id)).json()
    response = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=auth)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{queued['id']}/cancel", headers=auth).json()["status"] == "cancelled"

    running = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id)).json()
    from store.models import utcnow

    assert jobs.claim(db, running["id"], "test-worker", utcnow()) == 1
    assert client.post(f"/v1/jobs/{running['id']}/cancel", headers=auth).json()["status"] == "cancelling"
    assert client.post(f"/v1/jobs/{running['id']}/cancel", headers=auth).json()["status"] == "cancelling"
    events = client.get(f"/v1/jobs/{running['id']}/events", headers=auth).json()["data"]
    assert [e["message"] for e in events] == ["queued", "validating", "cancelling"]


def test_a_finished_job_cannot_be_cancelled(client, auth, dataset_id, db):
    from store.models import utcnow

    job_id = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id)).json()["id"]
    attempt = jobs.claim(db, job_id, "test-worker", utcnow())
    assert jobs.finish(db, job_id, attempt, "failed", error={"code": "engine_error", "message": "boom"})
    assert_error(client.post(f"/v1/jobs/{job_id}/cancel", headers=auth), 409, "not_cancellable")
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "failed" and job["error"] == {"code": "engine_error", "message": "boom"}


def test_events_page_oldest_first(client, auth, dataset_id, db):
    job_id = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id)).json()["id"]
    for i in range(4):
        jobs.add_event(db, job_id, "phase", f"p{i}")
    db.flush()
    first = client.get(f"/v1/jobs/{job_id}/events", headers=auth, params={"limit": 3}).json()
    rest = client.get(f"/v1/jobs/{job_id}/events", headers=auth, params={"after": first["next"]}).json()
    assert [e["message"] for e in first["data"] + rest["data"]] == ["queued", "p0", "p1", "p2", "p3"]
    assert rest["next"] is None


def test_artifact_of_an_unfinished_job_is_409(client, auth, dataset_id):
    job_id = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id)).json()["id"]
    assert_error(client.get(f"/v1/jobs/{job_id}/artifact", headers=auth), 409, "not_ready")


def test_unknown_job_and_route_get_the_envelope(client, auth):
    assert_error(client.get("/v1/jobs/job_nope", headers=auth), 404, "not_found", "job_id")
    assert_error(client.get("/v1/nothing-here", headers=auth), 404, "not_found")
    assert_error(client.delete("/v1/jobs", headers=auth), 405, "method_not_allowed")


# --- datasets -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_upload_each_format(client, auth, toy_files, fmt, settings):
    response = upload(client, auth, *toy_files[fmt], name="toy sentiment")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["format"] == fmt and dataset["name"] == "toy sentiment"
    assert (dataset["train_rows"], dataset["dev_rows"]) == (256, 64)
    assert dataset["labels"] == ["0", "1"] and dataset["metric_name"] == "accuracy"
    assert dataset["columns"] == {"text_column": "text", "text_pair_column": None, "label_column": "label",
                                  "problem": "classification", "prompt_template": None, "label_words": None}
    assert sorted(p.name for p in (settings.datasets / dataset["id"]).iterdir()) == [f"dev.{fmt}", f"train.{fmt}"]
    listed = client.get("/v1/datasets", headers=auth).json()
    assert [d["id"] for d in listed["data"]] == [dataset["id"]] and listed["next"] is None


def test_upload_with_a_column_mapping(client, auth, tmp_path):
    train, dev = tmp_path / "t.tsv", tmp_path / "d.tsv"
    rows = "".join(f"{'good' if i % 2 else 'bad'} film {i}\tit was\t{'pos' if i % 2 else 'neg'}\n" for i in range(20))
    for file in (train, dev):
        file.write_text("review\tcontext\tsentiment\n" + rows)
    response = upload(client, auth, train, dev, text_column="review", text_pair_column="context",
                      label_column="sentiment")
    assert response.status_code == 201, response.text
    assert response.json()["labels"] == ["neg", "pos"]


def assert_nothing_kept(client, auth, settings):
    assert client.get("/v1/datasets", headers=auth).json()["data"] == []
    assert not settings.datasets.exists() or not any(settings.datasets.iterdir())


def test_bad_rows_are_422_naming_file_and_line_and_keep_nothing(client, auth, tmp_path, settings):
    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    train.write_text("text,label\ngood film,1\nbad film,0\n")
    dev.write_text("text,label\ngood film,1\nbad film\n")
    error = assert_error(upload(client, auth, train, dev), 422, "invalid_request", "dev")
    assert error["message"].startswith("dev.csv:3: "), error["message"]
    assert str(tmp_path) not in error["message"] and str(settings.home) not in error["message"]
    assert_nothing_kept(client, auth, settings)


def test_missing_column_is_422(client, auth, toy_files, settings):
    error = assert_error(upload(client, auth, *toy_files["csv"], text_column="review"), 422, "invalid_request",
                         "train")
    assert "review" in error["message"]
    assert_nothing_kept(client, auth, settings)


def test_unknown_format_is_422(client, auth, tmp_path, settings):
    train, dev = tmp_path / "train.xlsx", tmp_path / "dev.xlsx"
    train.write_bytes(b"PK\x03\x04")
    dev.write_bytes(b"PK\x03\x04")
    error = assert_error(upload(client, auth, train, dev), 422, "invalid_request", "format")
    assert "cannot tell the format of 'train.xlsx'" in error["message"]
    assert_error(upload(client, auth, train, dev, format="parquet"), 422, "invalid_request", "format")
    tsv, csv = tmp_path / "train.tsv", tmp_path / "dev.csv"  # one of each: neither read as the other
    tsv.write_text("text\tlabel\ngood\t1\n")
    csv.write_text("text,label\ngood,1\n")
    error = assert_error(upload(client, auth, tsv, csv), 422, "invalid_request", "dev")
    assert "train is TSV but dev is CSV" in error["message"]
    assert_nothing_kept(client, auth, settings)


def test_oversized_upload_is_413_and_keeps_nothing(client, auth, tmp_path, settings, toy_files):
    big = tmp_path / "train.csv"
    big.write_text("text,label\n" + "a fine film indeed,1\n" * (settings.max_upload_bytes // 20 + 10))
    assert_error(upload(client, auth, big, toy_files["csv"][1]), 413, "payload_too_large", "train")
    assert_nothing_kept(client, auth, settings)
    # A body far beyond the limit is refused from its Content-Length, before it is read.
    huge = tmp_path / "huge.csv"
    huge.write_text("text,label\n" + "a fine film indeed,1\n" * (settings.max_upload_bytes // 6))
    assert_error(upload(client, auth, huge, huge), 413, "payload_too_large")


def test_upload_needs_both_files(client, auth, toy_files):
    train = toy_files["csv"][0]
    response = client.post("/v1/datasets", headers=auth, files={"train": (train.name, train.read_bytes())})
    assert_error(response, 422, "invalid_request", "dev")


# --- models, health, OpenAPI --------------------------------------------------------------------------------------


def test_models_lists_the_configured_models(client, auth):
    assert client.get("/v1/models", headers=auth).json() == {
        "data": [{"name": TINY, "model_type": "bert", "kind": "encoder", "problems": ["classification", "regression"],
                  "layers": 4, "hidden_size": 64}], "next": None}


def test_completion_and_label_generation_data_go_to_decoders_only(tmp_path, settings, db, auth):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.deps import get_sessions
    from tests.tiny import make_completion_task, make_tiny_llama, make_toy_task

    settings = settings.model_copy(update={"models": {**settings.models, "tiny-llama": str(
        make_tiny_llama(tmp_path / "llama"))}})
    app = create_app(settings)
    app.dependency_overrides[get_sessions] = lambda: lambda: nullcontext(db)
    with TestClient(app) as client:
        models = {m["name"]: m for m in client.get("/v1/models", headers=auth).json()["data"]}
        assert models["tiny-llama"]["kind"] == "decoder"
        assert models["tiny-llama"]["problems"] == ["classification", "regression", "completion"]
        response = upload(client, auth, *make_completion_task(tmp_path / "data"), problem="completion")
        assert response.status_code == 201, response.text
        dataset = response.json()
        assert dataset["columns"]["problem"] == "completion" and dataset["labels"] is None
        assert dataset["metric_name"] == "loss"
        error = assert_error(client.post("/v1/jobs", headers=auth, json=job_body(dataset["id"])), 422,
                             "invalid_request", "dataset_id")
        assert "encoder" in error["message"] and "decoder" in error["message"]
        response = client.post("/v1/jobs", headers=auth, json=job_body(dataset["id"], model="tiny-llama"))
        assert response.status_code == 201, response.text
        # labelled rows a decoder classifies by writing the label: a completion task too
        train, dev = make_toy_task(tmp_path / "labelled")
        response = upload(client, auth, train, dev, prompt_template="review: {text} ->")
        assert response.status_code == 201, response.text
        labelled = response.json()
        assert labelled["columns"]["prompt_template"] == "review: {text} ->" and labelled["labels"] == ["0", "1"]
        assert_error(client.post("/v1/jobs", headers=auth, json=job_body(labelled["id"])), 422, "invalid_request",
                     "dataset_id")
        response = client.post("/v1/jobs", headers=auth, json=job_body(labelled["id"], model="tiny-llama"))
        assert response.status_code == 201, response.text
        error = assert_error(upload(client, auth, train, dev, prompt_template="{label}"), 422, "invalid_request",
                             "prompt_template")
        assert "use {text}" in error["message"]
        # label words: stored as the engine parsed them; a label without one is refused at the door
        worded = upload(client, auth, train, dev, prompt_template="review: {text} ->", label_words="0=bad,1=good")
        assert worded.status_code == 201, worded.text
        assert worded.json()["columns"]["label_words"] == {"0": "bad", "1": "good"}
        error = assert_error(upload(client, auth, train, dev, prompt_template="review: {text} ->",
                                    label_words="1=good"), 422, "invalid_request", "label_words")
        assert "no word for label(s) '0'" in error["message"]


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "database": "ok", "broker": "embedded"}


@pytest.mark.parametrize("database, broker, ready", [
    ("migrated", "redis://127.0.0.1:6379/0", True),
    ("migrated", "redis://127.0.0.1:1/0", False),  # nothing listens on port 1
    ("unmigrated", None, False),
    ("postgresql+psycopg://postgres@127.0.0.1:1/test", None, False),
])
def test_readiness_checks_database_schema_and_broker(tmp_path, pg_url, database, broker, ready):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from store.settings import Settings

    url = {"migrated": pg_url, "unmigrated": f"sqlite:///{tmp_path / 'empty.sqlite3'}"}.get(database, database)
    with TestClient(create_app(Settings(home=tmp_path, database_url=url, broker_url=broker))) as client:
        response = client.get("/readyz")
    if ready:
        assert response.json() == {"status": "ready", "database": "ok", "broker": "ok"}
    else:
        assert_error(response, 503, "not_ready")


def test_openapi_describes_every_route_with_its_errors(client):
    document = client.get("/openapi.json").json()
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert operations == {
        ("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}"), ("POST", "/v1/jobs/{job_id}/cancel"),
        ("GET", "/v1/jobs/{job_id}/events"), ("GET", "/v1/jobs/{job_id}/rounds"),
        ("GET", "/v1/jobs/{job_id}/artifact"), ("DELETE", "/v1/jobs/{job_id}"), ("POST", "/v1/datasets"),
        ("GET", "/v1/datasets"), ("GET", "/v1/datasets/{dataset_id}"), ("DELETE", "/v1/datasets/{dataset_id}"),
        ("GET", "/v1/jobs/{job_id}/deliveries"), ("POST", "/v1/webhooks"), ("GET", "/v1/webhooks"),
        ("GET", "/v1/webhooks/{webhook_id}"), ("DELETE", "/v1/webhooks/{webhook_id}"),
        ("GET", "/v1/webhooks/{webhook_id}/deliveries"),
        ("GET", "/v1/models"), ("GET", "/healthz"), ("GET", "/readyz")}
    schemas = document["components"]["schemas"]
    assert {"JobCreate", "JobOut", "Progress", "JobResult", "DatasetOut", "RoundOut", "EventOut", "ErrorOut",
            "ModelOut", "WebhookCreate", "WebhookOut", "WebhookCreated", "DeliveryOut"} <= set(schemas)
    assert "HTTPValidationError" not in schemas  # every 422 is the envelope
    envelope = {"$ref": "#/components/schemas/ErrorOut"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary"), (method, path)
            errors = {status for status in operation["responses"] if status >= "400"}
            expected = {"401", "422", "503"} if path.startswith("/v1/") else {"503"} if path == "/readyz" else set()
            assert expected <= errors, (method, path)
            for status in errors:
                assert operation["responses"][status]["content"]["application/json"]["schema"] == envelope
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
