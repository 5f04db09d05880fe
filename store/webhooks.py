"""Webhooks: where an owner's job notifications go, and the record of each delivery.

A job's end (succeeded, failed, cancelled) adds one pending delivery per webhook that wants its event, in the
transaction that records the end (store.jobs): whoever ends a job only writes rows and never waits for a
receiver. The sender (worker/webhooks.py, a thread of every `peftsearch serve`) claims due deliveries, posts
them and records each attempt's outcome here. A claim is a conditional UPDATE of the row it read (FOR UPDATE
SKIP LOCKED on PostgreSQL), and it moves the row's next attempt past the attempt's longest possible duration: of
several senders one sends a delivery at a time, and a sender that dies mid-attempt leaves it to another once
that time has passed. Each claim bumps `attempts`, which fences the outcome: a sender whose delivery was taken
over records nothing.

Signatures follow Standard Webhooks (https://www.standardwebhooks.com): the secret is "whsec_" + base64 of 32
random bytes, and the `webhook-signature` header is "v1," + base64(HMAC-SHA256(those bytes,
"<webhook-id>.<webhook-timestamp>.<body>")); peftsearch.verify_webhook checks one.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import AfterValidator, Field
from sqlalchemy import Row, func, or_, select, update
from sqlalchemy.orm import Session

from pruning.spec import SpecError

from .models import (
    CANCELLED,
    DELIVERED,
    FAILED,
    PENDING,
    SUCCEEDED,
    Job,
    Webhook,
    WebhookDelivery,
    new_id,
    utcnow,
)

EVENT_OF_STATUS = {SUCCEEDED: "job.succeeded", FAILED: "job.failed", CANCELLED: "job.cancelled"}
EVENT_TYPES = tuple(EVENT_OF_STATUS.values())
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2048
EXCERPT_CHARS = 200  # of a receiver's answer, kept with the delivery; the rest is never stored
ERROR_CHARS = 500


class TooManyWebhooks(Exception):
    pass


def check_url(url: str) -> str:
    """A receiver's URL: absolute http(s), a host, no credentials (they would be stored and shown in lists; put
    a token in the path or query instead, or check the signature). ASCII only: a host in punycode, a path
    percent-encoded."""
    if not url.isascii() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise SpecError("", "must be ASCII without spaces or control characters (percent-encode the path, "
                            "write the host in punycode)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port out of range or not a number)
        httpx.URL(url)  # what the sender will parse
    except (ValueError, httpx.InvalidURL) as e:
        raise SpecError("", f"not a valid URL: {e}") from e
    if parts.scheme.lower() not in ("http", "https"):
        raise SpecError("", "must be an http:// or https:// URL")
    if not parts.hostname:
        raise SpecError("", "must name a host, e.g. https://example.com/hooks/peftsearch")
    if parts.username is not None or parts.password is not None:
        raise SpecError("", "must not carry credentials (user:password@); the signature proves who sent a "
                            "delivery, or put a token in the path")
    return url


WebhookUrl = Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH, description=(
    "Where deliveries are POSTed: an http:// or https:// URL without credentials."),
    examples=["https://example.com/hooks/peftsearch"]), AfterValidator(check_url)]


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header's value for one attempt (Standard Webhooks' v1 scheme)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# --- webhooks -----------------------------------------------------------------------------------------------------


def create_webhook(session: Session, *, owner: str, url: str, event_types: list[str] | None = None,
                   job_id: str | None = None, limit: int | None = None) -> Webhook:
    """A webhook for every job of `owner` (job_id None), or for one job; event_types None: all of them.
    TooManyWebhooks when the owner already has `limit` webhooks for all its jobs."""
    if job_id is None and limit is not None:
        count = session.scalar(select(func.count()).select_from(Webhook)
                               .where(Webhook.owner == owner, Webhook.job_id.is_(None)))
        if count >= limit:
            raise TooManyWebhooks(f"an owner has at most {limit} webhooks (PEFTSEARCH_MAX_WEBHOOKS); delete one "
                                  "first (DELETE /v1/webhooks/{id})")
    wanted = set(event_types or EVENT_TYPES)
    hook = Webhook(id=new_id("wh"), owner=owner, url=url, secret=new_secret(), job_id=job_id,
                   event_types=[t for t in EVENT_TYPES if t in wanted])
    session.add(hook)
    session.flush()
    return hook


def get_webhook(session: Session, owner: str, webhook_id: str) -> Webhook | None:
    return session.scalar(select(Webhook).where(Webhook.id == webhook_id, Webhook.owner == owner))


def list_webhooks(session: Session, owner: str, *, after: str | None, limit: int) -> list[Webhook]:
    """The owner's webhooks for all its jobs, newest first (a job's own is in the job's view)."""
    query = select(Webhook).where(Webhook.owner == owner, Webhook.job_id.is_(None))
    if after:
        query = query.where(Webhook.id < after)
    return list(session.scalars(query.order_by(Webhook.id.desc()).limit(limit)))


def delete_webhook(session: Session, owner: str, webhook_id: str) -> bool:
    """Delete the webhook with its deliveries, pending ones included; False when the owner has no such webhook."""
    hook = get_webhook(session, owner, webhook_id)
    if hook is None:
        return False
    session.delete(hook)  # the deliveries go by the foreign key's ON DELETE CASCADE
    session.flush()
    return True


# --- deliveries ---------------------------------------------------------------------------------------------------


def record_deliveries(session: Session, job_id: str, status: str) -> int:
    """One pending delivery, due now, for each webhook of the job's owner (and the job's own) that wants this
    end's event. Call in the transaction that records the end. The webhooks are read FOR SHARE: one deleted
    meanwhile either is gone here, or its deletion waits and takes these deliveries with it."""
    event_type = EVENT_OF_STATUS[status]
    owner = select(Job.owner).where(Job.id == job_id).scalar_subquery()
    hooks = session.execute(select(Webhook.id, Webhook.event_types).where(
        Webhook.owner == owner, or_(Webhook.job_id.is_(None), Webhook.job_id == job_id))
        .order_by(Webhook.id).with_for_update(read=True)).all()
    due, now = [hook_id for hook_id, types in hooks if event_type in types], utcnow()
    session.add_all(WebhookDelivery(id=new_id("dlv"), webhook_id=hook_id, job_id=job_id, event_type=event_type,
                                    status=PENDING, attempts=0, next_attempt_at=now, created_at=now)
                    for hook_id in due)
    return len(due)


def list_deliveries(session: Session, *, webhook_id: str | None = None, job_id: str | None = None,
                    after: str | None, limit: int) -> list[WebhookDelivery]:
    """A webhook's deliveries, or a job's, newest first."""
    query = select(WebhookDelivery)
    if webhook_id is not None:
        query = query.where(WebhookDelivery.webhook_id == webhook_id)
    if job_id is not None:
        query = query.where(WebhookDelivery.job_id == job_id)
    if after:
        query = query.where(WebhookDelivery.id < after)
    return list(session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit)))


@dataclasses.dataclass(frozen=True)
class Claim:
    """One attempt at a delivery, taken by one sender: what it sends, where, signed with what."""

    delivery_id: str
    attempt: int  # the delivery's attempts once claimed; fences the outcome
    event_type: str
    created_at: datetime
    job_id: str
    owner: str
    url: str
    secret: str = dataclasses.field(repr=False)  # never in a log line


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one attempt got: an answer (its status and the start of its body), and why it failed, if it did."""

    response_status: int | None = None
    response_excerpt: str | None = None
    error: str | None = None  # None: delivered (a 2xx answer)


def claim_due(session: Session, *, now: datetime, lease_s: float, limit: int) -> list[Claim]:
    """Take up to `limit` pending deliveries whose next attempt is due, oldest due first: each claim bumps its
    attempts and moves its next attempt `lease_s` ahead (the attempt's longest duration, and some), so no other
    sender takes it meanwhile. Commit before sending."""
    due = (select(WebhookDelivery.id, WebhookDelivery.attempts, WebhookDelivery.next_attempt_at,
                  WebhookDelivery.event_type, WebhookDelivery.created_at, WebhookDelivery.job_id, Webhook.owner,
                  Webhook.url, Webhook.secret)
           .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
           .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
           .order_by(WebhookDelivery.next_attempt_at).limit(limit)
           .with_for_update(of=WebhookDelivery, skip_locked=True))
    claims = []
    for row in session.execute(due).all():
        if _take(session, row, now, now + timedelta(seconds=lease_s)):
            claims.append(Claim(row.id, row.attempts + 1, row.event_type, row.created_at, row.job_id, row.owner,
                                row.url, row.secret))
    return claims


def _take(session: Session, row: Row, now: datetime, lease_until: datetime) -> bool:
    unchanged = ((WebhookDelivery.id == row.id) & (WebhookDelivery.status == PENDING)
                 & (WebhookDelivery.attempts == row.attempts))
    return bool(session.execute(update(WebhookDelivery).where(unchanged).values(
        attempts=row.attempts + 1, next_attempt_at=lease_until, last_attempt_at=now)).rowcount)


def record_outcome(session: Session, claim: Claim, outcome: Outcome, *, now: datetime,
                   retry_s: list[float]) -> str | None:
    """Record an attempt's outcome: delivered; or pending again after the wait retry_s holds for this attempt;
    or failed once the waits are spent. Returns the delivery's status, None when the delivery is not this
    claim's any more (taken over by another sender, or deleted)."""
    if outcome.error is None:
        values: dict[str, Any] = dict(status=DELIVERED, next_attempt_at=None)
    elif claim.attempt <= len(retry_s):
        values = dict(status=PENDING, next_attempt_at=now + timedelta(seconds=retry_s[claim.attempt - 1]))
    else:
        values = dict(status=FAILED, next_attempt_at=None)
    ours = ((WebhookDelivery.id == claim.delivery_id) & (WebhookDelivery.status == PENDING)
            & (WebhookDelivery.attempts == claim.attempt))
    moved = session.execute(update(WebhookDelivery).where(ours).values(
        response_status=outcome.response_status, error=outcome.error and outcome.error[:ERROR_CHARS],
        response_excerpt=outcome.response_excerpt and outcome.response_excerpt[:EXCERPT_CHARS], **values)).rowcount
    return values["status"] if moved else None
