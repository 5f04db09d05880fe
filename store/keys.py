"""API keys: random secrets shown once, stored as sha256 (they carry 256 bits, so a slow hash adds nothing)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ApiKey, new_id, utcnow

KEY_PREFIX = "psk_"


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
    """The owner of a live key, or None for an unknown or revoked one."""
    return session.scalar(select(ApiKey.owner).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True
