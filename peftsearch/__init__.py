"""peftsearch: the command line that ties the engine (pruning/) and the service (api/, worker/, store/) together,
and the Python client of a server (`peftsearch.Client`, in peftsearch/client.py)."""

from __future__ import annotations

CLIENT_NAMES = ("Client", "Job", "PeftsearchError", "ErrorResponse", "Unreachable", "ChecksumMismatch",
                "InvalidWebhook", "verify_webhook")
__all__ = list(CLIENT_NAMES)


def __getattr__(name: str):
    # Imported on first use: `peftsearch keys` and `peftsearch search` start without httpx and pydantic.
    if name in CLIENT_NAMES:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'peftsearch' has no attribute {name!r}")
