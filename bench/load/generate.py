"""Open-loop load generation (latency from each request's scheduled send: no coordinated omission) and its
summaries."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field


@dataclass
class Sample:
    due: float  # scheduled send time (loop clock)
    sent: float  # when the request actually started
    done: float
    status: int | str  # HTTP status, or the exception's name


@dataclass
class Request:
    method: str
    url: str
    headers: dict = field(default_factory=dict)
    content: bytes | None = None
    params: dict | None = None


CONNECTIONS = 64  # the client's connections: requests beyond these wait (on the clock) for a free one
GRACE_S = 35.0  # after the last scheduled send, how long the phase waits for answers (the pool's timeout is 30 s)


async def open_loop(client, make, rate: float, warmup_s: float, duration_s: float, on_response=None,
                    answered: list[int] | None = None) -> list[Sample]:
    """Send make(i) at t0 + i/rate for warmup_s + duration_s, whatever the responses do (an open loop); return the
    samples scheduled after the warm-up. Latency counts from the due time, so a request that waits for one of the
    CONNECTIONS (the server is slow to answer) or that the client starts late is charged for it. Requests still
    unanswered GRACE_S after the last due time are cancelled and recorded as 'unfinished' at that time. `answered`
    (a one-item list) counts every response, warm-up included."""
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    start = loop.time() + 0.05
    measured_from = start + warmup_s
    slots = asyncio.Semaphore(CONNECTIONS)  # our own queue: httpcore's is quadratic in waiting requests

    async def fire(i: int, due: float) -> None:
        request = make(i)
        sent = loop.time()
        try:
            async with slots:
                sent = loop.time()
                response = await client.request(request.method, request.url, headers=request.headers,
                                                content=request.content, params=request.params)
            status: int | str = response.status_code
            if answered is not None:
                answered[0] += 1
            if on_response is not None:
                on_response(response)
        except asyncio.CancelledError:
            status = "unfinished"
        except Exception as e:  # a timeout or a refused connection is an error sample, not a crash
            status = type(e).__name__
        if due >= measured_from:
            samples.append(Sample(due, sent, loop.time(), status))

    tasks = []
    for i in range(round(rate * (warmup_s + duration_s))):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(i, due)))
    _, pending = await asyncio.wait(tasks, timeout=GRACE_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return samples


async def sequential(client, make, count: int, gap_s: float = 0.02) -> list[float]:
    """Latency of `count` requests sent one at a time on an otherwise idle server (ms; failures left out)."""
    out = []
    for i in range(count):
        request = make(i)
        t = time.perf_counter()
        try:
            response = await client.request(request.method, request.url, headers=request.headers,
                                            content=request.content, params=request.params)
            if response.status_code < 400:
                out.append((time.perf_counter() - t) * 1000)
        except Exception:
            pass
        await asyncio.sleep(gap_s)
    return out


async def settle(client, timeout_s: float = 150.0) -> float:
    """Wait until the API answers an authenticated request within a second again (after an overload, requests
    stuck in the connection pool take up to its 30 s timeout to clear). Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if (await client.get("/v1/jobs", params={"limit": 1}, timeout=1.0)).status_code == 200:
                return round(time.monotonic() - start, 1)
        except Exception:
            pass
        await asyncio.sleep(1.0)
    raise SystemExit(f"the API did not recover within {timeout_s:.0f} s")


def percentiles(values_ms: list[float]) -> dict:
    if not values_ms:
        return {}
    xs = sorted(values_ms)

    def p(q: float) -> float:
        return round(xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))], 2)

    return {"p50": p(0.50), "p90": p(0.90), "p99": p(0.99), "max": round(xs[-1], 2),
            "mean": round(sum(xs) / len(xs), 2), "n": len(xs)}


def summarize(samples: list[Sample], rate: float, duration_s: float, ok: tuple[int, ...]) -> dict:
    good = [s for s in samples if s.status in ok]
    errors: dict[str, int] = {}
    for s in samples:
        if s.status not in ok:
            errors[str(s.status)] = errors.get(str(s.status), 0) + 1
    first = min(s.due for s in samples)
    last = max(s.done for s in samples)
    # every request counts: a failure at the time it failed, an unfinished one at the time it was given up
    latency = [(s.done - s.due) * 1000 for s in samples]
    # p99 per 5 s window of scheduled time: a queue that keeps growing shows as a rising series
    windows = []
    for w in range(math.ceil(duration_s / 5)):
        inside = [(s.done - s.due) * 1000 for s in samples if first + 5 * w <= s.due < first + 5 * (w + 1)]
        windows.append(percentiles(inside).get("p99"))
    return {
        "target_rate": rate, "duration_s": duration_s, "requests": len(samples), "ok": len(good),
        "errors": sum(errors.values()), "error_kinds": errors,
        "achieved_rate": round(len(good) / max(last - first, 1e-9), 1),
        "latency_ms": percentiles(latency),
        "latency_ok_ms": percentiles([(s.done - s.due) * 1000 for s in good]),
        "send_lag_ms": percentiles([(s.sent - s.due) * 1000 for s in samples]),
        "p99_ms_per_5s": windows,
    }
