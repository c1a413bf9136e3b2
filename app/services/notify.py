"""Status-change hook: every change of an erasure request's status goes through here.

Called inside the transaction that changes the status, so a notification (callback
outbox row) commits or rolls back with the change itself; housekeeping delivers it.
"""

from __future__ import annotations

from sqlmodel import Session

from app.core.config import get_settings
from app.db.models import ErasureRequest, OpenDsrRequest
from app.services import callbacks, fides


def status_changed(session: Session, req: ErasureRequest) -> None:
    """Record that ``req`` reached ``req.status`` (callbacks are delivered from the outbox)."""
    base_url = get_settings().base_url
    if req.callback_url:
        callbacks.enqueue(session, kind="native", request_id=req.id, url=req.callback_url,
                          body=callbacks.native_body(req, base_url))
    if req.source == "opendsr" and req.external_id:
        row = session.get(OpenDsrRequest, req.external_id)
        if row is not None:
            status = callbacks.REQUEST_STATUS.get(req.status, "in_progress")
            done = status == "completed"
            callbacks.announce_opendsr(session, row, request_id=req.id, request_status=status, expected=req.due_at,
                                       results_url=callbacks.certificate_url(base_url, req.id) if done else None)
    fides.resume_if_done(session, req)
