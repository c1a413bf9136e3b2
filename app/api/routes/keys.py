"""API keys (admin): create, list, revoke and rotate keys with scopes; a clear key is shown once."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends

from app.api.deps import CurrentKey, Principal, SessionDep, SettingsDep, require
from app.api.schemas import KeyCreate
from app.api.schemas.keys import KeyList, KeyPublic, KeySecret
from app.services.access import keys

router = APIRouter(prefix="/v1/keys", tags=["keys"])
Admin = Annotated[Principal, Depends(require("admin"))]


@router.post("", status_code=201)
def create_key(body: KeyCreate, session: SessionDep, _: Admin) -> KeySecret:
    """Create an API key; store the returned key, it is not shown again."""
    row, clear = keys.create_key(session, name=body.name, scopes=body.scopes)
    session.commit()
    return KeySecret(id=row.id, name=row.name, scopes=row.scopes.split(), key=clear)


@router.get("/me")
def current_key(key: CurrentKey) -> KeyPublic:
    """The key this request carries: name and scopes (any valid key; how the console logs in)."""
    return KeyPublic(id=key.id, name=key.name, scopes=list(key.scopes), created_at=key.created_at, revoked=False)


@router.get("")
def list_keys(session: SessionDep, _: Admin) -> KeyList:
    """Every API key (revoked ones included), oldest first; never a secret."""
    return KeyList(items=[KeyPublic(**keys.public_view(row)) for row in keys.list_keys(session)])


@router.delete("/{key_id}")
def revoke_key(key_id: str, session: SessionDep, settings: SettingsDep, key: Admin) -> KeyPublic:
    """Revoke a key: once this answers, every replica refuses it (409 for the last admin key)."""
    row = keys.revoke_key(session, key_id=key_id, actor=f"key:{key.name}")
    view = KeyPublic(**keys.public_view(row))
    session.commit()
    keys.await_dropped(session, key_id=key_id, settings=settings, committed_at=time.monotonic())
    return view


@router.post("/{key_id}/rotate")
def rotate_key(key_id: str, session: SessionDep, settings: SettingsDep, key: Admin) -> KeySecret:
    """Give a key a new secret (same id and scopes); once this answers, the old secret is refused everywhere."""
    row, clear = keys.rotate_key(session, key_id=key_id, actor=f"key:{key.name}")
    view = KeySecret(id=row.id, name=row.name, scopes=row.scopes.split(), key=clear)
    session.commit()
    keys.await_dropped(session, key_id=key_id, settings=settings, committed_at=time.monotonic())
    return view
