"""Where the server's CPU goes: py-spy samples during a load pass."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from pathlib import Path

PROJECT = ("api/routes/jobs.py", "api/deps.py", "api/schemas.py", "api/errors.py", "api/routes/meta.py", "store/",
           "worker/", "pruning/")
# Library functions worth naming when they show up (inclusive share): each is a cost a fix could remove.
NOTABLE = ("get_type_hints (typing.py)", "_LazyLoader._emit_lazyload", "_SelectInLoader._load_for_path",
           "_JsonLoader.load", "Celery.send_task", "Queue.put (queue.py)", "Handler.handle (logging",
           "BaseModel.__init__", "SQLCompiler.__init__", "_query2pg_nocache")


async def profile_server(py_spy: str, pid: int, seconds: int, load) -> dict:
    """Sample the server with py-spy (GIL holders only: where its CPU goes) while the coroutine `load` drives it.
    Returns the share of samples per package of the innermost frame, the project's functions and a few notable
    library functions by inclusive share (the function is anywhere on the stack)."""
    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as f:
        out = Path(f.name)
    spy = subprocess.Popen([py_spy, "record", "--subprocesses", "-p", str(pid), "-r", "100", "-f", "raw", "-o",
                            str(out), "-d", str(seconds), "--nonblocking", "--gil"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(0.3)
    await load
    while spy.poll() is None:
        await asyncio.sleep(0.1)
    total, inclusive, leaf = 0, {}, {}
    for line in (out.read_text().splitlines() if out.exists() else []):
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), []
        total += n
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            frames.append((name, where.split(":")[0]))
        if frames:
            path = frames[-1][1]
            package = "import machinery" if path.startswith("<frozen") else path.split("/")[0].removesuffix(".py")
            leaf[package] = leaf.get(package, 0) + n
        for function in {f"{name} ({path})" for name, path in frames}:
            inclusive[function] = inclusive.get(function, 0) + n
    out.unlink(missing_ok=True)
    if not total:
        return {"seconds": seconds, "samples": 0}

    def share(items, limit):
        return [[round(100 * n / total, 1), name] for name, n in sorted(items, key=lambda kv: -kv[1])[:limit]]

    return {"seconds": seconds, "samples": total,
            "by_package": share(leaf.items(), 12),
            "project": share([(k, v) for k, v in inclusive.items() if k.split(" (")[1].startswith(PROJECT)], 12),
            "notable": share([(k, v) for k, v in inclusive.items() if any(m in k for m in NOTABLE)], 10)}
