"""Models: list, description, predictions, rollback, Art. 19 recipients, policy, registration, ingest."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from app.api.schemas._base import Out


class ModelSummary(Out):
    name: str
    description: str
    serving_version: int | None


class ModelList(Out):
    items: list[ModelSummary]


class RecipientOut(Out):
    """An Art. 19 recipient as stored (the ``Recipient`` body after validation)."""

    name: str
    contact: str | None
    callback_url: str | None


class ReplicaOut(Out):
    replica_id: str
    version: int | None = Field(description="The version this replica serves; null before its first load.")
    loaded_at: datetime | None
    last_seen: datetime = Field(description="Its last heartbeat.")


class VersionOut(Out):
    version: int
    parent: int | None
    method: str = Field(description="How it was made: train, adopt or an unlearning method.")
    state: str = Field(description="candidate, verified, serving, retired or purged.")
    sha256: str = Field(description="Of the safetensors artifact.")
    # Open JSON: the training or verification metrics of the method that made this version.
    metrics: dict[str, Any]
    free_of_requests: int = Field(description="Erasure requests whose subjects this version is free of.")
    tainted_by_requests: int = Field(description="Completed erasure requests this version still carries (a "
                                                 "rollback to it is refused while this is above 0).")
    # {"store", "rows", "sha256"} of the data it was trained on (app/data/registry.py); empty before manifests.
    data_manifest: dict[str, Any]
    created_at: datetime


class PredictExample(Out):
    inputs: list[dict[str, Any]]


class ComputeOut(Out):
    window_days: int
    erasures_completed: int
    compute_s: float = Field(description="Unlearning + verification seconds of every job finished in the window.")
    compute_per_erasure_s: float | None
    by_phase: dict[str, dict[str, float]] = Field(description="interim / exact: jobs and compute seconds.")
    devices: list[str]


class ModelDetail(Out):
    name: str
    spec: str = Field(description="The spec's entry-point name (group ``lethe.models``).")
    description: str
    serving_version: int | None
    input_schema: dict[str, Any] = Field(description="JSON Schema of one item of ``inputs`` (the spec's).")
    input_example: dict[str, Any]
    predict_example: PredictExample = Field(description="A body for POST /v1/models/{name}/predict.")
    recipients: list[RecipientOut]
    replicas: list[ReplicaOut] = Field(description="Live API replicas and the version each serves.")
    versions: list[VersionOut] = Field(description="History, oldest first.")
    compute: ComputeOut = Field(description="Compute per completed erasure over the window (issue 16).")


class Prediction(Out):
    label: int
    probability: float


class PredictOut(Out):
    model: str
    model_version: int = Field(description="The version that answered (also the X-Model-Version header).")
    predictions: list[Prediction] = Field(description="One per input, in order.")


class RollbackOut(Out):
    model: str
    serving_version: int


class RecipientsOut(Out):
    model: str
    recipients: list[RecipientOut]


class ScheduleOut(Out):
    exact_within_s: float
    max_owed: int | None
    interim: Literal["none", "params", "auto"]


class PolicyOut(Out):
    model: str
    spec: str
    chain: list[str] = Field(description="Methods ``auto`` tries in order; it ends with an exact method.")
    chain_source: Literal["model", "spec default", "fallback"]
    # Open JSON: each method's own config fields (workers/unlearning/<method>.py).
    methods: dict[str, dict[str, Any]] = Field(description="Config overrides per method name.")
    purge_after_s: float | None = Field(None, description="Delta store only: delay from the DELETE in the table to "
                                        "its physical purge; null for the other stores.")
    # Open JSON: each kind's own fields (app/publish/<kind>.py); never credentials.
    publish: list[dict[str, Any]] = Field(description="Publish targets (issue 19): model registries that get every "
                                          "clean version and lose every version that carries an erased person.")

    schedule: ScheduleOut
    schedule_source: str = Field(description="``model``, or the default and why (from the recorded exact cost).")



class PublishTargetOut(Out):
    target: str = Field(description="kind:registered_model@tracking_uri")
    config: dict[str, Any]
    last_sync: dict[str, Any] | None = Field(description="What the last delivered sync found and did.")
    owed: list[dict[str, Any]] = Field(description="Syncs not delivered yet (registry unreachable, replicas "
                                       "still swapping), with their last error and next attempt.")


class PublishStatusOut(Out):
    model: str
    targets: list[PublishTargetOut]


class ExactNowOut(Out):
    model: str
    owed: int = Field(description="Erasures owed an exact version when the operator asked.")


class RegistrationOut(Out):
    id: str
    name: str
    spec: str
    status: Literal["queued", "running", "completed", "failed"]
    stage: str
    percent: float
    error: str | None
    # Open JSON: what the registration made (version, reference figures), per spec.
    result: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None
    status_url: str
    model_url: str


class SpecList(Out):
    items: list[str] = Field(description="Spec entry-point names installed on this replica.")


class BulkIngestOut(Out):
    model: str
    store: str = Field(description="Where the rows went: rows (registry table) or columnar.")
    ingested: int
    subjects: int = Field(description="Distinct subjects in the upload.")
    refused_suppressed: int = Field(description="Lines refused because their subject was erased.")
    lines: int
