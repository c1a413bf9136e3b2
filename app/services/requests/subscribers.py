"""Who hears of an erasure request's transitions (``app/services/requests/lifecycle.py``).

Each subscriber runs inside the transaction of the transition, so a notification (a callback
outbox row) commits or rolls back with the change itself; housekeeping delivers it. Installed by
one explicit ``install_subscribers()`` where a process starts (the API's ``create_app``, the
worker's ``celery_app``); ``lifecycle`` never imports this module, and refuses to announce a
transition before they are installed, so a process that forgot cannot drop a callback silently.
"""

from __future__ import annotations

from sqlmodel import Session

from app.core.config import get_settings
from app.db.models import ErasureRequest, OpenDsrRequest
from app.services import metrics
from app.services.integrations import callbacks, fides, publishing
from app.services.models import compute
from app.services.requests import lifecycle
from app.services.models import catalog as model_service
from app.services.requests.lifecycle import Transition


def native_callback(session: Session, req: ErasureRequest, transition: Transition) -> None:
    """The caller's own callback URL: every status change (progress within a status is not one)."""
    if req.callback_url and transition.name not in ("complete_model",):
        callbacks.enqueue(session, kind="native", request_id=req.id, url=req.callback_url,
                          body=callbacks.native_body(req, get_settings().base_url))


def opendsr_controller(session: Session, req: ErasureRequest, transition: Transition) -> None:
    """OpenDSR status callbacks, on a change of the spec-level status only."""
    if req.source != "opendsr" or not req.external_id or transition.name == "complete_model":
        return
    row = session.get(OpenDsrRequest, req.external_id)
    if row is None:
        return
    base_url = get_settings().base_url
    status = callbacks.REQUEST_STATUS.get(req.status, "in_progress")
    done = status == "completed"
    callbacks.announce_opendsr(session, row, request_id=req.id, request_status=status, expected=req.due_at,
                               results_url=callbacks.certificate_url(base_url, req.id) if done else None)


def fides_resume(session: Session, req: ErasureRequest, transition: Transition) -> None:
    if transition.name != "complete_model":
        fides.resume_if_done(session, req)


def art19_recipients(session: Session, req: ErasureRequest, transition: Transition) -> None:
    """GDPR Art. 19: the model's downstream recipients hear of each model the subject was erased from."""
    if transition.name != "complete_model":
        return
    ctx = transition.context
    names = model_service.notify_recipients(
        session, name=ctx["model"], request_id=req.id, version_before=ctx.get("version_before"),
        version_after=ctx.get("version_after"), completed_at=ctx.get("completed_at"))
    result = dict(req.result or {})
    models = dict(result.get("models") or {})
    models[ctx["model"]] = {**models.get(ctx["model"], {}), "recipients_notified": names}
    req.result = {**result, "models": models}
    session.add(req)


def registry_purge(session: Session, req: ErasureRequest, transition: Transition) -> None:
    """Issue 19: the model's publish targets owe a sync (clean version in, tainted versions out)."""
    if transition.name == "complete_model":
        publishing.owe_to_request(session, req, model_name=transition.context["model"])


def time_to_forget(session: Session, req: ErasureRequest, transition: Transition) -> None:
    """``lethe_time_to_forget_seconds``: observed once per completed request, in its own transaction."""
    seconds = (req.result or {}).get("time_to_forget_s")
    if transition.name == "complete" and seconds is not None:
        metrics.observe_time_to_forget(session, float(seconds))


def time_to_interim(session: Session, req: ErasureRequest, transition: Transition) -> None:
    """``lethe_time_to_interim_seconds``: observed once per request whose interim served (issue 16)."""
    seconds = (req.result or {}).get("time_to_interim_s")
    if transition.name == "schedule" and seconds is not None and transition.previous != "scheduled":
        compute.observe_time_to_interim(session, float(seconds))


SUBSCRIBERS = (native_callback, opendsr_controller, fides_resume, art19_recipients, registry_purge, time_to_forget,
               time_to_interim)
# Reasons that keep a request from ``completed`` after its models are done (a ``required`` registry).
HOLDS = (publishing.registry_hold,)


def install_subscribers() -> None:
    """Subscribe the product's own subscribers (and completion holds) to the lifecycle (idempotent)."""
    for fn in SUBSCRIBERS:
        lifecycle.subscribe(fn)
    for hold in HOLDS:
        lifecycle.hold_completion(hold)
