"""API keys: random bearer tokens with scopes, stored as SHA-256 digests.

A key is looked up in the database (one indexed SELECT on a unique column, in its own short
session: the predict path holds no connection while it runs the model), or, on a serving replica,
in that replica's short-lived cache (``keycache``). Revoking or rotating a key answers only once
no replica can accept the old secret any more: every live replica confirmed over Redis that it
dropped the key, or the cache TTL ran out (``keycache.await_dropped``).
"""

from __future__ import annotations

import time

from sqlmodel import Session, col, select

from app.core.config import Settings
from app.core.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from app.core import db
from app.services import audit
from app.core.security import SCOPES, hash_api_key, new_api_key
from app.db.models import ApiKey
from app.services.access import keycache
from app.services.models import catalog as model_service
from app.services.access.keycache import KeyCache


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


def lookup(session: Session, *, authorization: str | None) -> ApiKey:
    """The live key an ``Authorization: Bearer`` header carries, read in ``session``; 401 otherwise."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("Send an API key as 'Authorization: Bearer <key>'.", code="missing_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
    row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_api_key(authorization[7:].strip()))).first()
    if row is None or row.revoked:
        raise Unauthorized("Unknown or revoked API key.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
    return row


def require_scope(granted: tuple[str, ...], scope: str) -> None:
    if scope not in granted and "admin" not in granted:
        raise Forbidden(f"This API key lacks the '{scope}' scope.", code="insufficient_scope")


def authenticate(*, authorization: str | None, cache: KeyCache | None = None) -> ApiKey:
    """The key a request carries: from ``cache`` (a serving replica's) when it holds it, else looked
    up in a short session of its own (and put in ``cache``)."""
    digest = _digest(authorization)
    if cache is not None and digest is not None and (hit := cache.get(digest)) is not None:
        return hit
    # Both read before the lookup: see KeyCache.put.
    generation, looked_up_at = (cache.generation if cache is not None else 0), time.monotonic()
    with db.session_scope() as session:
        key = lookup(session, authorization=authorization)
        session.expunge(key)
    if cache is not None and digest is not None:
        cache.put(digest, key, generation=generation, looked_up_at=looked_up_at)
    return key


def _digest(authorization: str | None) -> str | None:
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    return hash_api_key(authorization[7:].strip())


def public_view(row: ApiKey) -> dict[str, object]:
    return {"id": row.id, "name": row.name, "scopes": row.scopes.split(), "created_at": row.created_at,
            "revoked": row.revoked}


def list_keys(session: Session, *, include_revoked: bool = True) -> list[ApiKey]:
    """Every key, oldest first; never the secrets (only their digests are stored)."""
    query = select(ApiKey).order_by(col(ApiKey.created_at), col(ApiKey.id))
    if not include_revoked:
        query = query.where(col(ApiKey.revoked).is_(False))
    return list(session.exec(query).all())


def _live_key(session: Session, key_id: str) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound("No API key with this id.", code="key_not_found")
    if row.revoked:
        raise Conflict("This API key is revoked.", code="key_revoked")
    return row


def revoke_key(session: Session, *, key_id: str, actor: str) -> ApiKey:
    """Revoke a key (refused at once everywhere); the last live admin key cannot be revoked."""
    row = _live_key(session, key_id)
    if "admin" in row.scopes.split():
        admins = [k for k in list_keys(session, include_revoked=False) if "admin" in k.scopes.split()]
        if len(admins) <= 1:
            raise Conflict("This is the last live admin key; create another admin key first.",
                           code="last_admin_key")
    row.revoked = True
    session.add(row)
    audit.append(session, type="api_key_revoked", actor=actor, payload={"key_id": row.id, "name": row.name})
    session.flush()
    return row


def rotate_key(session: Session, *, key_id: str, actor: str) -> tuple[ApiKey, str]:
    """Give a key a new secret (same id, name, scopes); the old secret is refused at once."""
    row = _live_key(session, key_id)
    clear = new_api_key()
    row.key_hash = hash_api_key(clear)
    session.add(row)
    audit.append(session, type="api_key_rotated", actor=actor, payload={"key_id": row.id, "name": row.name})
    session.flush()
    return row, clear


def await_dropped(session: Session, *, key_id: str, settings: Settings, committed_at: float) -> bool:
    """After a revoke or rotate committed (``committed_at``, monotonic): return once no replica can
    accept the key's old secret (True: every live replica acked over Redis; False: the TTL ran out)."""
    live = [r.replica_id for r in model_service.live_replicas(session, name=model_service.ANY_MODEL,
                                                                  ttl_s=settings.replica_ttl_s)]
    return keycache.await_dropped(key_id=key_id, redis_url=settings.redis_url, live=live,
                                  ttl_s=settings.key_cache_ttl_s, committed_at=committed_at)
