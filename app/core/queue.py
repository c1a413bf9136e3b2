"""The Celery application, configured from settings (shared by API and workers).

The API only *sends* tasks by name (it never imports ``workers.unlearning``). Broker:
Redis when it answers, otherwise kombu's SQLAlchemy transport on SQLite, which needs no
server and is meant for the single-worker embedded default only. That transport polls
every second by default; passing ``polling_interval`` in transport options crashes it,
so the class attribute is set instead.

Reliability settings follow DESIGN.md section 7: late acks + reject on worker loss so a
killed worker's message is re-delivered (attempts are counted in the DB, not trusted to
the broker), prefetch 1, a visibility timeout above the longest job.
"""

from __future__ import annotations

import functools
import logging

from celery import Celery

from app.core.config import Settings, get_settings

log = logging.getLogger("lethe.queue")
UNLEARN_QUEUE = "unlearn"
# Reconciler, callbacks, deadlines, checkpoints: never stuck behind a long unlearning job.
HOUSEKEEPING_QUEUE = "housekeeping"
TASK_UNLEARN = "lethe.unlearn_model"
TASK_RECONCILE = "lethe.reconcile"
TASK_REGISTER = "lethe.register_model"  # trains: on the unlearn queue (the GPU worker)
TASK_SISA_SHARD = "lethe.sisa_shard"  # one shard of a fanned-out SISA erasure (app/ml/sisa_tasks.py)
# Housekeeping (workers/housekeeping.py): on the unlearn queue so the single embedded worker runs them;
# a long unlearning job delays them (prefetch 1), which callbacks and checkpoints tolerate.
TASK_DELIVER_CALLBACKS = "lethe.deliver_callbacks"
TASK_CHECK_DEADLINES = "lethe.check_deadlines"
TASK_AUDIT_CHECKPOINT = "lethe.audit_checkpoint"
TASK_SOURCE_ERASURES = "lethe.source_erasures"  # issue 18: Delta tables (DELETE, purge, re-ingestion)
TASK_SYNC_REGISTRIES = "lethe.sync_registries"  # issue 19: publish targets' outbox
TASK_SCHEDULE_TICK = "lethe.schedule_tick"  # issue 16: wakes scheduled models' exact jobs
HOUSEKEEPING_TASKS = (TASK_DELIVER_CALLBACKS, TASK_CHECK_DEADLINES, TASK_AUDIT_CHECKPOINT, TASK_SOURCE_ERASURES,
                      TASK_SYNC_REGISTRIES, TASK_SCHEDULE_TICK)


def redis_reachable(url: str, timeout: float = 0.5) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


def resolve_broker(settings: Settings) -> str:
    if settings.broker_url:
        return settings.broker_url
    if redis_reachable(settings.redis_url):
        return settings.redis_url
    path = (settings.data_dir / "broker.db").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqla+sqlite:///{path}"


def make_celery(settings: Settings) -> Celery:
    broker = resolve_broker(settings)
    if broker.startswith("sqla+"):
        from kombu.transport import sqlalchemy as kombu_sqla

        kombu_sqla.Transport.polling_interval = 0.2
    app = Celery("lethe", broker=broker)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        # Redis only: the SQLAlchemy transport hands its options to create_engine().
        broker_transport_options={"visibility_timeout": 6 * 3600} if broker.startswith("redis") else {},
        task_ignore_result=True,
        task_default_queue=UNLEARN_QUEUE,
        task_routes={TASK_UNLEARN: {"queue": UNLEARN_QUEUE}, TASK_REGISTER: {"queue": UNLEARN_QUEUE},
                     TASK_SISA_SHARD: {"queue": UNLEARN_QUEUE},
                     TASK_RECONCILE: {"queue": HOUSEKEEPING_QUEUE},
                     **{t: {"queue": HOUSEKEEPING_QUEUE} for t in HOUSEKEEPING_TASKS}},
        beat_schedule={"reconcile": {"task": TASK_RECONCILE, "schedule": settings.reconcile_interval_s},
                       # expires: a beat tick that waited behind a long job is dropped, not piled up
                       "deliver-callbacks": {"task": TASK_DELIVER_CALLBACKS,
                                             "schedule": settings.housekeeping_interval_s,
                                             "options": {"expires": settings.housekeeping_interval_s}},
                       "sync-registries": {"task": TASK_SYNC_REGISTRIES,
                                           "schedule": settings.housekeeping_interval_s,
                                           "options": {"expires": settings.housekeeping_interval_s}},
                       "check-deadlines": {"task": TASK_CHECK_DEADLINES,
                                           "schedule": settings.deadline_check_interval_s,
                                           "options": {"expires": settings.deadline_check_interval_s}},
                       "schedule-tick": {"task": TASK_SCHEDULE_TICK, "schedule": settings.schedule_tick_s,
                                         "options": {"expires": settings.schedule_tick_s}},
                       "audit-checkpoint": {"task": TASK_AUDIT_CHECKPOINT,
                                            "schedule": settings.audit_checkpoint_interval_s,
                                            "options": {"expires": settings.audit_checkpoint_interval_s}},
                       "source-erasures": {"task": TASK_SOURCE_ERASURES,
                                           "schedule": settings.source_erasure_interval_s,
                                           "options": {"expires": settings.source_erasure_interval_s}}},
        worker_hijack_root_logger=False,
    )
    return app


@functools.lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


_last_sent: dict[str, float] = {}
# A worker drains *every* queued erasure of a model per message and re-checks the queue after
# each job, so one message per model per this many seconds and process is enough; a request
# that slips through a gap is picked up by the reconciler.
ENQUEUE_DEDUP_S = 0.5


def enqueue_unlearn(model_name: str, *, dedup_s: float = ENQUEUE_DEDUP_S) -> bool:
    """Send "look at this model's queued erasures". Call only after commit.

    A failure is logged, not raised: the request is already durable in the DB and the
    reconciler re-sends work whose message never arrived.
    """
    import time

    now = time.monotonic()
    if now - _last_sent.get(model_name, -1e9) < dedup_s:
        return True
    _last_sent[model_name] = now
    try:
        get_celery().send_task(TASK_UNLEARN, args=[model_name], queue=UNLEARN_QUEUE)
        return True
    except Exception:  # noqa: BLE001
        log.warning("could not enqueue unlearning for model %s; the reconciler will retry", model_name,
                    exc_info=True)
        return False


_wakes: dict[str, float] = {}
# A delayed message is held, unacknowledged, by the worker that reserved it; past the broker's
# visibility timeout (6 h above) Redis would hand it out again. A wake further away is sent for
# this long and re-armed by the drain it starts (the beat tick backs both up).
MAX_WAKE_COUNTDOWN_S = 3600.0


def enqueue_wake(model_name: str, *, in_s: float) -> bool:
    """Send "look at this model" due ``in_s`` seconds from now: a scheduled model's exact job starts
    at its wake time, not at the next beat tick after it (issue 16). One pending wake per model and
    process: a wake already due no later than this one is enough (it re-decides and re-arms)."""
    import time

    countdown = min(max(in_s, 0.0), MAX_WAKE_COUNTDOWN_S)
    now = time.monotonic()
    pending = _wakes.get(model_name)
    if pending is not None and now < pending <= now + countdown:
        return True
    try:
        get_celery().send_task(TASK_UNLEARN, args=[model_name], queue=UNLEARN_QUEUE, countdown=countdown)
    except Exception:  # noqa: BLE001
        log.warning("could not send the scheduled wake of model %s; the beat tick will", model_name, exc_info=True)
        return False
    _wakes[model_name] = now + countdown
    return True


def enqueue_registration(registration_id: str) -> bool:
    """Send "run this model registration". Call only after commit; the reconciler re-sends a
    registration still queued whose message was lost."""
    try:
        get_celery().send_task(TASK_REGISTER, args=[registration_id], queue=UNLEARN_QUEUE)
        return True
    except Exception:  # noqa: BLE001
        log.warning("could not enqueue registration %s; the reconciler will retry", registration_id, exc_info=True)
        return False
