"""The report: targets, markdown and the reading of the numbers."""

from __future__ import annotations

import json
import os
import time

from .config import TARGETS


def busy_processes(limit: int = 5) -> list[str]:
    """The processes using the most CPU right now (over one second), to show the machine was quiet."""
    import psutil

    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    rows = []
    for p in procs:
        try:
            rows.append((p.cpu_percent(None), p.info["pid"], " ".join(p.info["cmdline"] or [p.info["name"]])[:100]))
        except psutil.Error:
            pass
    rows.sort(reverse=True)
    return [f"{cpu:.0f}% pid {pid}: {cmd}" for cpu, pid, cmd in rows[:limit] if cpu >= 1.0]


def targets(endpoints: dict, overhead: dict | None) -> dict:
    out = {}

    def check(name: str, value: float | None, limit: float) -> None:
        out[name] = {"value": value, "target": f"<= {limit:g}", "met": value is not None and value <= limit}

    if "post_jobs" in endpoints:
        check("post_p99_ms", endpoints["post_jobs"]["latency_ms"].get("p99"), TARGETS["post_p99_ms"])
        check("get_p99_ms", endpoints["get_job"]["latency_ms"].get("p99"), TARGETS["get_p99_ms"])
    lists = [endpoints[k]["latency_ms"].get("p99") for k in ("list_first_page", "list_deep_page",
                                                             "list_status_failed") if k in endpoints]
    if lists:
        check("list_p99_ms", max(v for v in lists if v is not None), TARGETS["list_p99_ms"])
    if overhead:
        check("overhead_pct_vs_process", overhead["overhead_pct_vs_process"], TARGETS["overhead_pct"])
        check("overhead_pct_vs_engine_call", overhead["overhead_pct_vs_engine_call"], TARGETS["overhead_pct"])
    return out


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# The API under load (loopback, PostgreSQL) and the service's overhead on a job",
        "",
        f"Command: `{data['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}; "
        f"{data['setup']['server']}; PostgreSQL {data['setup']['postgres']}, Redis {data['setup']['redis']}  ",
        f"Run: {data['started']}, {data['wall_s']:.0f} s; load average at start {data['load_average']['start']}, "
        f"at end {data['load_average']['end']}; profiler: {data['setup'].get('profiler') or 'none (py-spy not on PATH)'}  ",
        "",
        "## Latency (ms from the scheduled send time; open loop)",
        "",
        "| endpoint | rate req/s (achieved) | ok / sent | errors | p50 | p90 | p99 | max | unloaded p50 | "
        "server CPU % of a core (ms/req) | postgres % | client % | other % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"post_jobs": "POST /v1/jobs", "get_job": "GET /v1/jobs/{id}",
             "list_first_page": "GET /v1/jobs?limit=100 (first page)",
             "list_deep_page": "GET /v1/jobs?limit=100&after= (deep cursor)",
             "list_status_failed": "GET /v1/jobs?status=failed&limit=100"}
    for key, name in names.items():
        r = data["endpoints"].get(key)
        if not r:
            continue
        lat, cpu = r["latency_ms"], r["cpu"]
        lines.append(
            f"| {name} | {r['target_rate']:g} ({r['achieved_rate']:g}) | {r['ok']} / {r['requests']} | "
            f"{r['errors']} | {lat.get('p50')} | {lat.get('p90')} | {lat.get('p99')} | {lat.get('max')} | "
            f"{r['unloaded_ms'].get('p50')} | {cpu.get('server_pct')} ({cpu.get('server_ms_per_request')}) | "
            f"{cpu.get('postgres_pct')} | {cpu.get('client_pct')} | {cpu.get('other_pct')} |")
    for key in ("post_jobs", "get_job"):
        for r in data["endpoints"].get(key, {}).get("other_rates", []):
            lat, cpu = r["latency_ms"], r["cpu"]
            lines.append(
                f"| {names[key]} | {r['target_rate']:g} ({r['achieved_rate']:g}) | {r['ok']} / {r['requests']} | "
                f"{r['errors']} | {lat.get('p50')} | {lat.get('p90')} | {lat.get('p99')} | {lat.get('max')} | | "
                f"{cpu.get('server_pct')} ({cpu.get('server_ms_per_request')}) | {cpu.get('postgres_pct')} | "
                f"{cpu.get('client_pct')} | {cpu.get('other_pct')} |")
    lines += ["", "p99 per 5 s window (a rising series is a queue that grows):", ""]
    for key, name in names.items():
        if key in data["endpoints"]:
            lines.append(f"- {name}: {data['endpoints'][key]['p99_ms_per_5s']}")
    if data["endpoints"].get("burst"):
        b = data["endpoints"]["burst"]
        lines += ["", f"Burst probe: {b['size']} GET /v1/jobs/{{id}} at the same instant: statuses {b['statuses']}, "
                      f"p50 {b['latency_ms'].get('p50')} ms, max {b['latency_ms'].get('max')} ms (see the notes)."]
    profiled = [(name, data["endpoints"][key]["server_profile"]) for key, name in names.items()
                if data["endpoints"].get(key, {}).get("server_profile")]
    if profiled:
        lines += ["", "## Where the server's CPU goes", "",
                  "py-spy on the API process (GIL-holding samples, 100 Hz) during a separate pass at the same rate "
                  "after each measured phase. Share of samples by package of the innermost frame (self time), "
                  "then the project's functions and a few library functions anywhere on the stack (inclusive).",
                  ""]
        for name, profile in profiled:
            lines.append(f"- {name}, {profile['samples']} samples")
            for part in ("by_package", "project", "notable"):
                lines.append(f"  - {part.replace('_', ' ')}: " + "; ".join(
                    f"{pct}% {fn}" for pct, fn in profile.get(part, [])))
    o = data.get("overhead")
    if o:
        lines += [
            "",
            "## Overhead on a job's wall time",
            "",
            f"The same search ({o['spec']['model']}, budget {o['spec']['budget']}, search "
            f"`{json.dumps(o['spec']['search'])}`, {o['spec']['data']}), {o['reps']} repetitions alternating "
            f"direct and service, {o['torch_threads']} torch thread(s) in both (same environment). "
            f"Service = POST sent to the first poll (every {o['poll_s']} s) that reads succeeded, through "
            "`peftsearch serve` + `peftsearch worker` (Celery on Redis).",
            "",
            "| | mean s | std s |",
            "|---|---|---|",
            f"| direct, fresh process (spawn, imports, `pruning.search`) | {o['direct_process_s']['mean']:.2f} | "
            f"{o['direct_process_s']['std']:.2f} |",
            f"| direct, the `pruning.search` call alone | {o['direct_engine_s']['mean']:.2f} | "
            f"{o['direct_engine_s']['std']:.2f} |",
            f"| service (POST to succeeded) | {o['service_s']['mean']:.2f} | {o['service_s']['std']:.2f} |",
            "",
            f"Overhead: **{o['overhead_pct_vs_process']:+.2f} %** against the fresh process, "
            f"**{o['overhead_pct_vs_engine_call']:+.2f} %** against the bare call "
            f"(the direct process spends {o['direct_import_s']:.2f} s starting Python and importing torch).",
            "",
            "Where the service's time goes (mean s): " + ", ".join(
                f"{k.replace('_', ' ')} {v:.3f}" for k, v in o["service_breakdown_s"].items()),
            "",
            "| rep | mode | wall s | engine s | search s | retrain s | dev metric |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in o["runs"]:
            wall = r["wall_s"] if r["mode"] == "service" else r["process_s"]
            engine = r.get("engine_s", r.get("breakdown_s", {}).get("engine"))
            lines.append(f"| {r['rep']} | {r['mode']} | {wall:.2f} | {engine:.2f} | {r['search_wall_s']:.2f} | "
                         f"{r['retrain_wall_s']:.2f} | {r['metric']:.4f} |")
    lines += ["", "## Reading", ""] + [f"- {line}" for line in reading(data)]
    lines += ["", "## Targets", ""]
    for name, t in data["targets"].items():
        lines.append(f"- {name}: {t['value']} (target {t['target']}) — {'met' if t['met'] else 'MISSED'}")
    s = data["setup"]
    lines += ["", "## Method", ""] + [f"- {note}" for note in data["notes"]]
    if s.get("seeded"):
        lines += ["", f"Seeded: {s['seeded']['owner_jobs']:,} jobs for the list owner ({s['seeded']['statuses']}), "
                      f"{s['seeded']['table_rows']:,} rows in `jobs` ({s['seeded']['table_size']}); "
                      f"a first page of 100 is {data['endpoints'].get('page_bytes', 0):,} bytes of JSON."]
    return "\n".join(lines) + "\n"


def reading(data: dict) -> list[str]:
    """What the numbers say, in sentences computed from them."""
    out = []
    names = {"post_jobs": "POST /v1/jobs", "get_job": "GET /v1/jobs/{id}", "list_first_page": "list, first page",
             "list_deep_page": "list, deep cursor", "list_status_failed": "list, status=failed"}
    for key, name in names.items():
        r = data["endpoints"].get(key)
        if not r or not r["latency_ms"]:
            continue
        lat, cpu = r["latency_ms"], r["cpu"]
        others = "; ".join(f"at {o['target_rate']:g}/s p50 {o['latency_ms'].get('p50')} ms, p99 "
                           f"{o['latency_ms'].get('p99')} ms" for o in r.get("other_rates", []))
        others = f" For comparison, {others}." if others else ""
        if r["achieved_rate"] < 0.95 * r["target_rate"]:
            out.append(
                f"{name}: saturated. The API answered {r['achieved_rate']:g} req/s of the {r['target_rate']:g} asked "
                f"({cpu.get('server_ms_per_request')} ms of API CPU per request) while the machine was "
                f"{cpu.get('machine_pct')}% busy of {100 * (os.cpu_count() or 1)}% (API processes "
                f"{cpu.get('server_pct')}%, load generator {cpu.get('client_pct')}%, PostgreSQL "
                f"{cpu.get('postgres_pct')}%), so the queue grew for the whole phase: p99 per 5 s "
                f"{r['p99_ms_per_5s']} ms.{others}")
        else:
            out.append(
                f"{name}: kept up ({r['achieved_rate']:g} req/s, API process at {cpu.get('server_pct')}% of a core, "
                f"{cpu.get('server_ms_per_request')} ms of CPU per request); p50 {lat['p50']} ms against "
                f"{r['unloaded_ms'].get('p50')} ms unloaded, p99 {lat['p99']} ms, max {lat['max']} ms; p99 per 5 s "
                f"{r['p99_ms_per_5s']} ms.{others}")
    b = data["endpoints"].get("burst")
    if b:
        ok = b["statuses"].get("200", 0)
        out.append(f"Burst: {ok} of {b['size']} simultaneous GETs answered 200 ({b['statuses']}); "
                   + f"p50 {b['latency_ms'].get('p50')} ms, max {b['latency_ms'].get('max')} ms (see Method).")
    o = data.get("overhead")
    if o:
        k = o["service_breakdown_s"]
        out.append(
            f"Overhead: the job took {o['service_s']['mean']:.2f} s through the service against "
            f"{o['direct_process_s']['mean']:.2f} s for a fresh process calling the engine "
            f"({o['overhead_pct_vs_process']:+.2f} %) and {o['direct_engine_s']['mean']:.2f} s for the call alone "
            f"({o['overhead_pct_vs_engine_call']:+.2f} %). In the worker the engine ran {k['engine']:.2f} s with its "
            f"progress, event, round and checkpoint writes; before it, the job's fresh Celery child imported torch "
            f"and the engine for {k['claimed_to_engine']:.2f} s (the direct process spends {o['direct_import_s']:.2f} s "
            f"starting and importing); submit to claim {k['created_to_claimed']:.3f} s, archive and final write "
            f"{k['done_to_finished']:.3f} s, the client's poll {k['finished_to_seen']:.3f} s.")
    return out


NOTES = [
    "The API is `peftsearch serve` with the compose `api` service's arguments (its uvicorn processes, FastAPI's "
    "sync routes on each one's thread pool, the reaper thread, INFO access logs), with DATABASE_URL "
    "on a throwaway PostgreSQL database migrated by Alembic and BROKER_URL on the local Redis (a dedicated DB "
    "number and queue). So POST /v1/jobs does all of its production work: authenticate, idempotency lookup, "
    "dataset lookup, SearchSpec validation, insert job + event, commit, publish to Redis, stamp enqueued_at, "
    "commit. No worker consumes the queue during the load phases; it is deleted before the worker starts.",
    "Load: one asyncio + httpx process (this one), separate from the server, up to 64 keep-alive connections. "
    "Requests are scheduled on a clock at the target rate whatever the responses do (open loop); latency is "
    "from the scheduled send time, so a stalled server, a request waiting for a free connection and a late "
    "client all show. Percentiles cover every request: an error at the time it failed, a request unanswered "
    "35 s after the last send at that time (a lower bound); `latency_ok_ms` in the JSON has the successes only. "
    "Each phase has a warm-up whose samples are dropped; `send_lag_ms` is how late the client started requests.",
    "CPU columns: share of one core during the phase, per process group (/proc via psutil); `other` is the rest "
    "of the machine's busy time (other users of the 2 cores); `unloaded p50` is 50 requests one at a time.",
    "List: the jobs are seeded for a second owner so that its list holds exactly the seeded jobs; the deep "
    "cursor is one of 64 ids drawn from the older half of that owner's jobs.",
    "Overhead: direct = `pruning.search` in a fresh Python process with the worker's environment (no "
    "checkpoint dir, no callbacks); service = a real Celery worker (prefork, one task per child, as deployed) "
    "whose child imports torch per job, writes progress (at most 1/s), events, rounds, per-round checkpoints, "
    "packs the archive; all of that is the service's overhead by design. Torch threads are set by "
    "OMP_NUM_THREADS for both, to the same value.",
    "Burst probe: many GETs at one instant (clients that poll in step, a retry storm). A request holds a pooled "
    "database connection only while it queries (routes open their session themselves; a key's owner comes from "
    "an in-process cache), and at most PEFTSEARCH_MAX_CONCURRENCY requests per API process are inside the "
    "application at once; the others wait in the event loop and get a 503 `overloaded` after "
    "PEFTSEARCH_ADMISSION_WAIT_S. (With the session injected as a dependency, an earlier version stalled every "
    "thread on the pool's checkout for 30 s in this probe: 160 timeouts and 40 500s of 200.)",
]
