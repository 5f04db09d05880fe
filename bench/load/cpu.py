"""CPU accounting of the server's and the load generator's processes."""

from __future__ import annotations

import os
import time


class CpuMeter:
    """CPU seconds spent during a phase by the API server, PostgreSQL, Redis, this process (the load generator),
    the worker, and everything else on the machine (other users of the cores)."""

    def __init__(self, server_pid: int, worker_pid: int | None = None):
        self.server_pid, self.worker_pid = server_pid, worker_pid

    def _group(self, proc) -> str:
        pid = proc.info["pid"]
        if pid == self.server_pid or self.server_pid in _ancestors(proc):  # with its API worker processes
            return "server"
        if pid == os.getpid():
            return "client"
        name = proc.info["name"] or ""
        if name.startswith("postgres"):
            return "postgres"
        if name.startswith("redis-server"):
            return "redis"
        if self.worker_pid and (pid == self.worker_pid or self.worker_pid in _ancestors(proc)):
            return "worker"
        return "other"

    def snapshot(self) -> tuple[float, float, dict[int, tuple[str, float]]]:
        import psutil

        procs = {}
        for proc in psutil.process_iter(["pid", "name", "cpu_times"]):
            times = proc.info["cpu_times"]
            if times is not None:
                procs[proc.info["pid"]] = (self._group(proc), times.user + times.system)
        total = psutil.cpu_times()
        busy = total.user + total.system + total.nice + getattr(total, "irq", 0) + getattr(total, "softirq", 0)
        return time.monotonic(), busy, procs

    @staticmethod
    def usage(before, after, requests: int | None = None) -> dict:
        """Percent of one core per group over the interval (and the server's CPU ms per request)."""
        wall = after[0] - before[0]
        groups: dict[str, float] = {}
        for pid, (group, cpu) in after[2].items():
            groups[group] = groups.get(group, 0.0) + cpu - before[2].get(pid, (group, 0.0))[1]
        named = sum(v for k, v in groups.items() if k != "other")
        groups["other"] = max(0.0, (after[1] - before[1]) - named)  # includes processes that came and went
        out = {f"{k}_pct": round(100 * v / wall, 1) for k, v in sorted(groups.items())}
        out["machine_pct"] = round(100 * (after[1] - before[1]) / wall, 1)
        if requests:
            out["server_ms_per_request"] = round(1000 * groups.get("server", 0.0) / requests, 2)
        return out


def _ancestors(proc) -> list[int]:
    try:
        return [p.pid for p in proc.parents()]
    except Exception:
        return []
