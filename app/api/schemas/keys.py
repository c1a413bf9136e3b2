"""API keys: never a secret, except once in the answer of create and rotate."""

from __future__ import annotations

from datetime import datetime

from app.api.schemas._base import Out


class KeyPublic(Out):
    id: str
    name: str
    scopes: list[str]
    created_at: datetime
    revoked: bool


class KeyList(Out):
    items: list[KeyPublic]


class KeySecret(Out):
    """A key with its clear secret: returned once, by create and rotate."""

    id: str
    name: str
    scopes: list[str]
    key: str
