"""API keys: random secrets shown once, stored as sha256 (they carry 256 bits, so a slow hash adds nothing)."""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ApiKey, new_id, utcnow

KEY_PREFIX = "psk_"
# key hash -> (owner, when it was read), for live keys only (a new key works at once). It spares each request a
# query. revoke_key drops the key here; other processes (the API's other workers) keep accepting it for up to the
# max_age_s their callers pass to cached_owner (Settings.key_cache_s).
_owners: dict[str, tuple[str, float]] = {}
_MAX_CACHED = 10_000


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, owner: str, name: str = "") -> tuple[ApiKey, str]:
    """Returns the row and the key itself, which is not stored anywhere."""
    if not owner.strip():
        raise ValueError("owner must not be empty")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("key"), owner=owner.strip(), name=name, key_hash=hash_key(key), prefix=key[:12])
    session.add(row)
    session.flush()
    return row, key


def owner_of(session: Session, key: str) -> str | None:
    """The owner of a live key, or None for an unknown or revoked one. Remembers live keys for cached_owner."""
    key_hash = hash_key(key)
    owner = session.scalar(select(ApiKey.owner).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))
    if owner is not None:
        if len(_owners) >= _MAX_CACHED:  # many keys in use: start over rather than grow without bound
            _owners.clear()
        _owners[key_hash] = (owner, time.monotonic())
    return owner


def cached_owner(key: str, max_age_s: float) -> str | None:
    """The owner owner_of found for this key at most max_age_s ago, without a query; None: ask owner_of."""
    hit = _owners.get(hash_key(key))
    return hit[0] if hit is not None and time.monotonic() - hit[1] < max_age_s else None


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    _owners.pop(row.key_hash, None)
    return True
