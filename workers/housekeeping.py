"""Housekeeping beat tasks: callback delivery, GDPR deadline warnings, signed audit checkpoints.

Thin wrappers (STYLE.md principle 6): each opens sessions from ``app.core.db`` and calls one
service function; all state is in the DB (and the checkpoint file), so a restart loses nothing.
"""

from __future__ import annotations

import logging

import httpx

from app.core import db
from app.core.config import get_settings
from app.core.queue import (TASK_AUDIT_CHECKPOINT, TASK_CHECK_DEADLINES, TASK_DELIVER_CALLBACKS, TASK_SCHEDULE_TICK,
                            enqueue_unlearn, get_celery)
from app.core.signing import get_keys
from app.db.models import utcnow
from app.services import audit, callbacks, deadlines
from app.services import schedule as schedule_service

log = logging.getLogger("lethe.housekeeping")
celery = get_celery()


@celery.task(name=TASK_DELIVER_CALLBACKS, ignore_result=True)
def deliver_callbacks() -> dict[str, int]:
    """Send due status callbacks (outbox), with exponential backoff; every attempt is audited."""
    with httpx.Client(follow_redirects=False) as client:
        counts = callbacks.deliver_due(db.new_session, http_client=client, settings=get_settings())
    if any(counts.values()):
        log.info("callbacks: %s", counts)
    return counts


@celery.task(name=TASK_CHECK_DEADLINES, ignore_result=True)
def check_deadlines() -> list[str]:
    """Audit ``deadline_80_percent`` once per open request past 80 % of its GDPR time."""
    with db.session_scope() as s:
        warned = deadlines.check(s, now=utcnow())
        s.commit()
    if warned:
        log.warning("%d erasure request(s) passed 80%% of their deadline: %s", len(warned), warned)
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
