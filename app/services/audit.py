"""Tamper-evident audit log: an append-only hash chain (DESIGN.md section 2).

``hash_n = sha256(prev_hash || canonical_json(event_n))`` with ``prev_hash_0 = 64 zeros``.
Events are written unchained in the transaction of the change they record; the sequencer
links them in batches. Sequencing is serialised: PostgreSQL takes a transaction-scoped
advisory lock, SQLite runs every transaction as ``BEGIN IMMEDIATE``; a unique ``prev_hash``
makes a fork impossible even if both failed. ``verify`` recomputes the whole chain and names the first bad link;
a deleted middle row shows as a broken link; a deleted tail is caught by signed
checkpoints: the chain head (size, hash, time), Ed25519-signed and appended to a file
outside the DB, which ``verify_against_checkpoint`` compares the chain with.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, text
from sqlmodel import Session, col, select

from app.core.config import Settings
from app.core.signing import Keys, sign_ed25519, verify_ed25519
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
    """Record one event, unchained, inside the caller's transaction (the caller commits).

    No lock is taken: the event commits (or rolls back) with the change it records, and
    ``sequence_pending`` links it into the chain shortly after.
    """
    # JSON round trip so the hash is later computed over exactly what the DB returns.
    payload = json.loads(json.dumps(payload or {}, default=str))
    ev = AuditEvent(ts=utcnow(), type=type, actor=actor, request_id=request_id, subject_key=subject_key,
                    payload=payload)
    if (pending := session.info.get(_BULK)) is not None:
        pending.append(ev)  # written by ``bulk``'s single INSERT, in append order
    else:
        session.add(ev)
    return ev


_BULK = "lethe.audit.bulk"


@contextlib.contextmanager
def bulk(session: Session) -> Iterator[None]:
    """Collect the events appended inside the block and write them with one multi-row INSERT
    (no ORM unit of work: group-committed intake appends thousands a second). Their ids, and so
    their order in the chain, follow the order they were appended in."""
    if session.info.get(_BULK) is not None:  # nested: the outer block writes them
        yield
        return
    pending: list[AuditEvent] = []
    session.info[_BULK] = pending
    try:
        yield
    finally:
        del session.info[_BULK]
    if pending:
        cols = ("ts", "type", "actor", "request_id", "subject_key", "payload")
        session.execute(insert(AuditEvent), [{c: getattr(ev, c) for c in cols} for ev in pending])


def sequence_pending(session: Session, *, limit: int = 10000) -> int:
    """Link committed, unchained events into the hash chain, in id order. The caller commits.

    Serialised (PostgreSQL advisory lock; SQLite ``BEGIN IMMEDIATE``) and guarded by the unique
    ``seq``/``prev_hash``: concurrent sequencers cannot fork the chain.
    """
    _lock_chain(session)
    pending = session.exec(select(AuditEvent).where(col(AuditEvent.seq).is_(None))
                           .order_by(col(AuditEvent.id)).limit(limit)).all()
    if not pending:
        return 0
    last = session.exec(select(AuditEvent).where(col(AuditEvent.seq).is_not(None))
                        .order_by(col(AuditEvent.seq).desc()).limit(1)).first()
    seq, prev = (last.seq, last.hash) if last else (0, GENESIS)
    for ev in pending:
        seq += 1
        ev.seq, ev.prev_hash = seq, prev
        ev.hash = prev = chain_hash(prev, ev)
        session.add(ev)
    session.flush()
    return len(pending)


def sync(session: Session) -> int:
    """Sequence what is pending and commit, so a reader sees every committed event chained."""
    n = sequence_pending(session)
    session.commit()
    return n


def pending_count(session: Session) -> int:
    return session.exec(select(func.count()).select_from(AuditEvent).where(col(AuditEvent.seq).is_(None))).one()


def head(session: Session) -> dict[str, Any]:
    last = session.exec(select(AuditEvent).where(col(AuditEvent.seq).is_not(None))
                        .order_by(col(AuditEvent.seq).desc()).limit(1)).first()
    return {"size": last.seq if last else 0, "hash": last.hash if last else GENESIS}


def verify(session: Session, *, batch: int = 5000) -> dict[str, Any]:
    """Recompute the chain; report the first broken link, if any, and events not yet chained."""
    prev, expected_seq, count = GENESIS, 1, 0
    last_seq = 0
    pending = pending_count(session)
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
                return {"ok": False, "events": count, "pending": pending, "first_broken_seq": ev.seq,
                        "reason": problem, "head": {"size": count, "hash": prev}}
            prev, expected_seq, count, last_seq = ev.hash, ev.seq + 1, count + 1, ev.seq
    return {"ok": True, "events": count, "pending": pending, "first_broken_seq": None, "reason": None,
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


def public_view(ev: AuditEvent) -> dict[str, Any]:
    return {"seq": ev.seq, "ts": ts_str(ev.ts), "type": ev.type, "actor": ev.actor, "request_id": ev.request_id,
            "subject_key": ev.subject_key, "payload": ev.payload, "prev_hash": ev.prev_hash, "hash": ev.hash}


# ---------------------------------------------------------------- export


EXPORT_FIELDS = ("seq", "ts", "type", "actor", "request_id", "subject_key", "payload", "prev_hash", "hash")


def export(session_factory: Callable[[], Session], *, format: str, batch: int = 1000,
           **filters: Any) -> Iterator[str]:
    """Stream events as JSON lines or CSV, in chain order, a batch per short-lived session."""
    after = 0
    if format == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerow(EXPORT_FIELDS)
        yield buf.getvalue()
    while True:
        with session_factory() as s:
            rows = [public_view(e) for e in list_events(s, after_seq=after, limit=batch, **filters)]
        if not rows:
            return
        buf = io.StringIO()
        if format == "csv":
            w = csv.writer(buf)
            for r in rows:
                w.writerow([json.dumps(r[f], sort_keys=True) if f == "payload" else r[f] for f in EXPORT_FIELDS])
        else:
            for r in rows:
                buf.write(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n")
        yield buf.getvalue()
        after = rows[-1]["seq"]


# ---------------------------------------------------------------- signed checkpoints


def checkpoint_path(settings: Settings) -> Path:
    return settings.audit_checkpoint_path or settings.data_dir / "audit-checkpoints.jsonl"


def _checkpoint_message(size: int, hash: str, time: str) -> bytes:
    return json.dumps({"size": size, "hash": hash, "time": time}, sort_keys=True, separators=(",", ":")).encode()


def latest_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    last = None
    with path.open() as f:
        for line in f:
            try:
                last = json.loads(line)
            except ValueError:
                continue  # a torn last line from a crash; earlier ones still count
    return last


def write_checkpoint(session: Session, *, keys: Keys, path: Path) -> dict[str, Any] | None:
    """Append the signed chain head to ``path`` (skipped when the head did not move)."""
    h = head(session)
    last = latest_checkpoint(path)
    if last and last.get("size") == h["size"] and last.get("hash") == h["hash"]:
        return None
    time = ts_str(utcnow())
    cp = {"size": h["size"], "hash": h["hash"], "time": time, "alg": "Ed25519", "key_id": keys.key_id,
          "signature": sign_ed25519(keys, _checkpoint_message(h["size"], h["hash"], time))}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(cp, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return cp


def verify_against_checkpoint(session: Session, *, path: Path, public_key_pem: str) -> dict[str, Any]:
    """``verify`` plus the latest checkpoint: the chain must still reach it with the same hash."""
    report = verify(session)
    cp = latest_checkpoint(path)
    report.update(truncated=False, checkpoint=None)
    if cp is None:
        return report
    report["checkpoint"] = {k: cp.get(k) for k in ("size", "hash", "time", "key_id")}
    if not verify_ed25519(public_key_pem, _checkpoint_message(cp.get("size"), cp.get("hash"), cp.get("time")),
                          cp.get("signature", "")):
        report.update(ok=False, checkpoint_valid=False,
                      reason=report["reason"] or "the latest checkpoint's signature is invalid")
        return report
    report["checkpoint_valid"] = True
    at = session.exec(select(AuditEvent).where(AuditEvent.seq == cp["size"])).first() if cp["size"] else None
    last_seq = head(session)["size"]
    if last_seq < cp["size"] or (cp["size"] and (at is None or at.hash != cp["hash"])):
        report.update(ok=False, truncated=True,
                      reason=report["reason"] or f"the chain no longer reaches the checkpoint at size {cp['size']} "
                      "with the same hash (events deleted or rewritten)")
    return report
