"""What a job needs from its process: the ``Worker`` context that the pipeline, the lease and the
problem all take. Its own module, below all three, so that none of them imports another for it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.core import db
from app.core.config import Settings


@dataclass
class Worker:
    """What a job needs from its process."""

    settings: Settings
    engine: Engine | None  # None: the app's default session factory (tests rebind it)
    device: Any  # torch.device
    # Unique per Worker instance, made when it is built: a value computed at import time would
    # be shared by every prefork child of one Celery worker, and the lease could not tell them apart.
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    publish: Callable[[str, int], Any] = lambda name, version: None
    # Ask to be woken for this model in so many seconds (Celery: a delayed message); a scheduled
    # model's exact job starts at its wake time, the beat tick being the backstop (issue 16).
    wake: Callable[[str, float], Any] = lambda name, in_s: None
    sleep: Callable[[float], None] = time.sleep
    # Run a scheduled model's interims beside its exact job in a process of their own
    # (``pipeline.InterimsAlongside``): a thread beside the training loop slows it by the GIL.
    # That process publishes to ``publish_url`` (Redis; None: it publishes nowhere).
    alongside_process: bool = False
    publish_url: str | None = None
    # Jobs this worker saw interrupted by a database outage: resuming them is not a re-delivery
    # (``max_job_attempts`` is there to stop a job that kills its worker, not to punish DB blips).
    db_interrupted: set[str] = field(default_factory=set)

    def session(self) -> Session:
        return Session(self.engine) if self.engine is not None else db.new_session()
