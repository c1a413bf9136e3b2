"""Request bodies (pydantic); the response schemas are in the sibling modules, one per resource."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl


class ErasureCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject_id: str = Field(min_length=1, max_length=256, description="The data subject's ID, e.g. a MovieLens userId.")
    reason: str | None = Field(None, max_length=2000, description="Free text kept with the request.")
    callback_url: HttpUrl | None = Field(None, description="POSTed on every status change.")
    policy: str | None = Field(None, max_length=64, description="Unlearning policy: auto (default) or a method name.")
    identity_verified: bool = Field(
        True, description="False while the data subject's identity is still being verified (GDPR Art. 12(6)): "
                          "the request is recorded, nothing is erased and the deadline clock is paused until "
                          "POST /v1/erasure-requests/{id}/identity.")


class IdentityDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verified: bool = Field(description="True: identity confirmed, the erasure proceeds. False: it could not be "
                                       "confirmed; the request is rejected and nothing is erased.")
    note: str | None = Field(None, max_length=2000, description="Kept in the audit log; write it without "
                                                                  "personal data.")


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[dict[str, Any]] = Field(min_length=1, max_length=1024)


class SampleIn(BaseModel):
    features: dict[str, Any]
    label: int
    split: str = "train"


class IngestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=128)
    samples: list[SampleIn] = Field(min_length=1, max_length=10000)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    scopes: list[str] = Field(min_length=1)


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


class ExtendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=10, max_length=2000,
                        description="Why more time is needed (Art. 12(3)); no personal data.")


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, description="Who received the model or data from it.")
    contact: str | None = Field(None, max_length=500, description="How to reach them (kept with the model).")
    callback_url: HttpUrl | None = Field(None, description="Receives a signed Art. 19 notice per erasure.")


class RecipientsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipients: list[Recipient] = Field(max_length=200)


class ModelRegister(BaseModel):
    """Register a model: an instance of an installed spec (entry point of group ``lethe.models``)."""
    name: str = Field(min_length=1, max_length=63, description="The new model's name (lowercase, digits, - or _).")
    spec: str = Field(min_length=1, max_length=200, description="Spec entry-point name, e.g. movielens.")
    config: dict[str, Any] = Field(default_factory=dict, description="Per-model config: training, chain, methods.")
    weights_base64: str | None = Field(None, max_length=700_000_000,
                                       description="safetensors state dict to adopt as version 1 instead of training.")
    weights_uri: str | None = Field(None, max_length=500, pattern=r"^models:/[^@/\s]+(@[^@/\s]+|/\d+)$",
                                    description="Adopt version 1 from an MLflow registry: models:/NAME@ALIAS or "
                                    "models:/NAME/VERSION (the server: the first publish target's tracking_uri, "
                                    "else LETHE_MLFLOW_TRACKING_URI).")


class ScheduleBody(BaseModel):
    """How long an acknowledged erasure may wait for its exact version, and what serves meanwhile."""
    model_config = ConfigDict(extra="forbid")
    exact_within_s: float = Field(0.0, ge=0, le=7 * 86400, allow_inf_nan=False,
                                  description="Longest wait for the exact version, seconds (0: exact at once).")
    max_owed: int | None = Field(None, ge=1, le=100_000, description="Start the exact job once this many are owed.")
    interim: Literal["none", "params", "auto"] = Field(
        "params", description="What runs at once: nothing, clear per-subject parameters, or a gated cheap method.")


class PolicyBody(BaseModel):
    """Per-model unlearning policy; omitted fields keep their value, null resets to the spec default."""
    model_config = ConfigDict(extra="forbid")
    chain: list[str] | None = Field(None, max_length=20, description="Methods `auto` tries in order; ends exact.")
    methods: dict[str, dict[str, Any]] | None = Field(None, description="Config overrides per method name.")
    # le: app.data.delta.MAX_PURGE_AFTER_S (366 days); a larger value overflowed the completing job.
    purge_after_s: float | None = Field(None, ge=0, le=366 * 86400, allow_inf_nan=False,
                                        description="Delta store only: seconds between the DELETE in "
                                        "the table and its physical purge (capped before the legal due_at).")
    publish: list[dict[str, Any]] | None = Field(None, max_length=10, description=(
        'Publish targets, e.g. [{"kind": "mlflow", "tracking_uri": "https://mlflow.internal", "registered_model": '
        '"recs", "alias": "champion", "on_taint": "delete", "history": "purge"}]; credentials come from '
        "LETHE_MLFLOW_* settings, never from here."))
    schedule: ScheduleBody | None = Field(None, description="When erasures get their exact version (issue 16); "
                                                           "null resets to the default derived from the exact cost.")
