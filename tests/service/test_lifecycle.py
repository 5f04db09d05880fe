"""A job's and a dataset's life beyond running: delete (rows and files), 409 while in use, a dataset by id, a
job's name and metadata, list filters with a total, and the events as a resumable Server-Sent Events stream."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from store import jobs
from store.models import Job, JobEvent, Round, utcnow

from .support import TINY, job_body

pytestmark = pytest.mark.service

SSE = {"Accept": "text/event-stream"}


def submit(client, auth, dataset_id, **changes) -> str:
    response = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id, **changes))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def succeed(db, settings, job_id: str) -> None:
    """Claim and finish the job as a worker would, with an archive on disk and a leftover work folder."""
    attempt = jobs.claim(db, job_id, "test-worker", utcnow() - timedelta(seconds=60))
    settings.artifacts.mkdir(parents=True, exist_ok=True)
    (settings.artifacts / f"{job_id}-{attempt}.tar.gz").write_bytes(b"archive")
    (settings.work / job_id / "checkpoint").mkdir(parents=True)
    assert jobs.finish(db, job_id, attempt, "succeeded",
                       artifact={"path": f"{job_id}-{attempt}.tar.gz", "sha256": "0" * 64, "size_bytes": 7})
    db.flush()


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    return response.json()["error"]["message"]


# --- delete ---------------------------------------------------------------------------------------------------


def test_deleting_an_ended_job_removes_its_rows_and_files(client, auth, dataset_id, db, settings):
    job_id = submit(client, auth, dataset_id)
    succeed(db, settings, job_id)
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 204
    assert error_of(client.get(f"/v1/jobs/{job_id}", headers=auth), 404, "not_found")
    db.expire_all()
    assert db.get(Job, job_id) is None
    assert db.query(JobEvent).filter_by(job_id=job_id).count() == 0
    assert db.query(Round).filter_by(job_id=job_id).count() == 0
    assert list(settings.artifacts.glob(f"{job_id}*")) == [] and not (settings.work / job_id).exists()
    assert error_of(client.delete(f"/v1/jobs/{job_id}", headers=auth), 404, "not_found")


def test_a_queued_or_running_job_is_409_and_loses_nothing(client, auth, dataset_id, db):
    queued = submit(client, auth, dataset_id)
    assert "cancel it first" in error_of(client.delete(f"/v1/jobs/{queued}", headers=auth), 409, "not_deletable")
    running = submit(client, auth, dataset_id)
    jobs.claim(db, running, "test-worker", utcnow())
    assert "cancel it first" in error_of(client.delete(f"/v1/jobs/{running}", headers=auth), 409, "not_deletable")
    assert client.post(f"/v1/jobs/{running}/cancel", headers=auth).json()["status"] == "cancelling"
    assert "once it is cancelled" in error_of(client.delete(f"/v1/jobs/{running}", headers=auth), 409,
                                              "not_deletable")
    for job_id in (queued, running):
        assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200
    # Cancelled (at once, when queued): now it can go.
    client.post(f"/v1/jobs/{queued}/cancel", headers=auth)
    assert client.delete(f"/v1/jobs/{queued}", headers=auth).status_code == 204


def test_another_owners_job_or_dataset_cannot_be_deleted(client, auth, make_key, dataset_id, db, settings):
    job_id = submit(client, auth, dataset_id)
    succeed(db, settings, job_id)
    other = make_key("mallory")
    error_of(client.delete(f"/v1/jobs/{job_id}", headers=other), 404, "not_found")
    error_of(client.delete(f"/v1/datasets/{dataset_id}", headers=other), 404, "not_found")
    error_of(client.get(f"/v1/datasets/{dataset_id}", headers=other), 404, "not_found")
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200
    assert (settings.datasets / dataset_id).is_dir()


def test_a_dataset_by_id_and_its_deletion(client, auth, dataset_id, db, settings):
    got = client.get(f"/v1/datasets/{dataset_id}", headers=auth)
    assert got.status_code == 200 and got.json() == client.get("/v1/datasets", headers=auth).json()["data"][0]
    job_id = submit(client, auth, dataset_id)
    message = error_of(client.delete(f"/v1/datasets/{dataset_id}", headers=auth), 409, "dataset_in_use")
    assert job_id in message
    assert (settings.datasets / dataset_id).is_dir()
    succeed(db, settings, job_id)
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 204
    assert not (settings.datasets / dataset_id).exists()
    error_of(client.get(f"/v1/datasets/{dataset_id}", headers=auth), 404, "not_found")
    # The ended job keeps the id of the dataset it ran on; no new job can use it.
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["dataset_id"] == dataset_id
    assert client.post("/v1/jobs", headers=auth, json=job_body(dataset_id)).status_code == 422


# --- name, metadata, filters, total ---------------------------------------------------------------------------


def test_name_and_metadata_come_back_on_get_and_list(client, auth, dataset_id):
    metadata = {"team": "nlp", "tags": ["sst2", "try-3"], "n": 3}
    job_id = submit(client, auth, dataset_id, name="first try", metadata=metadata)
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert (job["name"], job["metadata"]) == ("first try", metadata)
    listed = client.get("/v1/jobs", headers=auth).json()["data"][0]
    assert (listed["name"], listed["metadata"]) == ("first try", metadata)
    plain = client.get(f"/v1/jobs/{submit(client, auth, dataset_id)}", headers=auth).json()
    assert (plain["name"], plain["metadata"]) == (None, None)


@pytest.mark.parametrize("changes, param", [
    ({"metadata": {"blob": "x" * 5000}}, "metadata"),
    ({"metadata": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}}, "metadata"),
    ({"metadata": ["not", "an", "object"]}, "metadata"),
    ({"name": "n" * 201}, "name"),
    ({"name": ""}, "name"),
])
def test_bad_name_or_metadata_is_422_and_creates_nothing(client, auth, dataset_id, changes, param):
    response = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id, **changes))
    assert response.status_code == 422 and response.json()["error"]["param"] == param, response.text
    assert client.get("/v1/jobs", headers=auth).json()["total"] == 0


def test_list_filters_and_total(client, auth, dataset_id, toy_files, db, settings):
    from .support import upload

    other_dataset = upload(client, auth, *toy_files["tsv"]).json()["id"]
    a, b, c = (submit(client, auth, d) for d in (dataset_id, dataset_id, other_dataset))
    succeed(db, settings, b)
    db.query(Job).filter_by(id=a).update({"created_at": utcnow() - timedelta(days=2)})
    db.flush()

    def ids(**params) -> tuple[list[str], int]:
        body = client.get("/v1/jobs", headers=auth, params=params).json()
        return [j["id"] for j in body["data"]], body["total"]

    assert ids() == ([c, b, a], 3)
    assert ids(limit=1) == ([c], 3)  # the total counts every page
    assert ids(dataset_id=dataset_id) == ([b, a], 2)
    assert ids(status="succeeded") == ([b], 1)
    assert ids(status=["succeeded", "queued"]) == ([c, b, a], 3)
    assert ids(model=TINY) == ([c, b, a], 3) and ids(model="other") == ([], 0)
    yesterday = (utcnow() - timedelta(days=1)).isoformat()
    assert ids(created_after=yesterday) == ([c, b], 2)
    assert ids(created_before=yesterday) == ([a], 1)
    assert ids(created_before=yesterday.replace("+00:00", "")) == ([a], 1)  # no zone: UTC
    assert ids(created_after=yesterday, dataset_id=dataset_id, status="succeeded") == ([b], 1)


@pytest.mark.parametrize("params, param", [
    ({"created_after": "yesterday"}, "created_after"),
    ({"created_after": "2026-12-02T00:00:00Z", "created_before": "2026-12-01T00:00:00Z"}, "created_before"),
    ({"colour": "blue"}, "colour"),
])
def test_bad_filters_are_422(client, auth, params, param):
    response = client.get("/v1/jobs", headers=auth, params=params)
    assert response.status_code == 422 and response.json()["error"]["param"] == param, response.text


# --- the event stream -----------------------------------------------------------------------------------------


def read_stream(response) -> list[dict]:
    """The stream's messages as dicts (id, event, data parsed from JSON), and comments as {"comment": ...}."""
    return list(read_stream_live(response))


def test_the_stream_sends_every_event_then_ends_and_resumes_with_last_event_id(client, auth, dataset_id, db,
                                                                              settings):
    job_id = submit(client, auth, dataset_id)
    jobs.add_event(db, job_id, "phase", "search")
    succeed(db, settings, job_id)
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers={**auth, **SSE}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = read_stream(response)
    events = [m for m in messages if "id" in m]
    assert [e["data"]["message"] for e in events] == ["queued", "search", "validating", "succeeded"]
    assert all(e["id"] == str(e["data"]["id"]) for e in events)
    assert messages[-1] == {"event": "end", "data": {"status": "succeeded"}}
    # Resumed after the second event: the rest only; Last-Event-ID wins over `after`.
    second = events[1]["id"]
    with client.stream("GET", f"/v1/jobs/{job_id}/events", params={"after": 0},
                       headers={**auth, **SSE, "Last-Event-ID": second}) as response:
        resumed = [m for m in read_stream(response) if "id" in m]
    assert [m["id"] for m in resumed] == [e["id"] for e in events[2:]]
    with client.stream("GET", f"/v1/jobs/{job_id}/events", params={"after": second},
                       headers={**auth, **SSE}) as response:
        assert [m["id"] for m in read_stream(response) if "id" in m] == [e["id"] for e in events[2:]]
    # Nothing after the last event of an ended job: 204, which stops an EventSource from reconnecting.
    last = client.get(f"/v1/jobs/{job_id}/events", headers={**auth, **SSE, "Last-Event-ID": events[-1]["id"]})
    assert last.status_code == 204
    # Without the Accept header: the JSON pages, as before.
    assert [e["id"] for e in client.get(f"/v1/jobs/{job_id}/events", headers=auth).json()["data"]] == \
        [int(e["id"]) for e in events]


def test_a_live_stream_sends_events_progress_and_heartbeats_until_the_job_ends(committed_client, toy_files,
                                                                                settings):
    import threading

    from store.db import session_factory

    from .support import upload

    client = committed_client
    settings.events_poll_s, settings.events_heartbeat_s = 0.01, 0.01
    dataset = upload(client, {}, *toy_files["csv"]).json()["id"]
    job_id = client.post("/v1/jobs", json=job_body(dataset)).json()["id"]
    seen: list[dict] = []
    heartbeat, progressed = threading.Event(), threading.Event()

    def writer() -> None:  # what a worker does, once the stream has shown it is alive
        assert heartbeat.wait(30)
        with session_factory(settings.db_url).begin() as session:
            attempt = jobs.claim(session, job_id, "w", utcnow())
            jobs.set_progress(session, job_id, attempt, {"phase": "search", "step": 3, "steps": 8})
        assert progressed.wait(30)
        with session_factory(settings.db_url).begin() as session:
            jobs.finish(session, job_id, attempt, "failed", error={"code": "engine_error", "message": "boom"})

    thread = threading.Thread(target=writer)
    thread.start()
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=SSE) as response:
        for message in read_stream_live(response):
            seen.append(message)
            if message.get("comment") == "heartbeat":
                heartbeat.set()
            if message.get("event") == "progress":
                progressed.set()
    thread.join(30)
    kinds = [m.get("event") or ("comment" if "comment" in m else "message") for m in seen]
    assert "comment" in kinds and "progress" in kinds and kinds[-1] == "end"
    assert [m["data"]["message"] for m in seen if "id" in m] == ["queued", "validating", "running", "failed"]
    assert next(m for m in seen if m.get("event") == "progress")["data"]["step"] == 3
    assert seen[-1]["data"] == {"status": "failed"}


def read_stream_live(response):
    """The stream's messages one at a time, as they come."""
    current: dict = {}
    for line in response.iter_lines():
        if line == "":
            if current:
                yield current
            current = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            current[name] = json.loads(value) if name == "data" else value


def test_a_bad_last_event_id_is_422(client, auth, dataset_id):
    job_id = submit(client, auth, dataset_id)
    response = client.get(f"/v1/jobs/{job_id}/events", headers={**auth, **SSE, "Last-Event-ID": "abc"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "Last-Event-ID", response.text


def test_the_reaper_deletes_archives_past_their_retention_and_a_download_says_why(committed_client, toy_files,
                                                                                  settings):
    from sqlalchemy import update

    from store.db import session_factory
    from worker.reaper import reap_once

    from .support import upload

    client = committed_client
    dataset = upload(client, {}, *toy_files["csv"]).json()["id"]
    old, recent = (client.post("/v1/jobs", json=job_body(dataset)).json()["id"] for _ in range(2))
    with session_factory(settings.db_url).begin() as session:
        for job_id in (old, recent):
            succeed(session, settings, job_id)
        session.execute(update(Job).where(Job.id == old).values(finished_at=utcnow() - timedelta(days=8)))
    reap_once(settings)  # no retention set: every archive stays
    assert list(settings.artifacts.glob(f"{old}-*"))
    settings.artifact_retention_days = 7
    reap_once(settings)
    assert not list(settings.artifacts.glob(f"{old}-*")) and list(settings.artifacts.glob(f"{recent}-*"))
    message = error_of(client.get(f"/v1/jobs/{old}/artifact"), 410, "expired")
    assert "keeps archives 7 days after a job ends" in message
    assert client.get(f"/v1/jobs/{recent}/artifact").status_code == 200
    listed = {j["id"]: j for j in client.get("/v1/jobs").json()["data"]}
    assert not listed[old]["has_artifact"] and listed[recent]["has_artifact"]
    assert client.get(f"/v1/jobs/{old}").json()["status"] == "succeeded"  # the job and its result stay


def test_a_queued_job_has_an_estimate_from_the_pace_of_earlier_jobs_on_its_model(client, auth, dataset_id, db,
                                                                                  settings):
    first = client.post("/v1/jobs", headers=auth, json=job_body(dataset_id))
    assert first.status_code == 201 and first.json()["estimate_s"] is None  # nothing has run on the model yet
    plans = []
    for wall, steps in ((100.0, 50), (300.0, 50), (40.0, 40)):  # paces 2, 6 and 1 s per step at one size
        job_id = submit(client, auth, dataset_id)
        succeed(db, settings, job_id)
        job = db.get(Job, job_id)
        job.started_at, job.progress = job.finished_at - timedelta(seconds=wall), {"total_steps": steps}
        plans.append(jobs._tokens_per_step(job.spec))
    db.flush()
    body = job_body(dataset_id, search={**job_body(dataset_id)["search"], "train": {"steps": 40, "batch_size": 8}})
    queued = client.post("/v1/jobs", headers=auth, json=body).json()
    spec = db.get(Job, queued["id"]).spec
    from pruning.spec import SearchSpec

    pace = 2.0 / plans[0]  # the median pace, per step and token
    expected = SearchSpec.from_dict(spec).planned_steps() * jobs._tokens_per_step(spec) * pace
    assert queued["estimate_s"] == pytest.approx(expected, abs=0.1)
    assert client.get(f"/v1/jobs/{queued['id']}", headers=auth).json()["estimate_s"] == queued["estimate_s"]
    jobs.claim(db, queued["id"], "w", utcnow())
    assert client.get(f"/v1/jobs/{queued['id']}", headers=auth).json()["estimate_s"] is None  # running: eta_s


def test_a_download_whose_archive_is_gone_from_disk_is_410_not_500(client, auth, dataset_id, db, settings):
    job_id = submit(client, auth, dataset_id)
    succeed(db, settings, job_id)
    for archive in settings.artifacts.glob(f"{job_id}-*"):  # as when the reaper deletes it during the request
        archive.unlink()
    assert "archive was deleted" in error_of(client.get(f"/v1/jobs/{job_id}/artifact", headers=auth), 410, "expired")
