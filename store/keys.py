"""API keys: random secrets shown once, stored as sha256 (they carry 256 bits, so a slow hash adds nothing)."""

from __future__ import annotations

import hashlib
import secrets

from cachetools import TTLCache
from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ApiKey, new_id, utcnow

KEY_PREFIX = "psk_"
# Per process, per time to live: key hash -> owner, for live keys only (a new key works at once). It spares each
# request a query. revoke_key drops the key here; other processes (the API's other workers) keep accepting it
# for up to the cache's time to live (Settings.key_cache_s).
_caches: dict[float, TTLCache] = {}
_MAX_CACHED = 10_000  # keys in use at once, beyond which the least recently used are forgotten


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


def owner_cache(ttl_s: float) -> TTLCache:
    """This process's cache of key owners that keeps each for ttl_s seconds (one per time to live)."""
    if ttl_s not in _caches:
        _caches[ttl_s] = TTLCache(maxsize=_MAX_CACHED, ttl=ttl_s)
    return _caches[ttl_s]


def owner_of(session: Session, key: str, cache: TTLCache | None = None) -> str | None:
    """The owner of a live key, or None for an unknown or revoked one; a live key's owner is remembered in
    `cache` (see cached_owner)."""
    key_hash = hash_key(key)
    owner = session.scalar(select(ApiKey.owner).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))
    if owner is not None and cache is not None:
        cache[key_hash] = owner
    return owner


def cached_owner(cache: TTLCache, key: str) -> str | None:
    """The owner owner_of found for this key within the cache's time to live, without a query; None: ask."""
    return cache.get(hash_key(key))


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    for cache in _caches.values():
        cache.pop(row.key_hash, None)
    return True
