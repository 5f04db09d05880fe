"""The Python client of a peftsearch server: `peftsearch.Client`.

    from peftsearch import Client
    client = Client("http://127.0.0.1:8000", api_key="psk_...")     # or PEFTSEARCH_URL / PEFTSEARCH_API_KEY
    dataset = client.upload_dataset("train.csv", "dev.csv", text_column="sentence")
    job = client.submit("all-MiniLM-L6-v2", dataset, budget="0.5%", search={"train": {"steps": 300}})
    adapter_dir = job.wait().download("runs")                       # runs/<job id>/, checksum verified

The answers are the server's own response bodies (api/schemas.py), so a field means here what it means in the
REST API. No torch, no database: httpx and pydantic only (api.schemas imports the status names from store.models).

Requests that fail on the way are retried with backoff for up to `retry_for_s`: a 503 (overloaded, or not ready;
after its Retry-After), and connection errors and timeouts where a retry cannot do a thing twice: GETs, a
submission (it carries an Idempotency-Key, so the server returns the same job), a cancel, and any request that
never reached the server. A dataset upload (or a webhook's creation) that may have reached the server is not
retried: it would make two.

A receiver of the server's webhooks checks each delivery with `verify_webhook` (docs/client.md).
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import logging
import os
import random
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, PrivateAttr

from api.schemas import (
    DatasetOut,
    DeliveryOut,
    EventOut,
    JobOut,
    JobSummary,
    ModelOut,
    Progress,
    Readiness,
    RoundOut,
    WebhookCreated,
    WebhookOut,
)
from store.models import FINAL, SUCCEEDED
from store.webhooks import signature

DEFAULT_URL = "http://127.0.0.1:8000"
CHECKSUM_HEADER = "X-Checksum-SHA256"
# Never sent: retrying these cannot make the server do anything twice, whatever the request.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 10.0
# The longest silence of an event stream before the client reconnects: the server sends a heartbeat every 15 s.
STREAM_READ_TIMEOUT_S = 45.0
# How far a webhook delivery's timestamp may be from the receiver's clock (Standard Webhooks' usual bound): an
# older delivery captured on the way cannot be replayed later.
WEBHOOK_TOLERANCE_S = 300

log = logging.getLogger("peftsearch.client")
T = TypeVar("T", bound=BaseModel)


class PeftsearchError(Exception):
    """Anything the client could not do; `str()` says what and why."""


def _at(collection: str, resource_id: str, *rest: str) -> str:
    """The path of one resource: an empty id is the caller's mistake, not a request for the collection (a
    server answers `/v1/jobs/` with a redirect, and a DELETE of it would look like it worked)."""
    if not isinstance(resource_id, str) or not resource_id.strip():
        raise PeftsearchError(f"no {collection.rstrip('s')} id given")
    return "/".join(["/v1", collection, quote(resource_id, safe=""), *rest])


class ErrorResponse(PeftsearchError):
    """The server answered with an error: its HTTP status and the envelope's code, message and param."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(f"{code} ({status}): {message}" + (f" [param: {param}]" if param else ""))
        self.status, self.code, self.message, self.param = status, code, message, param

    @classmethod
    def of(cls, response: httpx.Response) -> ErrorResponse:
        try:
            error = response.json()["error"]
            return cls(response.status_code, error["code"], error["message"], error.get("param"))
        except (ValueError, KeyError, TypeError):  # not the envelope: a proxy's page, say
            return cls(response.status_code, "http_error", response.text[:500] or response.reason_phrase)


class Unreachable(PeftsearchError):
    """No answer from the server within the retry budget (connection refused, timeouts, dropped connections)."""


class ChecksumMismatch(PeftsearchError):
    """The downloaded archive's sha256 is not the one the server announced; nothing was kept."""


class InvalidWebhook(PeftsearchError):
    """A webhook delivery that was not signed with the secret given (or whose timestamp is too far from now)."""


class Snapshot(NamedTuple):
    """One look at a job while following it: the job, and its events since the previous look."""

    job: Job
    events: list[EventOut]


class Client:
    """A connection to one peftsearch server with one API key (None: PEFTSEARCH_URL, PEFTSEARCH_API_KEY).
    `timeout`: seconds to wait for one answer; `retry_for_s`: how long one call keeps retrying (see above).
    Close it, or use it as a context manager."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 retry_for_s: float = 120.0):
        self.url = (url or os.environ.get("PEFTSEARCH_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("PEFTSEARCH_API_KEY")
        self.retry_for_s = retry_for_s
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    # --- the deployment -----------------------------------------------------------------------------------------
    def ready(self) -> Readiness:
        """GET /readyz: the database is migrated and the broker answers (ErrorResponse 503 when not)."""
        return Readiness.model_validate(self._json("GET", "/readyz"))

    def models(self) -> list[ModelOut]:
        return self._page(ModelOut, "/v1/models", limit=None)

    # --- datasets -----------------------------------------------------------------------------------------------
    def upload_dataset(self, train: str | os.PathLike, dev: str | os.PathLike, *, text_column: str = "text",
                       text_pair_column: str | None = None, label_column: str = "label",
                       problem: str = "classification", format: str | None = None,
                       name: str | None = None, prompt_template: str | None = None,
                       label_words: str | dict[str, str] | None = None) -> DatasetOut:
        """POST /v1/datasets. The server checks the files with the engine's loader; its errors name the file and
        line (ErrorResponse 422, `param` "train" or "dev")."""
        paths = {"train": Path(train), "dev": Path(dev)}
        for split, path in paths.items():
            if not path.is_file():
                raise PeftsearchError(f"{split} file {path} does not exist")
        form = {"text_column": text_column, "label_column": label_column, "problem": problem,
                "text_pair_column": text_pair_column, "format": format, "name": name,
                "prompt_template": prompt_template,
                "label_words": ",".join(f"{k}={v}" for k, v in label_words.items()) if isinstance(label_words, dict)
                else label_words}
        with ExitStack() as files:
            opened = {split: files.enter_context(open(path, "rb")) for split, path in paths.items()}

            def parts() -> dict[str, tuple[str, Any]]:  # rewound for each attempt
                for handle in opened.values():
                    handle.seek(0)
                return {split: (paths[split].name, handle) for split, handle in opened.items()}

            data = self._json("POST", "/v1/datasets", idempotent=False, files=parts,
                              data={k: v for k, v in form.items() if v is not None})
        return DatasetOut.model_validate(data)

    def datasets(self, limit: int | None = 20) -> list[DatasetOut]:
        """Your datasets, newest first: `limit` of them (None: all)."""
        return self._page(DatasetOut, "/v1/datasets", limit=limit)

    def dataset(self, dataset_id: str) -> DatasetOut:
        return DatasetOut.model_validate(self._json("GET", _at("datasets", dataset_id)))

    def delete_dataset(self, dataset_id: str) -> None:
        """DELETE /v1/datasets/{id}: the dataset and its files (ErrorResponse 409 `dataset_in_use` while a job
        that has not ended uses it)."""
        self._send("DELETE", _at("datasets", dataset_id), read=lambda _: None, gone_on_retry=True)

    # --- jobs ---------------------------------------------------------------------------------------------------
    def submit(self, model: str, dataset: str | DatasetOut, *, budget: str | int | None = None,
               search: dict[str, Any] | None = None, idempotency_key: str | None = None, name: str | None = None,
               metadata: dict[str, Any] | None = None, webhook_url: str | None = None) -> Job:
        """POST /v1/jobs. The Idempotency-Key (a new uuid4 unless given) makes retries return the same job; pass
        your own to make a rerun of your program return the job the first run submitted. `name` and `metadata`
        (a small JSON object) are yours, returned with the job. `webhook_url`: the job's end is POSTed there too,
        signed with the returned job's `webhook_secret` (only this Job has it: keep it)."""
        body: dict[str, Any] = {"model": model, "dataset_id": dataset if isinstance(dataset, str) else dataset.id,
                                "search": search or {}}
        for field, value in (("budget", budget), ("name", name), ("metadata", metadata),
                             ("webhook_url", webhook_url)):
            if value is not None:
                body[field] = value
        key = idempotency_key or str(uuid.uuid4())
        data = self._json("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
        job = self._job(data)
        job._webhook_secret = data.get("webhook_secret")
        return job

    def job(self, job_id: str) -> Job:
        return self._job(self._json("GET", _at("jobs", job_id)))

    def jobs(self, status: str | list[str] | None = None, limit: int | None = 20, *, model: str | None = None,
             dataset: str | None = None, created_after: datetime | str | None = None,
             created_before: datetime | str | None = None) -> JobList:
        """Your jobs, newest first: `limit` of them (None: all), of these statuses, model, dataset and creation
        range (created_after <= created < created_before) when given. `.total` is how many match in all."""
        filters = {"status": status, "model": model, "dataset_id": dataset,
                   "created_after": created_after.isoformat() if isinstance(created_after, datetime) else created_after,
                   "created_before": (created_before.isoformat() if isinstance(created_before, datetime)
                                      else created_before)}
        pages: list[dict] = []
        items = self._page(JobSummary, "/v1/jobs", limit=limit, pages=pages, **filters)
        return JobList(items, total=pages[0]["total"] if pages else 0)

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once, a validating or running one becomes `cancelling` until its worker stops."""
        return self._job(self._json("POST", _at("jobs", job_id, "cancel")))

    def delete_job(self, job_id: str) -> None:
        """DELETE /v1/jobs/{id}: an ended job with its events, rounds and artifact (ErrorResponse 409
        `not_deletable` while it is queued, validating or running: cancel it first)."""
        self._send("DELETE", _at("jobs", job_id), read=lambda _: None, gone_on_retry=True)

    def events(self, job_id: str, after: int | None = None) -> list[EventOut]:
        """The job's events after event id `after` (all pages), oldest first."""
        events: list[EventOut] = []
        while True:
            page = self._json("GET", _at("jobs", job_id, "events"),
                              params={"limit": 100, **({"after": after} if after is not None else {})})
            events += [EventOut.model_validate(e) for e in page["data"]]
            if not page["next"]:
                return events
            after = int(page["next"])

    def rounds(self, job_id: str) -> list[RoundOut]:
        return [RoundOut.model_validate(r) for r in self._json("GET", _at("jobs", job_id, "rounds"))["data"]]

    def deliveries(self, webhook_id: str | None = None, *, job: str | None = None,
                   limit: int | None = 20) -> list[DeliveryOut]:
        """The webhook deliveries of one webhook, or of one job's end (`job`), newest first: `limit` of them
        (None: all)."""
        if (webhook_id is None) == (job is None):
            raise PeftsearchError("deliveries of a webhook or of a job: give one of webhook_id and job")
        path = _at("webhooks", webhook_id, "deliveries") if job is None else _at("jobs", job, "deliveries")
        return self._page(DeliveryOut, path, limit=limit)

    def download_archive(self, job_id: str, path: str | os.PathLike) -> Path:
        """The job's .tar.gz at `path`, its sha256 checked against the server's X-Checksum-SHA256 (written aside,
        renamed once checked: a failed download leaves nothing at `path`). An existing `path` is an error."""
        path = Path(path)
        if path.exists():
            raise PeftsearchError(f"{path} already exists; remove it or download to another path")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")

        def fetch(response: httpx.Response) -> None:
            announced = response.headers.get(CHECKSUM_HEADER)
            if not announced:
                raise PeftsearchError(f"the server sent no {CHECKSUM_HEADER} header: the archive cannot be checked")
            digest = hashlib.sha256()
            with open(partial, "wb") as out:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != announced:
                raise ChecksumMismatch(f"job {job_id}'s archive has sha256 {digest.hexdigest()}, the server "
                                       f"announced {announced}; nothing kept")

        try:
            self._send("GET", _at("jobs", job_id, "artifact"), read=fetch)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    def download(self, job_id: str, into: str | os.PathLike) -> Path:
        """The job's result directory as `into/<job id>/` (adapter, configuration, weights, trace, model card).
        The archive is checked (sha256) and unpacked with tarfile's "data" filter (no path outside the target, no
        links out, no devices) next to the target, then moved in place; an existing `into/<job id>` is an error."""
        into = Path(into)
        target = into / job_id
        if target.exists():
            raise PeftsearchError(f"{target} already exists; remove it or download into another directory")
        into.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=into, prefix=f".{job_id}.") as scratch:
            archive = self.download_archive(job_id, Path(scratch) / f"{job_id}.tar.gz")
            unpacked = Path(scratch) / "unpacked"
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")
            if [p.name for p in unpacked.iterdir()] != [job_id]:
                raise PeftsearchError(f"job {job_id}'s archive does not hold one directory named after the job")
            (unpacked / job_id).rename(target)  # same file system; refuses a target that appeared meanwhile
        return target

    # --- webhooks -----------------------------------------------------------------------------------------------
    def create_webhook(self, url: str, events: list[str] | None = None) -> WebhookCreated:
        """POST /v1/webhooks: the ends of your jobs that `events` names (of job.succeeded, job.failed,
        job.cancelled; default all) are POSTed to `url`, signed with the answer's `secret`, which the server shows
        only now (see verify_webhook). Not retried once it may have reached the server: it would make two
        (webhooks() shows whether it arrived)."""
        body: dict[str, Any] = {"url": url, **({"events": events} if events is not None else {})}
        return WebhookCreated.model_validate(self._json("POST", "/v1/webhooks", json=body, idempotent=False))

    def webhooks(self, limit: int | None = 20) -> list[WebhookOut]:
        """Your webhooks for all your jobs, newest first: `limit` of them (None: all)."""
        return self._page(WebhookOut, "/v1/webhooks", limit=limit)

    def webhook(self, webhook_id: str) -> WebhookOut:
        return WebhookOut.model_validate(self._json("GET", _at("webhooks", webhook_id)))

    def delete_webhook(self, webhook_id: str) -> None:
        """DELETE /v1/webhooks/{id}: the webhook and its deliveries; nothing more is sent to it."""
        self._send("DELETE", _at("webhooks", webhook_id), read=lambda _: None, gone_on_retry=True)

    # --- HTTP ---------------------------------------------------------------------------------------------------
    def _job(self, data: dict[str, Any]) -> Job:
        job = Job.model_validate(data)
        job._client = self
        return job

    def _page(self, item_type: type[T], path: str, limit: int | None, pages: list[dict] | None = None,
              **params: Any) -> list[T]:
        """Follow `next` cursors until `limit` items (None: every page); each page's body goes to `pages`."""
        items: list[T] = []
        after = None
        while limit is None or len(items) < limit:
            size = 100 if limit is None else min(100, limit - len(items))
            query = {k: v for k, v in {**params, "limit": size, "after": after}.items() if v is not None}
            page = self._json("GET", path, params=query)
            if pages is not None:
                pages.append(page)
            items += [item_type.model_validate(item) for item in page["data"]]
            after = page.get("next")
            if not after:
                break
        return items

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        def read(response: httpx.Response) -> Any:
            response.read()
            return response.json()

        return self._send(method, path, read=read, **kwargs)

    def _send(self, method: str, path: str, *, read: Callable[[httpx.Response], Any], idempotent: bool = True,
              files: Callable[[], dict] | None = None, headers: dict[str, str] | None = None,
              gone_on_retry: bool = False, **kwargs: Any) -> Any:
        """Send the request, retrying as the module docstring says, and return `read(response)` of a 2xx answer
        (read while the response is open: a download streams). `gone_on_retry`: a 404 to a retry is the first
        attempt's success (a deletion whose answer was lost). Raises ErrorResponse, Unreachable."""
        headers = {**(headers or {}), **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})}
        start, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            try:
                request = self._http.build_request(method, path, headers=headers,
                                                   files=files() if files else None, **kwargs)
                response = self._http.send(request, stream=True)
                try:
                    if response.status_code < 400 or (gone_on_retry and attempt > 1 and response.status_code == 404):
                        return read(response)
                    response.read()
                    error, retry_after = ErrorResponse.of(response), _retry_after(response)
                finally:
                    response.close()
                if response.status_code != 503:
                    raise error
                failure: Exception = error
            except httpx.TransportError as e:
                if not (idempotent or isinstance(e, NOT_SENT)):
                    raise Unreachable(f"{method} {self.url}{path}: {_describe(e)}; not retried, since the server "
                                      "may have acted on it: check before sending it again") from e
                failure, retry_after = e, None
            delay = retry_after if retry_after is not None else _backoff(attempt)
            waited = time.monotonic() - start
            if waited + delay > self.retry_for_s:
                if isinstance(failure, ErrorResponse):
                    raise failure
                raise Unreachable(f"{method} {self.url}{path}: no answer after {attempt} attempt(s) over "
                                  f"{waited:.1f} s (last: {_describe(failure)}); is the server running there? "
                                  "(--url / PEFTSEARCH_URL)") from failure
            log.warning("%s %s: %s; retrying in %.1f s", method, path, _describe(failure), delay)
            time.sleep(delay)


class JobList(list):
    """A list of JobSummary, with `total`: how many jobs match the filters on every page."""

    def __init__(self, items: list[JobSummary], total: int):
        super().__init__(items)
        self.total = total


class Job(JobOut):
    """A job as the server last described it (every field of GET /v1/jobs/{id}), with the calls that act on it.
    A Job does not change: refresh() and wait() return new ones."""

    _client: Client = PrivateAttr()
    _webhook_secret: str | None = PrivateAttr(None)

    @property
    def webhook_secret(self) -> str | None:
        """The secret that signs the deliveries to the job's own webhook (`webhook_url`): on the Job submit()
        returned only, as the server shows it only in the submission's answer."""
        return self._webhook_secret

    @property
    def done(self) -> bool:
        return self.status in FINAL

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED

    def refresh(self) -> Job:
        return self._client.job(self.id)

    def delete(self) -> None:
        self._client.delete_job(self.id)

    def cancel(self) -> Job:
        return self._client.cancel(self.id)

    def events(self, after: int | None = None) -> list[EventOut]:
        return self._client.events(self.id, after)

    def rounds(self) -> list[RoundOut]:
        return self._client.rounds(self.id)

    def deliveries(self) -> list[DeliveryOut]:
        """The webhook deliveries of this job's end (its own webhook's and your others'), newest first."""
        return self._client.deliveries(job=self.id, limit=None)

    def follow(self, poll_s: float = 1.0, events: bool = True, stream: bool = True) -> Iterator[Snapshot]:
        """Follow the job until it is final (the last snapshot is), yielding it with the events since the last
        snapshot. With `stream` it listens to the server's event stream (GET /v1/jobs/{id}/events as
        text/event-stream: events, progress and heartbeats as they come), resumed after the last event it had when
        the stream closes or breaks; a server that does not offer a stream is polled every `poll_s` seconds. A
        look the server does not answer within the client's retry budget is logged and the next one tried: a slow
        or restarting server never ends the following, nor the job."""
        job, after = self, None
        while True:
            try:
                job = job.refresh()
                new = job.events(after)
            except (Unreachable, ErrorResponse) as e:
                if isinstance(e, ErrorResponse) and e.status != 503:
                    raise
                log.warning("job %s: %s; still following", self.id, e)
                time.sleep(poll_s)
                continue
            if new:
                after = new[-1].id
            yield Snapshot(job, new if events else [])
            if job.done:
                return
            if not stream:
                time.sleep(poll_s)
                continue
            try:
                job, after, ended, offered = yield from self._streamed(job, after, events)
            except (Unreachable, ErrorResponse, httpx.TransportError) as e:
                if isinstance(e, ErrorResponse) and e.status != 503:
                    raise
                log.warning("job %s: event stream: %s; looking again", self.id, _describe(e))
                time.sleep(poll_s)
                continue
            if ended and job.done:
                return
            if not offered:  # an older server: JSON pages only
                stream = False
                time.sleep(poll_s)

    def _streamed(self, job: Job, after: int | None, events: bool):
        """One connection to the job's event stream, as Snapshots; returns (job, last event id, whether the job
        has ended, whether the server streamed at all)."""
        client = self._client
        headers = {"Accept": "text/event-stream",
                   **({"Authorization": f"Bearer {client.api_key}"} if client.api_key else {}),
                   **({"Last-Event-ID": str(after)} if after is not None else {})}
        timeout = httpx.Timeout(client._http.timeout.connect, read=max(client._http.timeout.read or 0,
                                                                       STREAM_READ_TIMEOUT_S))
        with client._http.stream("GET", _at("jobs", self.id, "events"), headers=headers, timeout=timeout) as response:
            if response.status_code == 204:  # ended, nothing after `after`
                return job.refresh(), after, True, True
            if response.status_code >= 400:
                response.read()
                raise ErrorResponse.of(response)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                return job, after, False, False
            for message in sse_messages(response.iter_lines()):
                if message.event == "message" and message.data:
                    event = EventOut.model_validate_json(message.data)
                    after = event.id
                    if event.kind == "status":
                        job = job.refresh()
                    yield Snapshot(job, [event] if events else [])
                    if job.done:
                        return job, after, True, True
                elif message.event == "progress" and message.data:
                    job = job.model_copy(update={"progress": Progress.model_validate_json(message.data)})
                    yield Snapshot(job, [])
                elif message.event == "end":
                    return job.refresh(), after, True, True
                elif message.comment is not None:  # a heartbeat: a caller waiting with a deadline looks at it
                    yield Snapshot(job, [])
        return job, after, False, True

    def wait(self, poll_s: float = 1.0, timeout_s: float | None = None) -> Job:
        """The job once it is final (succeeded, failed or cancelled: check `succeeded`). After `timeout_s` it
        raises PeftsearchError and leaves the job as it is."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for snapshot in self.follow(poll_s, events=False):
            if snapshot.job.done:
                return snapshot.job
            if deadline is not None and time.monotonic() > deadline:
                raise PeftsearchError(f"job {self.id} is still {snapshot.job.status} after {timeout_s} s; it goes on")
        raise AssertionError("follow() ends with a final job")

    def download(self, into: str | os.PathLike) -> Path:
        """The result directory, `into/<job id>/`; see Client.download."""
        return self._client.download(self.id, into)


def verify_webhook(body: bytes, headers: Mapping[str, str], secret: str, *,
                   tolerance_s: float = WEBHOOK_TOLERANCE_S) -> dict[str, Any]:
    """The payload of a webhook delivery ({"id", "type", "created_at", "data": {"job": ...}}) once its signature
    checks out: `body` as received (bytes, before any parsing), its headers (webhook-id, webhook-timestamp,
    webhook-signature; any case), the webhook's secret. Raises InvalidWebhook when it was not signed with that
    secret, or its timestamp is more than `tolerance_s` from this machine's clock (a replay)."""
    headers = {name.lower(): value for name, value in headers.items()}
    try:
        message_id, timestamp, signatures = (headers[h] for h in ("webhook-id", "webhook-timestamp",
                                                                  "webhook-signature"))
        sent_at = int(timestamp)
    except (KeyError, ValueError) as e:
        raise InvalidWebhook(f"not a signed webhook delivery: missing or malformed header {e}") from e
    if abs(time.time() - sent_at) > tolerance_s:
        raise InvalidWebhook(f"webhook timestamp {sent_at} is more than {tolerance_s:g} s from now")
    expected = signature(secret, message_id, sent_at, body)
    if not any(hmac.compare_digest(expected, given) for given in signatures.split()):  # several while rotating
        raise InvalidWebhook("webhook signature does not match: another secret, or the body was changed")
    return json.loads(body)


class SseMessage(NamedTuple):
    event: str  # "message" unless the stream named it
    data: str
    id: str | None
    comment: str | None  # set (and the rest empty) for a comment line


def sse_messages(lines: Iterator[str]) -> Iterator[SseMessage]:
    """A text/event-stream's messages and comments, as the HTML standard parses them (fields event, data, id;
    several data lines joined with newlines; a blank line ends a message)."""
    event, data, last_id = "", [], None
    for line in lines:
        if not line:
            if data or event:
                yield SseMessage(event or "message", "\n".join(data), last_id, None)
            event, data = "", []
            continue
        if line.startswith(":"):
            yield SseMessage("", "", None, line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\x00" not in value:
            last_id = value


def _retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds: a number of seconds or an HTTP date (RFC 9110)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _backoff(attempt: int) -> float:
    """Exponential, capped, with jitter: clients that failed together do not all come back together."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def _describe(error: Exception) -> str:
    return str(error) if isinstance(error, ErrorResponse) else f"{type(error).__name__}: {error}".rstrip(": ")
