"""API keys: random bearer tokens with scopes, stored as SHA-256 digests."""

from __future__ import annotations

import threading
import time

from sqlmodel import Session, select

from app.core.errors import BadRequest, Forbidden, Unauthorized
from app.core import db
from app.core.security import SCOPES, hash_api_key, new_api_key
from app.db.models import ApiKey


def create_key(session: Session, *, name: str, scopes: list[str], key: str | None = None) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the clear key (shown once)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise BadRequest(f"Unknown or empty scopes: {unknown or '[]'}; known: {list(SCOPES)}.", code="bad_scopes")
    clear = key or new_api_key()
    row = ApiKey(name=name, key_hash=hash_api_key(clear), scopes=" ".join(sorted(set(scopes))))
    session.add(row)
    session.flush()
    return row, clear


def ensure_key(session: Session, *, name: str, scopes: list[str], key: str) -> ApiKey:
    """Idempotently register a known clear key (bootstrap admin key)."""
    row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_api_key(key))).first()
    return row or create_key(session, name=name, scopes=scopes, key=key)[0]


def authenticate(session: Session, *, authorization: str | None) -> ApiKey:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("Send an API key as 'Authorization: Bearer <key>'.", code="missing_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
    row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_api_key(authorization[7:].strip()))).first()
    if row is None or row.revoked:
        raise Unauthorized("Unknown or revoked API key.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
    return row


def require_scope(key: ApiKey, scope: str) -> None:
    granted = set(key.scopes.split())
    if scope not in granted and "admin" not in granted:
        raise Forbidden(f"This API key lacks the '{scope}' scope.", code="insufficient_scope")


_CACHE_TTL_S = 10.0  # a revoked key stops working within this long
_cache: dict[str, tuple[float, ApiKey]] = {}
_cache_lock = threading.Lock()


def authenticate_cached(*, authorization: str | None) -> ApiKey:
    """``authenticate`` with its own short-lived session and a per-process TTL cache."""
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(authorization or "")
    if hit and hit[0] > now:
        return hit[1]
    with db.session_scope() as session:
        key = authenticate(session, authorization=authorization)
        session.expunge(key)
    with _cache_lock:
        _cache[authorization or ""] = (now + _CACHE_TTL_S, key)
    return key


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
