"""Housekeeping beat tasks: callback delivery, registry syncs, GDPR deadline warnings, signed audit
checkpoints, and the Delta-store work (owed DELETEs and purges in the organisation's tables, re-ingestion).

Thin wrappers (STYLE.md principle 6): each opens sessions from ``app.core.db`` and calls one
service function; all state is in the DB (and the checkpoint file), so a restart loses nothing.
"""

from __future__ import annotations

import logging

from app.core import db
from app.core.config import get_settings
from app.core.queue import (TASK_AUDIT_CHECKPOINT, TASK_CHECK_DEADLINES, TASK_DELIVER_CALLBACKS,
                            TASK_SCHEDULE_TICK, TASK_SOURCE_ERASURES, TASK_SYNC_REGISTRIES, enqueue_unlearn,
                            get_celery)
from app.core.signing import get_keys
from app.db.models import utcnow
from app.services import audit
from app.services.integrations import callbacks, fides_state, publishing, source_erasure
from app.services.requests import deadlines
from app.services.models import schedule as schedule_service

log = logging.getLogger("lethe.housekeeping")
celery = get_celery()


@celery.task(name=TASK_DELIVER_CALLBACKS, ignore_result=True)
def deliver_callbacks() -> dict[str, int]:
    """Send due status callbacks (outbox), with exponential backoff; every attempt is audited."""
    counts = callbacks.deliver_due(db.new_session, settings=get_settings())  # through app.core.outbound
    if any(counts.values()):
        log.info("callbacks: %s", counts)
    return counts


@celery.task(name=TASK_SYNC_REGISTRIES, ignore_result=True)
def sync_registries() -> dict[str, int]:
    """Deliver due registry syncs (issue 19): publish clean versions, move aliases, purge tainted versions."""
    counts = publishing.deliver_due(db.new_session, settings=get_settings())
    if any(counts.values()):
        log.info("registry syncs: %s", counts)
    return counts


@celery.task(name=TASK_CHECK_DEADLINES, ignore_result=True)
def check_deadlines() -> list[str]:
    """Audit ``deadline_80_percent`` once per open request past 80 % of its GDPR time; expire Fides tokens."""
    with db.session_scope() as s:
        warned = deadlines.check(s, now=utcnow())
        expired = fides_state.expire_tokens(s, now=utcnow())  # a Fides reply-to-token is a deadline too
        s.commit()
    if warned:
        log.warning("%d erasure request(s) passed 80%% of their deadline: %s", len(warned), warned)
    if expired:
        log.warning("%d Fides reply-to-token(s) expired before the resume; the requests show token_expired",
                    len(expired))
    return warned


@celery.task(name=TASK_SCHEDULE_TICK, ignore_result=True)
def schedule_tick() -> list[str]:
    """Enqueue the exact job of every scheduled model whose earliest exact_due_at less the lead has come
    (or whose max_owed is reached); the worker re-decides from the DB before it runs anything."""
    with db.session_scope() as s:
        names = schedule_service.models_to_wake(s, get_settings())
    for name in names:
        enqueue_unlearn(name, dedup_s=0)
    if names:
        log.info("scheduler woke the exact job of %s", names)
    return names


@celery.task(name=TASK_AUDIT_CHECKPOINT, ignore_result=True)
def audit_checkpoint() -> int | None:
    """Append an Ed25519-signed audit-chain head to the checkpoint file outside the DB."""
    settings = get_settings()
    with db.session_scope() as s:
        audit.sync(s)
        cp = audit.write_checkpoint(s, keys=get_keys(settings), path=audit.checkpoint_path(settings))
    return cp["size"] if cp else None


@celery.task(name=TASK_SOURCE_ERASURES, ignore_result=True)
def source_erasures() -> dict[str, int]:
    """Find re-ingested rows of suppressed subjects, then run the owed DELETEs and purges."""
    counts = source_erasure.after_job(db.new_session, secret=get_settings().subject_key_secret)
    if any(counts.values()):
        log.info("source erasures: %s", counts)
    return counts
