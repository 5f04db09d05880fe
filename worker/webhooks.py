"""Send due webhook deliveries (store/webhooks.py): a thread of every `peftsearch serve`, beside the reaper, in the
embedded and the deployed shape alike. A job's end only adds rows; this loop does the waiting on receivers.

Each pass claims up to BATCH due deliveries (committed before anything is sent, so no other sender takes them),
POSTs them at once, each cut off after webhook_timeout_s whatever the receiver does (asyncio.wait_for around
the whole exchange, not httpx's per-read timeouts), reads at most the answer's first EXCERPT_CHARS, and records
each outcome: delivered on a 2xx, else due again after the next wait of webhook_retry_s, or failed.

A delivery is one POST: the body {"id", "type", "created_at", "data": {"job": <GET /v1/jobs/{id}>}} (the same on
every attempt: the job has ended) with Standard Webhooks' headers webhook-id (the delivery id), webhook-timestamp
(this attempt's, in Unix seconds) and webhook-signature.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import httpx

from api.schemas import JobOut
from store import jobs, webhooks
from store.db import session_factory
from store.models import utcnow
from store.settings import Settings
from store.webhooks import EXCERPT_CHARS, Claim, Outcome

log = logging.getLogger("peftsearch.webhooks")
BATCH = 16  # deliveries claimed and sent at once by one pass
LEASE_MARGIN_S = 30.0  # beyond the timeout, before an unrecorded attempt may be taken over by another sender
USER_AGENT = "peftsearch-webhooks/0.1"


def deliver_once(settings: Settings) -> int:
    """One pass: claim, send and record up to BATCH due deliveries; returns how many were claimed."""
    sessions = session_factory(settings.db_url)
    now = utcnow()
    with sessions.begin() as session:
        claims = webhooks.claim_due(session, now=now, lease_s=settings.webhook_timeout_s + LEASE_MARGIN_S,
                                    limit=BATCH)
        messages = [(claim, body(claim, JobOut.of(jobs.get_job(session, claim.owner, claim.job_id))))
                    for claim in claims]
    if not claims:
        return 0
    outcomes = asyncio.run(post_all(messages, settings.webhook_timeout_s))
    with sessions.begin() as session:
        for claim, outcome in zip(claims, outcomes, strict=True):
            status = webhooks.record_outcome(session, claim, outcome, now=utcnow(), retry_s=settings.webhook_retry_s)
            log.info("delivery %s (%s of %s) attempt %d to %s: %s%s", claim.delivery_id, claim.event_type,
                     claim.job_id, claim.attempt, claim.url, outcome.error or outcome.response_status,
                     f", now {status}" if status else ", taken over meanwhile")
    return len(claims)


def deliver_forever(settings: Settings, stop: threading.Event) -> None:
    while not stop.wait(settings.webhook_poll_s):
        try:
            while not stop.is_set() and deliver_once(settings) == BATCH:  # a full batch: more may be due
                pass
        except Exception:  # a database hiccup must not end the loop; the deliveries stay due
            log.exception("webhook pass failed")


def body(claim: Claim, job: JobOut) -> bytes:
    payload = {"id": claim.delivery_id, "type": claim.event_type, "created_at": claim.created_at.isoformat(),
               "data": {"job": job.model_dump(mode="json")}}
    return json.dumps(payload, separators=(",", ":")).encode()


async def post_all(messages: list[tuple[Claim, bytes]], timeout_s: float) -> list[Outcome]:
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False,
                                 headers={"User-Agent": USER_AGENT}) as client:
        return await asyncio.gather(*(post(client, claim, content, timeout_s) for claim, content in messages))


async def post(client: httpx.AsyncClient, claim: Claim, content: bytes, timeout_s: float) -> Outcome:
    """One attempt; whatever goes wrong fails this attempt only."""
    try:
        return await asyncio.wait_for(exchange(client, claim, content), timeout_s)
    except asyncio.TimeoutError:
        return Outcome(error=f"no whole answer within {timeout_s:g} s")
    except Exception as e:  # refused, reset, TLS, a malformed answer: the receiver's side
        return Outcome(error=f"{type(e).__name__}: {e}".rstrip(": "))


async def exchange(client: httpx.AsyncClient, claim: Claim, content: bytes) -> Outcome:
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "webhook-id": claim.delivery_id,
               "webhook-timestamp": str(timestamp),
               "webhook-signature": webhooks.signature(claim.secret, claim.delivery_id, timestamp, content)}
    async with client.stream("POST", claim.url, content=content, headers=headers) as response:
        start = b""
        async for chunk in response.aiter_bytes():
            start += chunk
            if len(start) >= EXCERPT_CHARS:
                break
    excerpt = start.decode(errors="replace")[:EXCERPT_CHARS] or None
    error = None if 200 <= response.status_code < 300 else f"answered {response.status_code}"
    return Outcome(response_status=response.status_code, response_excerpt=excerpt, error=error)
