"""Tamper-evident audit log: an append-only hash chain (DESIGN.md section 2).

``hash_n = sha256(prev_hash || canonical_json(event_n))`` with ``prev_hash_0 = 64 zeros``.
Appends are serialised: PostgreSQL takes a transaction-scoped advisory lock, SQLite runs
every transaction as ``BEGIN IMMEDIATE``; a unique ``prev_hash`` makes a fork impossible
even if both failed. ``verify`` recomputes the whole chain and names the first bad link;
a deleted middle row shows as a broken link, a deleted tail needs the head published
outside the DB (signed checkpoints, a later issue).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import func, text
from sqlmodel import Session, col, select

from app.db.models import AuditEvent, as_utc, utcnow

GENESIS = "0" * 64
_PG_LOCK_KEY = 0x1E7E_A0D1  # advisory lock id for the audit chain


def ts_str(ts: datetime) -> str:
    return as_utc(ts).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(ev: AuditEvent) -> bytes:
    body = {
        "seq": ev.seq, "ts": ts_str(ev.ts), "type": ev.type, "actor": ev.actor,
        "request_id": ev.request_id, "subject_key": ev.subject_key, "payload": ev.payload,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


def chain_hash(prev_hash: str, ev: AuditEvent) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical(ev)).hexdigest()


def _lock_chain(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.exec(text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=_PG_LOCK_KEY))


def append(session: Session, *, type: str, actor: str, request_id: str | None = None,
           subject_key: str | None = None, payload: dict[str, Any] | None = None) -> AuditEvent:
    """Add one event to the chain inside the caller's transaction (the caller commits)."""
    _lock_chain(session)
    head = session.exec(select(AuditEvent).order_by(col(AuditEvent.seq).desc()).limit(1)).first()
    # JSON round trip so the hash is computed over exactly what the DB will return.
    payload = json.loads(json.dumps(payload or {}, default=str))
    ev = AuditEvent(seq=(head.seq + 1) if head else 1, ts=utcnow(), type=type, actor=actor,
                    request_id=request_id, subject_key=subject_key, payload=payload,
                    prev_hash=head.hash if head else GENESIS, hash="")
    ev.hash = chain_hash(ev.prev_hash, ev)
    session.add(ev)
    session.flush()
    return ev


def head(session: Session) -> dict[str, Any]:
    last = session.exec(select(AuditEvent).order_by(col(AuditEvent.seq).desc()).limit(1)).first()
    return {"size": last.seq if last else 0, "hash": last.hash if last else GENESIS}


def verify(session: Session, *, batch: int = 5000) -> dict[str, Any]:
    """Recompute the chain; report the first broken link, if any."""
    prev, expected_seq, count = GENESIS, 1, 0
    last_seq = 0
    while True:
        rows = session.exec(select(AuditEvent).where(col(AuditEvent.seq) > last_seq)
                            .order_by(col(AuditEvent.seq)).limit(batch)).all()
        if not rows:
            break
        for ev in rows:
            problem = None
            if ev.seq != expected_seq:
                problem = f"missing events before seq {ev.seq} (expected {expected_seq})"
            elif ev.prev_hash != prev:
                problem = "prev_hash does not match the previous event's hash"
            elif chain_hash(prev, ev) != ev.hash:
                problem = "event content does not match its hash"
            if problem:
                return {"ok": False, "events": count, "first_broken_seq": ev.seq, "reason": problem,
                        "head": {"size": count, "hash": prev}}
            prev, expected_seq, count, last_seq = ev.hash, ev.seq + 1, count + 1, ev.seq
    return {"ok": True, "events": count, "first_broken_seq": None, "reason": None,
            "head": {"size": count, "hash": prev}}


def list_events(session: Session, *, request_id: str | None = None, subject_key: str | None = None,
                type: str | None = None, actor: str | None = None, since: datetime | None = None,
                until: datetime | None = None, after_seq: int = 0, limit: int = 100) -> list[AuditEvent]:
    q = select(AuditEvent).where(col(AuditEvent.seq) > after_seq)
    if request_id:
        q = q.where(AuditEvent.request_id == request_id)
    if subject_key:
        q = q.where(AuditEvent.subject_key == subject_key)
    if type:
        q = q.where(AuditEvent.type == type)
    if actor:
        q = q.where(AuditEvent.actor == actor)
    if since:
        q = q.where(col(AuditEvent.ts) >= since)
    if until:
        q = q.where(col(AuditEvent.ts) < until)
    return list(session.exec(q.order_by(col(AuditEvent.seq)).limit(limit)).all())


def count(session: Session) -> int:
    return session.exec(select(func.count()).select_from(AuditEvent)).one()


def public_view(ev: AuditEvent) -> dict[str, Any]:
    return {"seq": ev.seq, "ts": ts_str(ev.ts), "type": ev.type, "actor": ev.actor, "request_id": ev.request_id,
            "subject_key": ev.subject_key, "payload": ev.payload, "prev_hash": ev.prev_hash, "hash": ev.hash}
