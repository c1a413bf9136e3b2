"""Dependencies as ``Annotated`` aliases (anchor: full-stack-fastapi-template ``api/deps.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from app.core.config import Settings, get_settings
from app.core.db import get_session
from app.core.errors import Unavailable
from app.db.models import ApiKey
from app.serving.holder import ModelHolder, UpdateListener
from app.services.access import keys as key_service

SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


# Declares the scheme in OpenAPI (the Authorize button in /docs, ``security`` on each protected
# operation). auto_error=False: a missing or malformed header still gets authenticate's own
# problem+json 401, not FastAPI's plain error, so the header is read as it came.
bearer = HTTPBearer(scheme_name="bearerAuth", auto_error=False,
                    description="An API key, sent as `Authorization: Bearer lethe_...`.")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the API key's id, name and scopes. The API's own type, so that routes type
    their auth dependency without reaching for the key table."""

    id: str
    name: str
    scopes: tuple[str, ...]  # in the order they were granted
    created_at: datetime

    @classmethod
    def of(cls, key: ApiKey) -> Principal:
        return cls(id=key.id, name=key.name, scopes=tuple(key.scopes.split()), created_at=key.created_at)


def _current_key(request: Request,
                 _declared: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None) -> Principal:
    # Own short session, closed before the handler runs (predict holds no DB connection), unless the
    # serving replica's key cache has the key: a revoke or rotate answers only once every replica
    # dropped it (or the cache TTL ran out), so no replica accepts a revoked key after that.
    listener = request.app.state.listener
    return Principal.of(key_service.authenticate(authorization=request.headers.get("authorization"),
                                                 cache=listener.keys if listener is not None else None))


CurrentKey = Annotated[Principal, Depends(_current_key)]


def require(scope: str) -> Callable[[Principal], Principal]:
    def _check(key: CurrentKey) -> Principal:
        key_service.require_scope(key.scopes, scope)
        return key

    return _check


def _holder(request: Request) -> ModelHolder:
    return request.app.state.holder


def _listener(request: Request) -> UpdateListener:
    listener = request.app.state.listener
    if listener is None:
        raise Unavailable("Model serving is not running in this process.", code="serving_disabled")
    return listener


HolderDep = Annotated[ModelHolder, Depends(_holder)]
ListenerDep = Annotated[UpdateListener, Depends(_listener)]
