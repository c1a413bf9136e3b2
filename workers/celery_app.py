"""Celery application for the unlearning worker: ``celery -A workers.celery_app worker -Q unlearn -B``."""

from __future__ import annotations

from app.core.config import get_settings
from app.core.logging import configure_logging
from app.core.queue import get_celery
from app.services.requests.subscribers import install_subscribers

configure_logging(get_settings().log_level)
install_subscribers()  # the worker's transitions write their callbacks' outbox rows (lifecycle)
celery = get_celery()
celery.conf.include = ["workers.tasks", "workers.housekeeping"]
import workers.housekeeping  # noqa: E402,F401  (registers the tasks)
import workers.tasks  # noqa: E402,F401  (registers the tasks)
