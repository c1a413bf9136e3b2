"""SQLModel tables (DESIGN.md section 2). Times are timezone-aware UTC.

The DB, not the queue, is the source of truth: every request, job attempt and model
version is a row; Celery messages only say "look at model X now".
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(dt: datetime | None) -> datetime | None:
    """API input -> aware UTC; a naive value is taken to be UTC already."""
    if dt is None:
        return dt
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class ApiKey(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    name: str
    key_hash: str = Field(index=True, unique=True)
    scopes: str  # space separated
    created_at: datetime = Field(default_factory=utcnow)
    revoked: bool = False


class Model(SQLModel, table=True):
    """An instance of a spec: two models may share one spec (``spec`` is its entry-point name)."""

    name: str = Field(primary_key=True)
    spec: str = ""
    description: str = ""
    serving_version: int | None = None
    # Per-model settings the unlearning engine reads: method chain, reference MIA figures.
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    # One job at a time per model: a lease, so a dead worker's lock expires.
    lock_owner: str | None = None
    lock_until: datetime | None = None


class ModelRegistration(SQLModel, table=True):
    """Registering a model on a running stack: a job with stage and percent (issue 9).

    Nothing of the model exists in the registry until the registration commits it, whole."""

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = Field(index=True)
    spec: str
    status: str = "queued"  # queued, running, completed, failed
    stage: str = "queued"
    percent: float = 0.0
    weights_path: str | None = None  # staged upload to adopt instead of training
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = None
    actor: str = "lethe"
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class ModelVersion(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("model_name", "number"),)
    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(foreign_key="model.name", index=True)
    number: int
    parent: int | None = None
    artifact_path: str
    sha256: str
    method: str
    state: str = "verified"  # candidate, verified, serving, retired, purged
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # Erasure request IDs whose subjects this version is free of (inherited from its parent).
    free_of: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # What it was trained on: {"store", "rows", "sha256"} (app/data/registry.py), for lineage checks.
    manifest: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Sample(SQLModel, table=True):
    # Subject first: intake and subject access look a subject up across all models.
    __table_args__ = (Index("ix_sample_subject_model", "subject_key", "model_name"),)
    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(foreign_key="model.name")
    subject_key: str
    split: str  # train, test, holdout
    # Raw features, which may name the subject (MovieLens user_id feeds the user embedding);
    # rows are hard-deleted once the erasure completes.
    features: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    label: int
    deleted: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class SubjectRows(SQLModel, table=True):
    """Columnar store index (``app/data/columnar.py``): where a subject's rows sit in one part."""

    __table_args__ = (Index("ix_subjectrows_subject_model", "subject_key", "model_name"),
                      Index("ix_subjectrows_model_part", "model_name", "part"))
    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(foreign_key="model.name")
    subject_key: str
    part: int
    offset: int
    count: int
    deleted: bool = False


class Suppression(SQLModel, table=True):
    subject_key: str = Field(primary_key=True)
    request_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class ErasureRequest(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    subject_key: str = Field(index=True)
    source: str = "api"
    external_id: str | None = Field(default=None, index=True)  # Fides privacy_request_id, OpenDSR request id
    idempotency_key: str | None = Field(default=None, unique=True)
    api_key_id: str | None = None
    reason: str | None = None
    policy: str = "auto"
    status: str = Field(default="received", index=True)  # app.services.requests.lifecycle.RequestStatus
    stage: str = "received"
    percent: float = 0.0
    received_at: datetime = Field(default_factory=utcnow, index=True)
    due_at: datetime
    completed_at: datetime | None = None
    # GDPR Art. 12(3): extendable once by two further months, with reasons, within the first month.
    extended_at: datetime | None = None
    extension_reason: str | None = None
    # Art. 12(6): while the subject's identity is being verified nothing is erased and the clock
    # is paused; ``clock_paused_s`` is how long it stood still (added to ``due_at`` on resume).
    identity_status: str = "verified"  # verified, pending, rejected
    clock_paused_at: datetime | None = None
    clock_paused_s: float = 0.0
    callback_url: str | None = None
    error: str | None = None
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # Issue 16 (scheduled erasures): when every live replica served the interim version (not free of
    # the subject), and when the exact version must serve everywhere (app/ml/schedule.py).
    forgotten_at: datetime | None = None
    exact_due_at: datetime | None = None


class ErasureTarget(SQLModel, table=True):
    """One (request, model) pair: a request touches every model holding the subject's data."""

    __table_args__ = (Index("ix_target_model_status", "model_name", "status"),)
    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(foreign_key="erasurerequest.id", index=True)
    model_name: str = Field(foreign_key="model.name")
    status: str = "queued"  # app.services.requests.lifecycle.TargetStatus
    job_id: str | None = None
    queued_at: datetime = Field(default_factory=utcnow)
    # Jobs that took this target and failed; after a failure it waits until ``not_before``.
    attempts: int = 0
    not_before: datetime | None = None


class UnlearningJob(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    model_name: str = Field(foreign_key="model.name", index=True)
    status: str = "running"  # running, deploying, completed, failed
    stage: str = "collecting"
    request_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    deliveries: int = 1
    policy: str = "auto"
    method: str | None = None
    attempts: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    timings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    version_before: int | None = None
    version_after: int | None = None
    worker_host: str | None = None
    device: str | None = None
    error: str | None = None
    started_at: datetime = Field(default_factory=utcnow)
    lease_until: datetime | None = None
    finished_at: datetime | None = None
    # Issue 16: ``interim`` (clear / cheap step, not free of the batch) or ``exact``; and the
    # unlearning + verification seconds it spent on ``device`` (compute accounting).
    phase: str = Field(default="exact", sa_column_kwargs={"server_default": "exact"})
    compute_s: float | None = None


class AuditEvent(SQLModel, table=True):
    """Append-only, hash-chained: hash = sha256(prev_hash || canonical JSON of the event).

    An event is written *unchained* (seq, prev_hash, hash NULL) in the transaction of the change
    it records, so intake never waits on a global lock; the sequencer then links pending events
    into the chain in batches (a transparency log's queue + sequencer, as in Trillian).
    """

    id: int | None = Field(default=None, primary_key=True)
    seq: int | None = Field(default=None, unique=True)  # position in the chain, NULL while pending
    ts: datetime = Field(default_factory=utcnow, index=True)
    type: str = Field(index=True)
    actor: str
    request_id: str | None = Field(default=None, index=True)
    subject_key: str | None = Field(default=None, index=True)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    prev_hash: str | None = Field(default=None, unique=True)  # two links on the same head cannot both land
    hash: str | None = Field(default=None, unique=True)


class Replica(SQLModel, table=True):
    """Heartbeat of one API process: which version of which model it serves."""

    replica_id: str = Field(primary_key=True)
    model_name: str = Field(primary_key=True)
    version: int | None = None
    loaded_at: datetime | None = None
    last_seen: datetime = Field(default_factory=utcnow)


class OpenDsrRequest(SQLModel, table=True):
    """An OpenDSR/OpenGDPR/OpenCompliance subject request (issue 5), keyed by the controller's UUID.

    The identities themselves are not stored: an erasure links to its ``ErasureRequest`` (which
    holds the pseudonymous subject key), an access request keeps only the subject key.
    """

    subject_request_id: str = Field(primary_key=True)
    dialect: str  # opengdpr, opendsr, opencompliance
    subject_request_type: str  # erasure, access
    regulation: str = "gdpr"
    controller_id: str = Field(index=True)  # the API key id of the controller
    subject_key: str
    erasure_request_id: str | None = Field(default=None, index=True)
    api_version: str | None = None
    submitted_time: datetime
    received_time: datetime = Field(default_factory=utcnow)
    expected_completion_time: datetime
    status_callback_urls: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    last_request_status: str | None = None  # last status announced by callback


class CallbackDelivery(SQLModel, table=True):
    """Durable outbox of status callbacks: written with the status change, delivered by housekeeping."""

    __table_args__ = (Index("ix_callback_due", "status", "next_attempt_at"),)
    id: int | None = Field(default=None, primary_key=True)
    kind: str  # native / recipient (HMAC), opendsr (RSA), fides (bearer reply-to-token)
    dialect: str | None = None  # OpenDSR header family: opengdpr, opendsr, opencompliance
    request_id: str = Field(index=True)  # ErasureRequest.id
    url: str
    body: str  # the exact bytes that are signed and sent
    # Bearer token the receiver gave us for this call (Fides' short-lived reply-to-token), if any.
    auth_token: str | None = None
    status: str = "pending"  # pending, delivered, failed (gave up), superseded, refused (target inside the network)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    lease_until: datetime | None = None
    last_error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None


class FidesResume(SQLModel, table=True):
    """A Fides privacy request that Lethe halted (two-way pre-execution webhook): where and with what
    token to resume it once the erasure completes."""

    privacy_request_id: str = Field(primary_key=True)
    request_id: str = Field(index=True)  # ErasureRequest.id
    reply_to: str
    # Fides' reply-to-token: kept only while the request is halted; moved into the resume's outbox row
    # when it is queued and deleted there once the resume ends (app/services/fides_reply.py), or here
    # when it expires. It names the webhook, not the request: a live one can resume any of its requests.
    token: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    resumed_at: datetime | None = None  # when the resume was queued
    # halted, resuming, resumed, ended_in_fides, resume_refused, token_expired (app/services/fides_reply.py)
    state: str = Field(default="halted", index=True)
    token_expires_at: datetime | None = None  # created_at + fides_token_ttl_s (Fides' delay timeout)
    fides_status: str | None = None  # Fides' status of the privacy request when it refused a resume
    detail: str | None = None  # Fides' last answer to a resume, when it was not a success


class MetricCounter(SQLModel, table=True):
    """A monotonic Prometheus counter kept in the DB, because the process that counts (the worker)
    is not the one scraped (the API). ``series`` names one sample: ``lethe_time_to_forget_seconds``
    buckets are ``bucket:<le>``, then ``sum`` and ``count``. Incremented by upsert in the
    transaction of the event it counts (``app/services/metrics.py``); never decremented."""

    name: str = Field(primary_key=True)
    series: str = Field(primary_key=True)
    value: float = 0.0


class PendingDeletion(SQLModel, table=True):
    """A file or directory the database no longer needs, to be deleted after the commit that
    stopped needing it (``app/services/storage/deletions.py``). Written in that same transaction, so a
    rollback keeps the file and a crash after the commit leaves an entry the reconciler drains."""

    id: int | None = Field(default=None, primary_key=True)
    path: str = Field(index=True)
    reason: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class SourceErasure(SQLModel, table=True):
    """Delta store (issue 18): a subject owed a DELETE and a physical purge in an organisation's
    table. Written in the transaction that completes the erasure (or finds re-ingested rows); the
    table changes only after that commit (``app/services/integrations/source_erasure.py``), so a crash or an
    unreachable table leaves the row owed and retried. Holds the key, never the clear id."""

    __table_args__ = (Index("ix_sourceerasure_status_uri", "status", "uri"),)
    id: int | None = Field(default=None, primary_key=True)
    model_name: str
    uri: str
    subject_column: str
    subject_key: str = Field(index=True)
    request_id: str | None = None
    reason: str = "erasure"  # erasure, reingested
    status: str = "pending"  # pending (DELETE owed), deleted (purge owed), purged
    delete_version: int | None = None  # the table version after which the subject is absent
    rows_deleted: int | None = None
    files_removed: int | None = None
    purge_not_before: datetime = Field(default_factory=utcnow)
    not_before: datetime = Field(default_factory=utcnow)  # retry backoff of an unreachable table
    attempts: int = 0
    last_error: str | None = None  # an error type and the table URI, never a predicate
    created_at: datetime = Field(default_factory=utcnow)
    deleted_at: datetime | None = None
    purged_at: datetime | None = None


class RegistrySync(SQLModel, table=True):
    """Outbox of publish-target syncs (issue 19, ``app/services/integrations/publishing.py``): written in the
    transaction that makes a registry out of date (a completed erasure, a configured target), delivered
    at least once by housekeeping; never given up, so an outage delays a purge but never loses it."""

    __table_args__ = (Index("ix_registrysync_due", "status", "next_attempt_at"),)
    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(index=True)
    target: str  # app.publish.target_key(config): kind:registered_model@tracking_uri (no credentials)
    reason: str  # completed, configured, registered, rolled_back
    request_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = "pending"  # pending, delivered, dropped (target no longer configured)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    lease_until: datetime | None = None
    last_error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None
    report: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
