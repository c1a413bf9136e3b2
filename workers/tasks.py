"""Thin Celery tasks: pass names and IDs, call one pipeline function (STYLE.md principle 6)."""

from __future__ import annotations

import functools
import logging

from app.core.config import get_settings
from app.core.db import create_schema, get_engine
from app.core.queue import (
    TASK_RECONCILE, TASK_REGISTER, TASK_SISA_SHARD, TASK_UNLEARN, UNLEARN_QUEUE, enqueue_registration, enqueue_unlearn,
    enqueue_wake, get_celery,
)
from app.serving.holder import publish_update
from workers import pipeline

log = logging.getLogger("lethe.tasks")
celery = get_celery()


@functools.lru_cache
def worker() -> pipeline.Worker:
    """One engine and device per worker process."""
    from app.ml.device import pick_device, set_cpu_threads

    settings = get_settings()
    set_cpu_threads(settings.torch_threads)
    create_schema()
    if settings.sisa_fan_out:  # registered at start-up: app.ml.sisa never imports Celery
        from app.ml.sisa import set_shard_runner
        from app.ml.sisa_tasks import FanOut

        set_shard_runner(FanOut(lambda path: celery.send_task(TASK_SISA_SHARD, args=[path], queue=UNLEARN_QUEUE),
                                claim_timeout_s=settings.sisa_claim_timeout_s,
                                stale_s=2 * settings.sisa_claim_timeout_s))
    return pipeline.Worker(settings=settings, engine=get_engine(), device=pick_device(settings.device),
                           publish=functools.partial(publish_update, settings.redis_url),
                           alongside_process=True, publish_url=settings.redis_url,
                           wake=lambda name, in_s: enqueue_wake(name, in_s=in_s))


@celery.task(name=TASK_UNLEARN, acks_late=True, reject_on_worker_lost=True)
def unlearn_model(model_name: str) -> list[str]:
    """Run every queued erasure of one model (batched, one job at a time per model)."""
    jobs = pipeline.drain(worker(), model_name)
    log.info("model %s: ran %d job(s)", model_name, len(jobs))
    return jobs


@celery.task(name=TASK_REGISTER, acks_late=True, reject_on_worker_lost=True)
def register_model(registration_id: str) -> str:
    """Run one model registration (nothing is committed unless it completes)."""
    from app.services.models import registration
    from app.services.integrations import publishing
    from workers.verify.calibrate import calibrate_reference

    w = worker()
    return registration.run_registration(w.session, registration_id, secret=w.settings.subject_key_secret,
                                         artifacts_dir=w.settings.artifacts_dir, device=w.device,
                                         calibrate=calibrate_reference, publish=w.publish,
                                         deploy_timeout_s=w.settings.deploy_timeout_s,
                                         replica_ttl_s=w.settings.replica_ttl_s,
                                         fetch_weights=functools.partial(publishing.fetch_for_registration,
                                                                         settings=w.settings))


@celery.task(name=TASK_SISA_SHARD, acks_late=True, reject_on_worker_lost=True)
def sisa_shard(task_file: str) -> dict | None:
    """Retrain one shard of a fanned-out SISA erasure; the job that sent it publishes."""
    from app.ml.sisa_tasks import run_shard_file

    return run_shard_file(task_file, device=worker().device)


@celery.task(name=TASK_RECONCILE, ignore_result=True)
def reconcile() -> list[str]:
    """Re-send work whose message vanished: the DB, not the queue, is the source of truth."""
    from workers import reconcile as reconciler

    reconciler.reconcile_registrations(worker(), send=enqueue_registration)
    sent = reconciler.reconcile(worker(), send=enqueue_unlearn)
    reconciler.reconcile_files(worker())
    return sent
