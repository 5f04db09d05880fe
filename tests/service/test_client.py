"""The client (peftsearch.Client and `peftsearch jobs|datasets`) against the real API on a loopback port.

The server is what `peftsearch serve` runs with nothing configured (the app on SQLite, the in-process worker), in
this process, behind `Faults`: a test can have the next matching request refused with a 503, or its answer held
back until the client has given up on it and retried (a slow poll, a submission whose answer was lost), or the
archive's checksum header changed. Jobs run on the tiny model."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn

from peftsearch import (
    ChecksumMismatch,
    Client,
    ErrorResponse,
    InvalidWebhook,
    PeftsearchError,
    Unreachable,
    verify_webhook,
)
from peftsearch.cli import main
from store.db import session_factory, upgrade
from store.keys import create_key
from store.settings import Settings, get_settings

from .support import ROOT, TINY, TINY_SEARCH, free_port, wait_until

# A search the test cancels: far longer than the test (the worker stops it at its next heartbeat).
LONG_SEARCH = {"schedule": {"rounds": 2, "steps_per_round": 50_000, "eval_examples": 64, "unlearned": "prune"},
               "train": {"steps": 50_000, "batch_size": 16, "max_length": 32}}
HOLD_AT_MOST_S = 60  # a held answer is let go after this, should the client never come back (a failing test)


@dataclass
class Fault:
    method: str
    path: str  # a regular expression, matched whole
    action: str  # "overload", "hold" (the answer waits for the next matching request), "bad_checksum", "watch"
    # (served, only seen) or "no_stream" (served without its Accept header)
    seen: list[dict[str, str]] = field(default_factory=list)  # the headers of each matching request
    released: asyncio.Event | None = None


class Faults:
    """ASGI middleware in front of the app; each fault applies to the requests that match it while it is armed."""

    def __init__(self, app):
        self.app, self.armed = app, []

    def arm(self, method: str, path: str, action: str) -> Fault:
        fault = Fault(method, path, action)
        self.armed.append(fault)
        return fault

    def disarm(self) -> None:
        for fault in self.armed:
            if fault.released is not None:
                fault.released.set()
        self.armed.clear()

    async def __call__(self, scope, receive, send):
        fault = next((f for f in self.armed if scope["type"] == "http" and scope["method"] == f.method
                      and re.fullmatch(f.path, scope["path"])), None)
        if fault is None:
            return await self.app(scope, receive, send)
        fault.seen.append({k.decode().lower(): v.decode() for k, v in scope["headers"]})
        if fault.action == "overload":
            self.armed.remove(fault)  # the first matching request only
            body = json.dumps({"error": {"code": "overloaded", "message": "busy", "param": None}}).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"0")]})
            return await send({"type": "http.response.body", "body": body})
        if fault.action == "hold":
            if fault.released is None:  # the first: served, but answered only once the client has retried
                fault.released = asyncio.Event()
                held = []

                async def hold(message):
                    held.append(message)

                await self.app(scope, receive, hold)
                try:
                    await asyncio.wait_for(fault.released.wait(), HOLD_AT_MOST_S)
                except asyncio.TimeoutError:
                    pass
                for message in held:  # to a client long gone
                    await send(message)
                return
            self.armed.remove(fault)
            fault.released.set()
            return await self.app(scope, receive, send)
        if fault.action == "watch":  # served as is; only seen
            return await self.app(scope, receive, send)
        if fault.action == "no_stream":  # as a server without event streams: the Accept header is not heard
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"accept"]}
            return await self.app(scope, receive, send)
        if fault.action == "bad_checksum":
            async def corrupt(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [(k, b"0" * 64 if k.lower() == b"x-checksum-sha256" else v)
                                                      for k, v in message["headers"]]}
                await send(message)

            return await self.app(scope, receive, corrupt)
        raise AssertionError(fault.action)


@dataclass
class Server:
    url: str
    key: str
    faults: Faults
    settings: Settings

    def client(self, **options) -> Client:
        return Client(self.url, self.key, **{"timeout": 2.0, **options})

    def cli(self, capsys, *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            status = main([*args[:2], "--url", self.url, "--api-key", self.key, "--timeout", "2", *args[2:]])
        except SystemExit as e:  # argparse refusing the command line
            status = e.code
        captured = capsys.readouterr()
        return status, captured.out, captured.err


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    # The in-process worker runs the Celery task, which reads its settings from the environment (get_settings).
    env = {"PEFTSEARCH_HOME": str(tmp_path_factory.mktemp("client-server")), "PEFTSEARCH_MODELS": json.dumps(
        {TINY: tiny_model}), "PEFTSEARCH_HEARTBEAT_S": "0.2", "PEFTSEARCH_PROGRESS_EVERY_S": "0",
        "PEFTSEARCH_POLL_S": "0.2", "PEFTSEARCH_MAX_UPLOAD_BYTES": str(64 * 1024)}
    with pytest.MonkeyPatch.context() as patch:
        for name in ("DATABASE_URL", "BROKER_URL"):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        try:
            yield from serve(get_settings())
        finally:
            get_settings.cache_clear()


def serve(settings: Settings):
    from api.app import create_app
    from worker import embedded

    upgrade(settings.db_url)
    with session_factory(settings.db_url).begin() as session:
        _, key = create_key(session, "client-tests")
    faults = Faults(create_app(settings))
    port = free_port()
    web = uvicorn.Server(uvicorn.Config(faults, host="127.0.0.1", port=port, log_level="warning"))
    stop = threading.Event()
    threads = [threading.Thread(target=web.run, daemon=True),
               threading.Thread(target=embedded.run_forever, args=(settings, stop), daemon=True)]
    for thread in threads:
        thread.start()
    wait_until(lambda: web.started, 60, "the test server to start")
    yield Server(f"http://127.0.0.1:{port}", key, faults, settings)
    stop.set()
    web.should_exit = True
    for thread in threads:
        thread.join(30)


@pytest.fixture(autouse=True)
def no_faults_left(server):
    yield
    server.faults.disarm()


@pytest.fixture(scope="module")
def dataset(server, toy_files):
    with server.client() as client:
        return client.upload_dataset(*toy_files["csv"], name="toy")


@pytest.fixture(scope="module")
def finished(server, dataset):
    """One tiny job submitted through a 503 and followed through a slow poll, to its end."""
    with server.client() as client:
        overload = server.faults.arm("POST", "/v1/jobs", "overload")
        job = client.submit(TINY, dataset, budget="2%", search=TINY_SEARCH)
        assert len(overload.seen) == 1 and overload not in server.faults.armed  # refused once, then served
        slow = server.faults.arm("GET", f"/v1/jobs/{job.id}", "hold")
        done = job.wait(poll_s=0.1)
        assert len(slow.seen) >= 2 and slow.released.is_set()  # the slow answer was given up on and retried
        server.faults.disarm()
        yield done, overload  # with its client open


def test_submit_wait_through_a_503_and_a_slow_poll(server, finished, dataset):
    job, overload = finished
    assert job.succeeded and job.attempt == 1 and job.dataset_id == dataset.id
    assert job.result.trainable_params <= job.result.budget_params
    assert [e.message for e in job.events() if e.kind == "status"] == [
        "queued", "validating", "running", "succeeded"]
    assert [r.round for r in job.rounds()] == [1, 2]
    with server.client() as client:  # one job, whatever the retries
        assert [j.id for j in client.jobs()] == [job.id]
    assert re.fullmatch(r"[0-9a-f-]{36}", overload.seen[0]["idempotency-key"])  # made for the user (uuid4)


def test_a_submission_whose_answer_is_lost_is_retried_into_the_same_job(server, dataset):
    with server.client() as client:
        before = {j.id for j in client.jobs(limit=None)}
        lost = server.faults.arm("POST", "/v1/jobs", "hold")
        job = client.submit(TINY, dataset.id, budget="2%", search=TINY_SEARCH)
        keys = {seen["idempotency-key"] for seen in lost.seen}
        assert len(lost.seen) >= 2 and len(keys) == 1  # the retry carried the same key
        assert {j.id for j in client.jobs(limit=None)} - before == {job.id}
        assert job.wait(poll_s=0.1).succeeded


def test_download_checks_the_sha256_and_unpacks_the_result(server, finished, tmp_path):
    from pruning import evaluate

    job, _ = finished
    path = job.download(tmp_path / "runs")
    assert path == tmp_path / "runs" / job.id
    assert {"peftsearch_config.json", "peftsearch_weights.safetensors", "trace.json"} <= {p.name for p in
                                                                                          path.iterdir()}
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [job.id]  # nothing else left behind
    metrics = evaluate(path, server.settings.model_paths[TINY])
    assert metrics[job.result.metric_name] == pytest.approx(job.result.metric, abs=1e-6)
    with pytest.raises(PeftsearchError, match="already exists"):
        job.download(tmp_path / "runs")  # never over a directory that is there

    with server.client() as client:
        archive = client.download_archive(job.id, tmp_path / "a" / "job.tar.gz")
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == job.artifact.sha256
    with tarfile.open(archive) as tar:
        assert all(name.split("/")[0] == job.id for name in tar.getnames())


def test_a_checksum_mismatch_keeps_nothing(server, finished, tmp_path):
    job, _ = finished
    server.faults.arm("GET", f"/v1/jobs/{job.id}/artifact", "bad_checksum")
    with pytest.raises(ChecksumMismatch, match="nothing kept"):
        job.download(tmp_path / "runs")
    assert list((tmp_path / "runs").iterdir()) == []
    with server.client() as client, pytest.raises(ChecksumMismatch):
        client.download_archive(job.id, tmp_path / "job.tar.gz")
    assert list(tmp_path.glob("*job.tar.gz*")) == []


def test_an_upload_that_may_have_reached_the_server_is_not_retried(server, toy_files):
    with server.client(timeout=1.0) as client:
        before = len(client.datasets(limit=None))
        held = server.faults.arm("POST", "/v1/datasets", "hold")
        with pytest.raises(Unreachable, match="not retried"):
            client.upload_dataset(*toy_files["tsv"], name="held")
        assert len(held.seen) == 1
        server.faults.disarm()
        # It did reach the server: a retry would have made two.
        assert wait_until(lambda: len(client.datasets(limit=None)) == before + 1, 30, "the held upload")


def test_errors_are_the_servers_own(server, dataset, tmp_path):
    with server.client() as client:
        with pytest.raises(ErrorResponse) as missing:
            client.job("job_nope")
        assert (missing.value.status, missing.value.code, missing.value.param) == (404, "not_found", "job_id")
        with pytest.raises(ErrorResponse) as bad_model:
            client.submit("no-such-model", dataset)
        assert bad_model.value.code == "invalid_request" and bad_model.value.param == "model"
        bad = tmp_path / "dev.csv"
        bad.write_text("text,label\nfine,1\n")
        with pytest.raises(ErrorResponse) as upload:
            client.upload_dataset(bad, bad, text_column="sentence")
        assert upload.value.code == "invalid_request" and "sentence" in upload.value.message
        with pytest.raises(PeftsearchError, match="does not exist"):
            client.upload_dataset(tmp_path / "nope.csv", bad)
    with Client(server.url, "psk_wrong") as stranger, pytest.raises(ErrorResponse) as refused:
        stranger.jobs()
    assert refused.value.status == 401
    with Client(f"http://127.0.0.1:{free_port()}", server.key, retry_for_s=1.0) as nobody:
        with pytest.raises(Unreachable, match="is the server running"):
            nobody.jobs()


def test_the_cli_end_to_end(server, capsys, toy_files, tmp_path):
    train, dev = toy_files["jsonl"]
    status, out, err = server.cli(capsys, "datasets", "upload", str(train), str(dev), "--name", "toy-jsonl")
    assert status == 0, err
    dataset_id = out.strip()
    assert dataset_id.startswith("ds_") and "256 train / 64 dev rows" in err

    status, out, err = server.cli(capsys, "jobs", "submit", "--model", TINY, "--dataset", dataset_id, "--budget",
                                  "2%", "--search", json.dumps(TINY_SEARCH), "--train-steps", "20", "--watch",
                                  "--poll", "0.1", "--download", str(tmp_path / "runs"))
    assert status == 0, err
    job_id = out.splitlines()[0]
    assert re.fullmatch(r"job_\w+", job_id)
    assert "status  succeeded" in err and "round 2/2:" in err  # the events as they came
    assert f"job {job_id}: succeeded" in out and re.search(r"accuracy on dev\s*\W\s*\d\.\d{4}", out)
    assert "configuration per layer" in out and (tmp_path / "runs" / job_id / "trace.json").is_file()
    assert "configurations the search passed through" in out and "chosen)" in out  # the front, the chosen marked

    status, out, _ = server.cli(capsys, "jobs", "get", job_id)
    job = json.loads(out)
    assert status == 0 and job["status"] == "succeeded" and job["search"]["train"]["steps"] == 20
    status, out, _ = server.cli(capsys, "jobs", "watch", job_id, "--download", str(tmp_path / "w"))
    assert status == 0 and re.search(rf"downloaded to\s*\W\s*{re.escape(str(tmp_path / 'w' / job_id))}", out)
    status, out, _ = server.cli(capsys, "jobs", "list", "--status", "succeeded", "--limit", "0")
    assert status == 0 and re.search(rf"{job_id}\s+succeeded", out)
    status, out, _ = server.cli(capsys, "datasets", "list", "--json")
    assert status == 0 and dataset_id in [d["id"] for d in json.loads(out)]
    status, out, _ = server.cli(capsys, "jobs", "download", job_id, "--archive", "--out", str(tmp_path / "a"))
    assert status == 0 and hashlib.sha256(Path(out.strip()).read_bytes()).hexdigest() == job["artifact"]["sha256"]


def test_the_cli_says_what_went_wrong_in_one_line(server, capsys, tmp_path):
    status, out, err = server.cli(capsys, "jobs", "get", "job_nope")
    assert (status, out) == (1, "") and "not_found (404): no job 'job_nope'" in err and "Traceback" not in err
    bad = tmp_path / "train.csv"
    bad.write_text("text,label\n")
    status, _, err = server.cli(capsys, "datasets", "upload", str(bad), str(bad))
    assert status == 1 and "invalid_request (422)" in err and "train.csv" in err
    status, _, err = server.cli(capsys, "jobs", "submit", "--model", TINY, "--dataset", "ds_nope", "--search", "[1]")
    assert status == 2 and "JSON object" in err
    capsys.readouterr()
    assert main(["jobs", "list", "--url", server.url, "--api-key", ""]) == 2
    assert "PEFTSEARCH_API_KEY" in capsys.readouterr().err
    # an empty id (a shell variable left unset by a failed upload) is refused, never sent as the collection
    for command in (["datasets", "delete", ""], ["jobs", "delete", " "], ["jobs", "get", ""], ["datasets", "get", ""]):
        status, out, err = server.cli(capsys, *command)
        assert (status, out) == (1, "") and f"no {command[0][:-1]} id given" in err and "Traceback" not in err


def test_wait_gives_up_without_touching_the_job_and_cancel_stops_it(server, dataset, capsys):
    with server.client() as client:
        job = client.submit(TINY, dataset, budget="2%", search=LONG_SEARCH)
        with pytest.raises(PeftsearchError, match="goes on"):
            job.wait(poll_s=0.1, timeout_s=0)
        assert client.job(job.id).status in ("queued", "validating", "running")
        status, out, err = server.cli(capsys, "jobs", "cancel", job.id, "--wait")
        assert status == 0, err
        assert out.strip() == f"{job.id} cancelled"
        assert client.job(job.id).status == "cancelled"


def test_the_client_never_imports_torch(server):
    code = ("import sys\nfrom peftsearch.cli import main\n"
            f"status = main(['jobs', 'list', '--url', {server.url!r}, '--api-key', {server.key!r}])\n"
            "assert status == 0 and 'rich' in sys.modules\n"
            "assert not {'torch', 'transformers', 'peft'} & set(sys.modules), 'torch imported'")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "job_" in run.stdout


def test_follow_listens_to_the_event_stream_and_polls_a_server_without_one(server, dataset):
    with server.client() as client:
        streamed = server.faults.arm("GET", r"/v1/jobs/job_\w+/events", "watch")
        job = client.submit(TINY, dataset, budget="2%", search=TINY_SEARCH, name="streamed", metadata={"n": 1})
        snapshots = list(job.follow(poll_s=0.1))
        assert snapshots[-1].job.succeeded and (snapshots[-1].job.name, snapshots[-1].job.metadata) == (
            "streamed", {"n": 1})
        statuses = [e.message for s in snapshots for e in s.events if e.kind == "status"]
        assert statuses == ["queued", "validating", "running", "succeeded"]  # each event once, in order
        assert any(seen.get("accept") == "text/event-stream" for seen in streamed.seen)
        server.faults.disarm()

        polled = server.faults.arm("GET", r"/v1/jobs/job_\w+/events", "no_stream")
        other = client.submit(TINY, dataset, budget="2%", search=TINY_SEARCH)
        snapshots = list(other.follow(poll_s=0.1))
        assert snapshots[-1].job.succeeded
        assert [e.message for s in snapshots for e in s.events if e.kind == "status"] == [
            "queued", "validating", "running", "succeeded"]
        assert len(polled.seen) > 2  # it kept looking, by pages


def test_delete_and_get_through_the_client_and_the_cli(server, capsys, toy_files):
    with server.client() as client:
        dataset = client.upload_dataset(*toy_files["csv"], name="to delete")
        assert client.dataset(dataset.id) == dataset
        job = client.submit(TINY, dataset, budget="2%", search=LONG_SEARCH, name="doomed")
        with pytest.raises(ErrorResponse) as busy:
            job.delete()
        assert (busy.value.status, busy.value.code) == (409, "not_deletable")
        with pytest.raises(ErrorResponse) as in_use:
            client.delete_dataset(dataset.id)
        assert in_use.value.code == "dataset_in_use"
        listed = client.jobs(dataset=dataset.id)
        assert [j.id for j in listed] == [job.id] and listed.total == 1 and listed[0].name == "doomed"
        job.cancel().wait(poll_s=0.1)
    status, out, err = server.cli(capsys, "jobs", "list", "--dataset", dataset.id)
    assert status == 0 and "1 of 1 job(s)" in err and job.id in out
    status, out, _ = server.cli(capsys, "datasets", "get", dataset.id)
    assert status == 0 and json.loads(out)["name"] == "to delete"
    status, out, err = server.cli(capsys, "datasets", "delete", dataset.id)  # the cancelled job holds it no more
    assert (status, out.strip()) == (0, f"{dataset.id} deleted"), err
    status, out, err = server.cli(capsys, "jobs", "delete", job.id)
    assert (status, out.strip()) == (0, f"{job.id} deleted"), err
    status, _, err = server.cli(capsys, "jobs", "get", job.id)
    assert status == 1 and "not_found (404)" in err
    assert not (server.settings.datasets / dataset.id).exists()


def test_webhooks_through_the_client_and_the_cli(server, dataset, capsys):
    """`webhooks create|list|get|deliveries|delete`, `jobs submit --webhook-url` and the SDK's calls, with one real
    job whose end the sender (here one pass of it, as `peftsearch serve` runs it) delivers to both webhooks."""
    from worker.webhooks import deliver_once

    from .support import receiver

    with receiver() as hooks:
        status, out, err = server.cli(capsys, "webhooks", "create", hooks.url + "/all", "--event", "job.succeeded",
                                      "--event", "job.failed")
        assert status == 0, err
        secret = out.strip()
        assert secret.startswith("whsec_") and "\n" not in secret  # the secret alone on stdout
        hook_id = re.search(r"webhook (wh_\w+)", err).group(1)
        status, out, _ = server.cli(capsys, "webhooks", "list", "--json")
        assert status == 0 and [h["id"] for h in json.loads(out)] == [hook_id] and "whsec_" not in out
        status, out, _ = server.cli(capsys, "webhooks", "get", hook_id)
        assert json.loads(out)["events"] == ["job.succeeded", "job.failed"]

        status, out, err = server.cli(capsys, "jobs", "submit", "--model", TINY, "--dataset", dataset.id,
                                      "--budget", "2%", "--search", json.dumps(TINY_SEARCH), "--webhook-url",
                                      hooks.url + "/own", "--watch", "--poll", "0.2")
        assert status == 0, err
        job_id = out.splitlines()[0]
        own_secret = re.search(r"shown once\): (whsec_\S+)", err).group(1)
        assert deliver_once(server.settings) == 2
        secrets = {"/all": secret, "/own": own_secret}
        for request in hooks.received:
            payload = verify_webhook(request.body, request.headers, secrets[request.path])
            assert (payload["type"], payload["data"]["job"]["id"]) == ("job.succeeded", job_id)
            with pytest.raises(InvalidWebhook):
                verify_webhook(request.body, request.headers, secrets[{"/all": "/own", "/own": "/all"}[request.path]])
        assert sorted(r.path for r in hooks.received) == ["/all", "/own"]

        status, out, _ = server.cli(capsys, "webhooks", "deliveries", hook_id, "--json")
        (delivered,) = json.loads(out)
        assert (delivered["job_id"], delivered["status"], delivered["attempts"]) == (job_id, "delivered", 1)
        status, out, _ = server.cli(capsys, "webhooks", "deliveries", "--job", job_id)
        assert status == 0 and out.count("delivered") == 2 and "job.succeeded" in out
        status, _, err = server.cli(capsys, "webhooks", "deliveries")
        assert status == 2 and "one of the arguments webhook_id --job is required" in err

        with server.client() as client:
            job = client.job(job_id)
            assert job.webhook.url == hooks.url + "/own"
            assert sorted(d.webhook_id for d in job.deliveries()) == sorted([hook_id, job.webhook.id])
            assert job.webhook_secret is None  # shown in the submission's answer only
            created = client.create_webhook(hooks.url + "/sdk")
            assert created.secret.startswith("whsec_") and created.events == ["job.succeeded", "job.failed",
                                                                              "job.cancelled"]
            assert {h.id for h in client.webhooks()} == {hook_id, created.id}
            assert client.deliveries(created.id) == []
            client.delete_webhook(created.id)
            with pytest.raises(ErrorResponse, match="invalid_request") as bad:
                client.create_webhook("ftp://example.com/")
            assert bad.value.param == "url"

        status, out, _ = server.cli(capsys, "webhooks", "delete", hook_id)
        assert status == 0 and f"{hook_id} deleted" in out
        status, _, err = server.cli(capsys, "webhooks", "get", hook_id)
        assert status == 1 and "not_found (404)" in err
