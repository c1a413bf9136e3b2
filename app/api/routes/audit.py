"""Operator audit API: query the hash-chained log and verify it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from app.api.deps import Principal, SessionDep, SettingsDep, require
from app.api.schemas.audit import AuditPage, ChainReport
from app.core import db
from app.core.errors import Unprocessable
from app.core.security import subject_key
from app.core.signing import get_keys
from app.db.models import as_utc
from app.services import audit

router = APIRouter(prefix="/v1/audit", tags=["audit"])
Auditor = Annotated[Principal, Depends(require("audit:read"))]


@router.get("/events", response_model=AuditPage)
def list_events(session: SessionDep, settings: SettingsDep, _: Auditor, request_id: str | None = None,
                subject_id: str | None = None, type: str | None = None, actor: str | None = None,
                since: datetime | None = None, until: datetime | None = None, cursor: str | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """Events in chain order; ``cursor`` is the last seq of the previous page."""
    if cursor is not None and not cursor.isdigit():
        raise Unprocessable("cursor must be the next_cursor value of a previous page.", code="bad_cursor")
    key = subject_key(settings.subject_key_secret, subject_id) if subject_id else None
    audit.sync(session)  # chain what is pending so the reader sees every committed event
    rows = audit.list_events(session, request_id=request_id, subject_key=key, type=type, actor=actor,
                             since=as_utc(since), until=as_utc(until), after_seq=int(cursor or 0), limit=limit)
    return {"items": [audit.public_view(e) for e in rows],
            "next_cursor": str(rows[-1].seq) if len(rows) == limit else None}


@router.get("/verify", response_model=ChainReport, response_model_exclude_unset=True)
def verify_chain(session: SessionDep, settings: SettingsDep, _: Auditor) -> dict[str, Any]:
    """Recompute the hash chain and compare it with the latest signed checkpoint (head, truncation)."""
    audit.sync(session)
    return audit.verify_against_checkpoint(session, path=audit.checkpoint_path(settings),
                                           public_key_pem=get_keys(settings).ed25519_public_pem)


EXPORT_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv"}
EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The events, one per line (``format`` picks the type).",
          "content": {media: {"schema": {"type": "string"}} for media in EXPORT_TYPES.values()}},
}


@router.get("/export", response_class=StreamingResponse, responses=EXPORT_RESPONSES)
def export_events(settings: SettingsDep, _: Auditor, format: Annotated[str, Query(pattern="^(jsonl|csv)$")] = "jsonl",
                  request_id: str | None = None, subject_id: str | None = None, type: str | None = None,
                  actor: str | None = None, since: datetime | None = None,
                  until: datetime | None = None) -> StreamingResponse:
    """Stream the (filtered) log as JSON lines or CSV, in chain order."""
    key = subject_key(settings.subject_key_secret, subject_id) if subject_id else None
    with db.new_session() as session:
        audit.sync(session)
    lines = audit.export(lambda: db.new_session(), format=format, request_id=request_id, subject_key=key,
                         type=type, actor=actor, since=as_utc(since), until=as_utc(until))
    return StreamingResponse(lines, media_type=EXPORT_TYPES[format],
                             headers={"Content-Disposition": f'attachment; filename="lethe-audit.{format}"'})
