"""Webhooks: the signature (Standard Webhooks' test vector, docs/client.md's receiver snippet), the API (a secret
shown once, list, get, delete, deliveries, a job's own webhook; other owners' are 404, bad URLs 422), and the
deliveries of job ends to a receiver on a loopback port, sent by worker/webhooks.py on PostgreSQL and on SQLite:
one per end and webhook, signed, retried after a failure, failed once the waits are spent, cut off by the
timeout, claimed by one sender at a time."""

from __future__ import annotations

import collections
import dataclasses
import json
import time
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from peftsearch import InvalidWebhook, verify_webhook
from store import webhooks
from store.db import get_engine, session_factory, upgrade
from store.keys import create_key
from store.models import Job, utcnow
from store.settings import Settings
from store.webhooks import Outcome, new_secret, signature
from worker.webhooks import deliver_once

from .support import (
    ROOT,
    TINY,
    Receiver,
    empty_schema,
    forget_owner,
    free_port,
    job_body,
    receiver,
    upload,
)

pytestmark = pytest.mark.service
HOOK = "https://example.com/hooks/peftsearch"


@pytest.fixture(scope="module")
def pg_url():
    """A schema of this module's own: a sender sends every due delivery it finds, and must find only these."""
    with empty_schema("peftsearch_webhooks") as url:
        upgrade(url)
        yield url


@pytest.fixture
def hooks() -> Receiver:
    with receiver() as running:
        yield running


def error_of(response, status: int, code: str, param: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    return error["message"]


def docs_verify():
    """The receiver's check as docs/client.md shows it (its code, run here)."""
    text = (ROOT / "docs" / "client.md").read_text()
    code = text.split("### Verifying a delivery", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(code, namespace)
    return namespace["verify"]


# --- the signature ------------------------------------------------------------------------------------------------


def test_the_signature_is_standard_webhooks_v1():
    """The specification's published test vector: any Standard Webhooks library verifies these deliveries."""
    assert signature("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                     b'{"test": 2432232314}') == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("check", ["docs", "sdk"])
def test_a_signature_verifies_with_its_secret_and_fails_on_a_tampered_body(check):
    verify = docs_verify() if check == "docs" else lambda secret, headers, body: verify_webhook(body, headers, secret)
    secret, body, now = new_secret(), b'{"id":"dlv_1","type":"job.succeeded","data":{"job":{}}}', int(time.time())
    headers = {"webhook-id": "dlv_1", "webhook-timestamp": str(now),
               "webhook-signature": signature(secret, "dlv_1", now, body)}
    assert verify(secret, headers, body)["type"] == "job.succeeded"
    assert verify(secret, {k.title(): v for k, v in headers.items()}, body)["id"] == "dlv_1"  # any header case
    rotated = {**headers, "webhook-signature": f"v1,{'A' * 44} {headers['webhook-signature']}"}
    assert verify(secret, rotated, body)["id"] == "dlv_1"  # one of several signatures matches
    an_hour_ago = now - 3600
    refused = [
        (secret, headers, body.replace(b"succeeded", b"failed")),  # a tampered body
        (new_secret(), headers, body),  # another webhook's secret
        (secret, {**headers, "webhook-id": "dlv_2"}, body),  # another delivery's id
        (secret, {**headers, "webhook-timestamp": str(an_hour_ago),
                  "webhook-signature": signature(secret, "dlv_1", an_hour_ago, body)}, body),  # a replay
    ]
    for args in refused:
        with pytest.raises((ValueError, InvalidWebhook)):
            verify(*args)


# --- the API (rolled back after each test) ------------------------------------------------------------------------


def test_a_webhook_shows_its_secret_once_and_is_listed_got_and_deleted(client, auth):
    response = client.post("/v1/webhooks", headers=auth, json={"url": HOOK, "events": ["job.failed"]})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["secret"].startswith("whsec_") and created["events"] == ["job.failed"]
    assert created["url"] == HOOK and created["job_id"] is None
    everything = client.post("/v1/webhooks", headers=auth, json={"url": HOOK + "/all"}).json()
    assert everything["events"] == ["job.succeeded", "job.failed", "job.cancelled"]
    assert everything["secret"] != created["secret"]

    listed = client.get("/v1/webhooks", headers=auth).json()
    assert [h["id"] for h in listed["data"]] == [everything["id"], created["id"]]  # newest first
    got = client.get(f"/v1/webhooks/{created['id']}", headers=auth).json()
    assert got == {k: v for k, v in created.items() if k != "secret"}
    assert "secret" not in listed["data"][0] and "secret" not in got
    page = client.get("/v1/webhooks", headers=auth, params={"limit": 1}).json()
    assert len(page["data"]) == 1 and page["next"] == everything["id"]
    assert client.get("/v1/webhooks", headers=auth, params={"after": page["next"]}).json()["data"] == [got]

    assert client.delete(f"/v1/webhooks/{created['id']}", headers=auth).status_code == 204
    error_of(client.get(f"/v1/webhooks/{created['id']}", headers=auth), 404, "not_found", "webhook_id")
    error_of(client.delete(f"/v1/webhooks/{created['id']}", headers=auth), 404, "not_found", "webhook_id")
    assert [h["id"] for h in client.get("/v1/webhooks", headers=auth).json()["data"]] == [everything["id"]]


def test_another_owners_webhooks_and_deliveries_are_404(client, auth, make_key, dataset_id):
    hook = client.post("/v1/webhooks", headers=auth, json={"url": HOOK}).json()
    job = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id)).json()
    other = make_key("mallory")
    assert client.get("/v1/webhooks", headers=other).json()["data"] == []
    for response in (client.get(f"/v1/webhooks/{hook['id']}", headers=other),
                     client.delete(f"/v1/webhooks/{hook['id']}", headers=other),
                     client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=other)):
        error_of(response, 404, "not_found", "webhook_id")
    error_of(client.get(f"/v1/jobs/{job['id']}/deliveries", headers=other), 404, "not_found", "job_id")
    assert client.get(f"/v1/webhooks/{hook['id']}", headers=auth).status_code == 200  # still there


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"url": "ftp://example.com/hook"}, "url", "http:// or https://"),
    ({"url": "example.com/hook"}, "url", "http:// or https://"),
    ({"url": "http://"}, "url", "must name a host"),
    ({"url": "https://user:pw@example.com/hook"}, "url", "credentials"),
    ({"url": "https://token@example.com/hook"}, "url", "credentials"),
    ({"url": "http://exa mple.com/"}, "url", "without spaces"),
    ({"url": "http://example.com/\x00"}, "url", "control characters"),
    ({"url": "http://bücher.example/"}, "url", "ASCII"),
    ({"url": "http://example.com:99999/"}, "url", "not a valid URL"),
    ({"url": "http://[::1/"}, "url", "not a valid URL"),
    ({"url": "https://example.com/" + "a" * 2048}, "url", "at most 2048"),
    ({"url": 42}, "url", "string"),
    ({}, "url", "required"),
    ({"url": HOOK, "events": ["job.started"]}, "events", "job.succeeded"),
    ({"url": HOOK, "events": []}, "events", "at least 1"),
    ({"url": HOOK, "events": "job.failed"}, "events", "array"),
    ({"url": HOOK, "secret": "mine"}, "secret", "known: url, events"),
])
def test_a_bad_webhook_is_422_naming_its_field(client, auth, body, param, words):
    message = error_of(client.post("/v1/webhooks", headers=auth, json=body), 422, "invalid_request", param)
    assert words in message, message
    assert client.get("/v1/webhooks", headers=auth).json()["data"] == []


def test_a_bad_webhook_url_at_submission_is_422(client, auth, dataset_id):
    for url in ("ftp://example.com/", "https://a:b@example.com/", ""):
        response = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id, webhook_url=url))
        error_of(response, 422, "invalid_request", "webhook_url")
    assert client.get("/v1/jobs", headers=auth).json()["total"] == 0


def test_an_owner_has_at_most_max_webhooks(client, auth, settings, dataset_id):
    settings.max_webhooks = 2
    for n in range(2):
        assert client.post("/v1/webhooks", headers=auth, json={"url": f"{HOOK}/{n}"}).status_code == 201
    message = error_of(client.post("/v1/webhooks", headers=auth, json={"url": HOOK}), 409, "too_many_webhooks")
    assert "PEFTSEARCH_MAX_WEBHOOKS" in message
    # A job's own webhook does not count.
    assert client.post("/v1/jobs", headers=auth, json=job_body(dataset_id, webhook_url=HOOK)).status_code == 201


def test_a_jobs_own_webhook_is_in_its_view_with_its_secret_in_the_submissions_answer_only(client, auth, dataset_id,
                                                                                          db):
    body, key = job_body(dataset_id, webhook_url=HOOK), {**auth, "Idempotency-Key": "own-webhook"}
    submitted = client.post("/v1/jobs", headers=key, json=body).json()
    assert submitted["webhook_secret"].startswith("whsec_")
    hook = submitted["webhook"]
    assert hook["url"] == HOOK
    job = client.get(f"/v1/jobs/{submitted['id']}", headers=auth).json()
    assert job["webhook"] == hook and "webhook_secret" not in job
    replay = client.post("/v1/jobs", headers=key, json=body)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["webhook_secret"] == submitted["webhook_secret"]
    error_of(client.post("/v1/jobs", headers=key, json=job_body(dataset_id, webhook_url=HOOK + "/x")), 409,
             "idempotency_conflict", "Idempotency-Key")
    own = client.get(f"/v1/webhooks/{hook['id']}", headers=auth).json()
    assert own["job_id"] == submitted["id"] and own["events"] == ["job.succeeded", "job.failed", "job.cancelled"]
    assert client.get("/v1/webhooks", headers=auth).json()["data"] == []  # lists hold the owner's for all jobs
    plain = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id)).json()
    assert plain["webhook"] is None and plain["webhook_secret"] is None
    assert "webhook_url" not in db.get(Job, submitted["id"]).request  # the webhook holds it


def test_deleting_a_webhook_or_a_job_takes_its_deliveries(client, auth, dataset_id):
    hook = client.post("/v1/webhooks", headers=auth, json={"url": HOOK}).json()
    job = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id, webhook_url=HOOK + "/own")).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).json()["status"] == "cancelled"
    deliveries = client.get(f"/v1/jobs/{job['id']}/deliveries", headers=auth).json()["data"]
    assert sorted(d["webhook_id"] for d in deliveries) == sorted([hook["id"], job["webhook"]["id"]])
    assert {(d["type"], d["status"], d["attempts"]) for d in deliveries} == {("job.cancelled", "pending", 0)}
    assert client.delete(f"/v1/webhooks/{hook['id']}", headers=auth).status_code == 204
    assert [d["webhook_id"] for d in client.get(f"/v1/jobs/{job['id']}/deliveries", headers=auth).json()["data"]] \
        == [job["webhook"]["id"]]
    assert client.delete(f"/v1/jobs/{job['id']}", headers=auth).status_code == 204
    error_of(client.get(f"/v1/webhooks/{job['webhook']['id']}", headers=auth), 404, "not_found", "webhook_id")


# --- deliveries (committed rows, a real sender pass, on PostgreSQL and SQLite) ------------------------------------


@dataclasses.dataclass
class Service:
    settings: Settings
    api: TestClient  # with the owner's key
    dataset_id: str


@pytest.fixture(params=["postgresql", "sqlite"])
def service(request, pg_url, tmp_path, tiny_model, toy_files):
    """The API on committed sessions: the deployed shape's database, or the embedded one's (a SQLite file)."""
    url = pg_url if request.param == "postgresql" else f"sqlite:///{tmp_path / 'peftsearch.sqlite3'}"
    upgrade(url)
    settings = Settings(home=tmp_path, database_url=url, models={TINY: tiny_model}, max_upload_bytes=64 * 1024,
                        webhook_retry_s=[0.0, 0.0], webhook_timeout_s=5.0)
    owner = f"webhooks-{uuid.uuid4().hex[:8]}"
    with session_factory(url).begin() as session:
        _, key = create_key(session, owner)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as api:
        dataset = upload(api, {}, *toy_files["csv"])
        assert dataset.status_code == 201, dataset.text
        yield Service(settings, api, dataset.json()["id"])
    forget_owner(url, owner)
    if request.param == "sqlite":
        get_engine(url).dispose()


def submit(service: Service, **changes) -> dict:
    response = service.api.post("/v1/jobs", json=job_body(service.dataset_id, **changes))
    assert response.status_code == 201, response.text
    return response.json()


def end(service: Service, job_id: str, status: str) -> None:
    """End a job as a worker does (claim, then the final status), or cancel it through the API."""
    if status == "cancelled":
        assert service.api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        return
    from store import jobs

    with session_factory(service.settings.db_url).begin() as session:
        attempt = jobs.claim(session, job_id, "test-worker", utcnow() - timedelta(seconds=60))
        error = {"code": "engine_error", "message": "RuntimeError: boom"} if status == "failed" else None
        assert jobs.finish(session, job_id, attempt, status, error=error)


def delivery(service: Service, job_id: str) -> dict:
    (only,) = service.api.get(f"/v1/jobs/{job_id}/deliveries").json()["data"]
    return only


def test_each_end_of_a_job_is_delivered_once_signed(service, hooks):
    everything = service.api.post("/v1/webhooks", json={"url": hooks.url + "/all"}).json()
    failures = service.api.post("/v1/webhooks", json={"url": hooks.url + "/failures",
                                                      "events": ["job.failed"]}).json()
    ends = {status: submit(service)["id"] for status in ("succeeded", "failed", "cancelled")}
    own = submit(service, webhook_url=hooks.url + "/own")
    for status, job_id in ends.items():
        end(service, job_id, status)
    end(service, own["id"], "succeeded")
    assert not hooks.received  # ending a job only records its deliveries

    assert deliver_once(service.settings) == 6  # 4 ends to /all, 1 to /failures, 1 to /own
    assert deliver_once(service.settings) == 0  # nothing is sent twice
    secrets = {"/all": everything["secret"], "/failures": failures["secret"], "/own": own["webhook_secret"]}
    verify, seen = docs_verify(), collections.Counter()
    for request in hooks.received:
        payload = verify(secrets[request.path], request.headers, request.body)
        job = payload["data"]["job"]
        assert payload["type"] == f"job.{job['status']}" and request.headers["webhook-id"] == payload["id"]
        assert job == service.api.get(f"/v1/jobs/{job['id']}").json()  # the job's public view
        assert request.headers["content-type"] == "application/json"
        seen[request.path, job["id"], payload["type"]] += 1
    assert seen == collections.Counter({
        **{("/all", job_id, f"job.{status}"): 1 for status, job_id in ends.items()},
        ("/all", own["id"], "job.succeeded"): 1, ("/failures", ends["failed"], "job.failed"): 1,
        ("/own", own["id"], "job.succeeded"): 1})

    listed = service.api.get(f"/v1/webhooks/{everything['id']}/deliveries").json()["data"]
    assert len(listed) == 4 and all(d["webhook_id"] == everything["id"] for d in listed)
    for d in listed:
        assert (d["status"], d["attempts"], d["response_status"], d["error"], d["next_attempt_at"]) == (
            "delivered", 1, 200, None, None)
        assert d["response_excerpt"].startswith("status 200 ") and len(d["response_excerpt"]) == 200
    assert sorted(d["webhook_id"] for d in service.api.get(f"/v1/jobs/{own['id']}/deliveries").json()["data"]) \
        == sorted([everything["id"], own["webhook"]["id"]])


def test_a_receiver_answering_500_then_200_gets_a_retry(service, hooks):
    secret = service.api.post("/v1/webhooks", json={"url": hooks.url}).json()["secret"]
    job_id = submit(service)["id"]
    end(service, job_id, "succeeded")
    hooks.answers = [500]

    assert deliver_once(service.settings) == 1
    first = delivery(service, job_id)
    assert (first["status"], first["attempts"], first["response_status"], first["error"]) == (
        "pending", 1, 500, "answered 500")
    assert first["next_attempt_at"] is not None and first["response_excerpt"].startswith("status 500")

    assert deliver_once(service.settings) == 1  # the wait before the retry (webhook_retry_s) is 0 here
    second = delivery(service, job_id)
    assert (second["status"], second["attempts"], second["response_status"], second["error"]) == (
        "delivered", 2, 200, None)
    assert second["id"] == first["id"] and second["next_attempt_at"] is None
    assert deliver_once(service.settings) == 0
    # Both attempts: the same delivery id and body, each signed (with its own timestamp).
    assert len(hooks.received) == 2 and hooks.received[0].body == hooks.received[1].body
    assert {r.headers["webhook-id"] for r in hooks.received} == {first["id"]}
    for request in hooks.received:
        verify_webhook(request.body, request.headers, secret)


def test_a_delivery_fails_once_its_waits_are_spent(service, hooks):
    service.api.post("/v1/webhooks", json={"url": hooks.url})
    job_id = submit(service)["id"]
    end(service, job_id, "failed")
    hooks.answers = [500, 503, 502]
    while deliver_once(service.settings):
        pass
    failed = delivery(service, job_id)
    assert (failed["status"], failed["attempts"], failed["response_status"], failed["error"]) == (
        "failed", 3, 502, "answered 502")  # the first attempt and one per wait of webhook_retry_s
    assert failed["next_attempt_at"] is None and len(hooks.received) == 3


@pytest.mark.parametrize("service", ["postgresql"], indirect=True)
def test_a_slow_or_absent_receiver_fails_the_attempt_and_is_retried(service, hooks):
    service.settings.webhook_timeout_s = 0.5
    slow = service.api.post("/v1/webhooks", json={"url": hooks.url + "/slow"}).json()
    absent = service.api.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{free_port()}/gone"}).json()
    job_id = submit(service)["id"]
    end(service, job_id, "succeeded")
    hooks.hold.set()  # the receiver reads the request, then does not answer

    assert deliver_once(service.settings) == 2
    by_webhook = {d["webhook_id"]: d for d in service.api.get(f"/v1/jobs/{job_id}/deliveries").json()["data"]}
    timed_out, refused = by_webhook[slow["id"]], by_webhook[absent["id"]]
    assert (timed_out["status"], timed_out["attempts"], timed_out["response_status"]) == ("pending", 1, None)
    assert timed_out["error"] == "no whole answer within 0.5 s" and len(hooks.received) == 1
    assert (refused["status"], refused["attempts"], refused["response_status"]) == ("pending", 1, None)
    assert refused["error"].startswith("ConnectError")


@pytest.mark.parametrize("service", ["postgresql"], indirect=True)
def test_a_delivery_is_claimed_by_one_sender_at_a_time(service, hooks):
    service.api.post("/v1/webhooks", json={"url": hooks.url})
    job_id = submit(service)["id"]
    end(service, job_id, "succeeded")
    sessions, now = session_factory(service.settings.db_url), utcnow()
    with sessions.begin() as first, sessions.begin() as second:
        (claim,) = webhooks.claim_due(first, now=now, lease_s=60, limit=10)
        assert webhooks.claim_due(second, now=now, lease_s=60, limit=10) == []  # locked: skipped, not waited for
    with sessions.begin() as second:
        assert webhooks.claim_due(second, now=now, lease_s=60, limit=10) == []  # claimed: not due before its lease
        # A sender that died mid-attempt: once its lease has run out, another takes the delivery over.
        (again,) = webhooks.claim_due(second, now=now + timedelta(seconds=61), lease_s=60, limit=10)
    assert (claim.attempt, again.attempt) == (1, 2) and again.delivery_id == claim.delivery_id
    with sessions.begin() as first:  # the first sender's outcome comes too late: it records nothing
        assert webhooks.record_outcome(first, claim, Outcome(200), now=utcnow(), retry_s=[]) is None
        assert webhooks.record_outcome(first, again, Outcome(200), now=utcnow(), retry_s=[]) == "delivered"
    assert delivery(service, job_id)["attempts"] == 2 and not hooks.received


def test_a_reaped_job_is_notified(service, hooks):
    """The reaper ends jobs too: a dead worker's cancelling job is cancelled, and its end delivered."""
    from store import jobs

    service.api.post("/v1/webhooks", json={"url": hooks.url})
    job_id = submit(service)["id"]
    with session_factory(service.settings.db_url).begin() as session:
        jobs.claim(session, job_id, "dead-worker", utcnow())
        jobs.cancel(session, session.get(Job, job_id))
    with session_factory(service.settings.db_url).begin() as session:
        jobs.reap(session, stale_before=utcnow() + timedelta(seconds=1), max_attempts=3, unsent_before=utcnow(),
                  resend_after_s=3600, resend_max_s=7200)
    assert deliver_once(service.settings) == 1
    assert json.loads(hooks.received[0].body)["type"] == "job.cancelled"
    assert delivery(service, job_id)["status"] == "delivered"
