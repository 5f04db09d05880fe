"""Small helpers the engine tests share."""

from __future__ import annotations


def stop_after(calls: int):
    """A `should_stop` for the engine that says stop from its (calls + 1)-th poll on (it polls once a step)."""
    count = {"n": 0}

    def should_stop() -> bool:
        count["n"] += 1
        return count["n"] > calls

    return should_stop
