"""Audit log: events, chain verification (``audit.verify_against_checkpoint``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from app.api.schemas._base import NEXT_CURSOR, Out, Rfc3339, absent


class AuditEventOut(Out):
    seq: int = Field(description="Position in the hash chain.")
    ts: Rfc3339
    type: str = Field(description="A past-tense verb, e.g. erasure_requested, model_swapped.")
    actor: str
    request_id: str | None
    subject_key: str | None
    # Open JSON: each event type carries its own fields.
    payload: dict[str, Any]
    prev_hash: str
    hash: str = Field(description="sha256(prev_hash || canonical JSON of the event).")


class AuditPage(Out):
    items: list[AuditEventOut]
    next_cursor: str | None = Field(description=NEXT_CURSOR)


class ChainHead(Out):
    size: int
    hash: str


class CheckpointOut(Out):
    """The latest signed checkpoint, as read from its file."""

    size: int | None
    hash: str | None
    time: Rfc3339 | None
    key_id: str | None


class ChainReport(Out):
    ok: bool = Field(description="The chain is intact and still reaches the latest checkpoint.")
    events: int = Field(description="Chained events checked.")
    pending: int = Field(description="Events committed but not chained yet.")
    first_broken_seq: int | None
    reason: str | None
    head: ChainHead
    truncated: bool = Field(description="The chain no longer reaches the checkpoint (events deleted or rewritten).")
    checkpoint: CheckpointOut | None = Field(description="Null while no checkpoint was written.")
    checkpoint_valid: bool = absent("The checkpoint's Ed25519 signature verifies; absent without a checkpoint.")
