"""Erasure in the organisation's Delta table (issue 18): drain the durable ``SourceErasure`` list
(DELETE, then the physical purge), and find re-ingested subjects.

Runs after the transaction that recorded the work has committed (the worker right after a job
completes; the housekeeping beat every ``source_erasure_interval_s``), so a crash anywhere leaves
rows owed and the next drain finishes them: each step is idempotent (a DELETE that finds no rows
records the current version; a VACUUM that finds nothing removes nothing). A table that cannot be
reached keeps its rows owed with a backoff (``attempts``, ``last_error`` — an error type, never a
predicate). Audit events carry subject keys, table versions and counts; never a clear subject id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert
from sqlmodel import Session, col, select

from app.data import delta
from app.db.models import ErasureRequest, Model, SourceErasure, SubjectRows, as_utc, utcnow
from app.services import audit

log = logging.getLogger("lethe.source_erasure")
ACTOR = "worker"
CLAIM_LEASE = timedelta(minutes=10)  # a drain that dies mid-step gives its rows back after this


def delta_models(session: Session, uri: str | None = None) -> list[Model]:
    out = [m for m in session.exec(select(Model)).all() if (m.config or {}).get("store") == "delta"]
    return [m for m in out if uri is None or (m.config.get("source") or {}).get("uri") == uri]


def _still_held(session: Session, uri: str, keys: set[str]) -> set[str]:
    """Keys another model reading the same table has not finished erasing: its index keeps them and
    its erasure of them is still open. The open target is what counts: a repin that read the index
    before a completing job dropped the subjects writes their rows back (PostgreSQL, read committed),
    and such a row alone held the DELETE for ever."""
    from app.db.models import ErasureTarget

    names = [m.name for m in delta_models(session, uri)]
    if not names or not keys:
        return set()
    indexed = session.exec(select(SubjectRows.subject_key, SubjectRows.model_name).where(
        col(SubjectRows.model_name).in_(names), col(SubjectRows.subject_key).in_(keys))).all()
    open_ = set(session.exec(select(ErasureRequest.subject_key, ErasureTarget.model_name).join(
        ErasureTarget, col(ErasureTarget.request_id) == ErasureRequest.id).where(
        col(ErasureRequest.subject_key).in_(keys), col(ErasureTarget.model_name).in_(names),
        col(ErasureTarget.status).not_in(("done", "cancelled")))).all())
    return {key for key, name in indexed if (key, name) in open_}


def _owed(session: Session, status: str, now: Any) -> dict[str, list[SourceErasure]]:
    q = select(SourceErasure).where(SourceErasure.status == status, SourceErasure.not_before <= now)
    if status == "deleted":
        q = q.where(SourceErasure.purge_not_before <= now)
    by_uri: dict[str, list[SourceErasure]] = {}
    for row in session.exec(q.order_by(col(SourceErasure.id))).all():
        by_uri.setdefault(row.uri, []).append(row)
    return by_uri


def _failed(session: Session, rows: list[SourceErasure], error: str) -> None:
    for row in rows:
        row.attempts += 1
        row.last_error = error
        row.not_before = utcnow() + timedelta(seconds=min(delta.RETRY_BACKOFF_S * 2 ** min(row.attempts - 1, 6),
                                                          6 * 3600))
        session.add(row)


def _note_result(session: Session, row: SourceErasure, step: str, detail: dict[str, Any]) -> None:
    """The request's result shows both steps of the source erasure."""
    if row.request_id is None:
        return
    req = session.get(ErasureRequest, row.request_id)
    if req is None:
        return
    source = dict((req.result or {}).get("source") or {})
    source[step] = detail
    req.result = {**(req.result or {}), "source": source}
    session.add(req)


def repin(session: Session, model: Model, table: Any, secret: str) -> int:
    """Pin ``model`` to the table's current version and rebuild its index from it (deletion flags
    kept). After a DELETE the old pinned version is about to be vacuumed; rows appended upstream
    since are picked up here and named in the next version's manifest."""
    source = delta.Source.of(model.config)
    flags = dict(session.exec(select(SubjectRows.subject_key, SubjectRows.deleted).where(
        SubjectRows.model_name == model.name)).all())
    # A subject whose erasure finished and who is back in the table (re-ingested) is not indexed
    # again: the model does not hold them; ``find_reingested`` removes their rows from the table.
    gone = delta.suppressed(session) - set(flags)
    counts = delta.counts(table, source.subject_column, secret, skip=gone)
    session.execute(delete(SubjectRows).where(SubjectRows.model_name == model.name))
    version = table.version()
    index = [{"model_name": model.name, "subject_key": k, "part": version, "offset": 0, "count": n,
              "deleted": flags.get(k, False)} for k, n in counts.items()]
    for i in range(0, len(index), 20000):
        session.execute(insert(SubjectRows), index[i:i + 20000])
    model.config = {**model.config, "source": source.config(version)}
    session.add(model)
    return version


def drain(session_factory: Callable[[], Session], *, secret: str, now: Any = None) -> dict[str, int]:
    """Run every due DELETE, then every due purge. Returns counts (rows deleted, files removed, failures)."""
    counts = {"deleted": 0, "purged_files": 0, "failed": 0}
    now = now or utcnow()
    with session_factory() as s:
        pending = _owed(s, "pending", now)
    for uri in pending:
        counts["deleted"] += _delete_step(session_factory, uri, secret, counts, now)
    now = max(now, utcnow())  # the rows the DELETE pass just finished are due for purge from its end
    with session_factory() as s:
        due = _owed(s, "deleted", now)
    for uri in due:
        counts["purged_files"] += _purge_step(session_factory, uri, secret, counts, now)
    return counts


def _claim(session_factory: Callable[[], Session], uri: str, status: str, now: Any) -> list[int]:
    """Take the due rows of one table for this drain: their ``not_before`` moves past a lease, so a
    concurrent drain (the beat, another worker) skips them, and no transaction stays open while the
    table is changed (on SQLite it would hold the write lock). A drain that dies leaves them to the
    next one after the lease."""
    with session_factory() as s:
        q = select(SourceErasure).where(SourceErasure.uri == uri, SourceErasure.status == status,
                                        SourceErasure.not_before <= now)
        if status == "deleted":
            q = q.where(SourceErasure.purge_not_before <= now)
        if s.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        rows = list(s.exec(q.order_by(col(SourceErasure.id))).all())
        if status == "pending":
            held = _still_held(s, uri, {r.subject_key for r in rows})
            rows = [r for r in rows if r.subject_key not in held]
        for row in rows:
            row.not_before = utcnow() + CLAIM_LEASE
            s.add(row)
        ids = [r.id for r in rows]
        s.commit()
        return ids


def _warm(session_factory: Callable[[], Session], uri: str, table: Any, secret: str) -> None:
    """Scan the new version's subject column before the recording transaction (``repin`` then
    reads it from the cache), so no transaction stays open during a scan."""
    with session_factory() as s:
        columns = {m.config["source"]["subject_column"] for m in delta_models(s, uri)}
        s.commit()
    try:
        for column in columns:
            delta.subjects(table, column, secret)
    except Exception:  # noqa: BLE001 - only a warm-up: repin scans again inside its transaction
        log.warning("source erasure: could not pre-scan %s", uri)


def _rows(s: Session, ids: list[int]) -> list[SourceErasure]:
    return list(s.exec(select(SourceErasure).where(col(SourceErasure.id).in_(ids)).order_by(col(SourceErasure.id))).all())


def _error(exc: Exception, uri: str) -> str:  # recorded by type, never by message (it may quote a predicate)
    return exc.detail if isinstance(exc, delta.SourceUnavailable) else f"{type(exc).__name__} on {uri!r}"


def _delete_step(session_factory: Callable[[], Session], uri: str, secret: str, counts: dict[str, int],
                 now: Any) -> int:
    ids = _claim(session_factory, uri, "pending", now)
    if not ids:
        return 0
    with session_factory() as s:
        rows = _rows(s, ids)
        column, keys = rows[0].subject_column, {r.subject_key for r in rows}
    try:
        version, deleted, _present = delta.delete_rows(uri, column, keys, secret)
        table = delta.open_table(uri, version)
    except Exception as exc:  # noqa: BLE001 - owed and retried
        return _record_failure(session_factory, ids, _error(exc, uri), counts, "DELETE", uri)
    _warm(session_factory, uri, table, secret)
    with session_factory() as s:
        rows, done = _rows(s, ids), utcnow()
        for row in rows:
            row.status, row.delete_version, row.deleted_at, row.last_error = "deleted", version, done, None
            row.rows_deleted, row.not_before = deleted if len(rows) == 1 else None, done
            s.add(row)
            detail = {"model": row.model_name, "table_version": version, "reason": row.reason}
            audit.append(s, type="source_rows_deleted", actor=ACTOR, request_id=row.request_id,
                         subject_key=row.subject_key, payload={**detail, "rows_in_batch": deleted,
                                                               "subjects_in_batch": len(rows)})
            _note_result(s, row, "deleted", {"table_version": version, "at": done.isoformat()})
        for model in delta_models(s, uri):
            repin(s, model, table, secret)
        s.commit()
    return deleted


def _record_failure(session_factory: Callable[[], Session], ids: list[int], error: str, counts: dict[str, int],
                    step: str, uri: str) -> int:
    with session_factory() as s:
        _failed(s, _rows(s, ids), error)
        s.commit()
    counts["failed"] += len(ids)
    log.warning("source erasure: %s owed on %s (%d subject(s)) failed: %s", step, uri, len(ids), error)
    return 0


def _purge_step(session_factory: Callable[[], Session], uri: str, secret: str, counts: dict[str, int],
                now: Any) -> int:
    ids = _claim(session_factory, uri, "deleted", now)
    if not ids:
        return 0
    try:
        removed = delta.vacuum(uri)
        table = delta.open_table(uri)
    except Exception as exc:  # noqa: BLE001 - owed and retried
        return _record_failure(session_factory, ids, _error(exc, uri), counts, "purge", uri)
    _warm(session_factory, uri, table, secret)
    with session_factory() as s:
        done = utcnow()
        for row in _rows(s, ids):
            row.status, row.purged_at, row.files_removed, row.last_error = "purged", done, len(removed), None
            row.not_before = done
            s.add(row)
            payload = {"model": row.model_name, "files_removed": len(removed), "reason": row.reason,
                       "absent_after_version": row.delete_version,
                       "unreadable_versions": f"< {row.delete_version}"}
            audit.append(s, type="source_purged", actor=ACTOR, request_id=row.request_id,
                         subject_key=row.subject_key, payload=payload)
            if row.reason == "reingested":
                audit.append(s, type="source_reingested_rows_removed", actor=ACTOR, subject_key=row.subject_key,
                             payload={"model": row.model_name, "table_version": row.delete_version})
            _note_result(s, row, "purged", {"at": done.isoformat(), "files_removed": len(removed),
                                            "absent_after_version": row.delete_version})
        for model in delta_models(s, uri):  # the history before the purge is gone: pin what remains
            repin(s, model, table, secret)
        s.commit()
    return len(removed)


def find_reingested(session_factory: Callable[[], Session], *, secret: str) -> int:
    """Subjects whose erasure was asked for, found again in a table's current version (re-inserted
    upstream): recorded for DELETE and purge like the first time. Jobs never train on them meanwhile
    (``delta.LiveView`` excludes every suppressed key). The tables are scanned with no transaction
    open (on SQLite one would hold the write lock)."""
    with session_factory() as s:
        suppressed = delta.suppressed(s)
        by_uri: dict[str, tuple[str, str]] = {}
        for m in delta_models(s):
            by_uri.setdefault(m.config["source"]["uri"], (m.name, m.config["source"]["subject_column"]))
        s.commit()
    if not suppressed:
        return 0
    found = 0
    for uri, (model_name, column) in by_uri.items():
        table = delta.open_table(uri)
        present = set(delta._clear_ids(table, column, suppressed, secret))  # noqa: SLF001 - same floor
        if not present:
            continue
        with session_factory() as s:
            open_keys = set(s.exec(select(SourceErasure.subject_key).where(
                SourceErasure.uri == uri, SourceErasure.status != "purged")).all())
            held = _still_held(s, uri, present)  # an erasure still running owns these
            for key in sorted(present - open_keys - held):
                s.add(SourceErasure(model_name=model_name, uri=uri, subject_column=column, subject_key=key,
                                    reason="reingested", purge_not_before=utcnow()))
                audit.append(s, type="source_reingested_rows_found", actor=ACTOR, subject_key=key,
                             payload={"model": model_name, "table_version": table.version()})
                found += 1
            s.commit()
    return found


def owed(session: Session) -> list[dict[str, Any]]:
    """Source erasures not yet purged (what an operator checks), oldest first."""
    rows = session.exec(select(SourceErasure).where(SourceErasure.status != "purged")
                        .order_by(col(SourceErasure.created_at))).all()
    return [{"id": r.id, "model": r.model_name, "uri": r.uri, "status": r.status, "reason": r.reason,
             "attempts": r.attempts, "last_error": r.last_error, "request_id": r.request_id,
             "purge_not_before": as_utc(r.purge_not_before)} for r in rows]


def after_job(session_factory: Callable[[], Session], *, secret: str) -> dict[str, int]:
    """After a job's commit (and on the housekeeping beat): find re-ingested subjects, then drain.
    Never raises for an unreachable table: the work stays owed and the next run retries it."""
    with session_factory() as s:
        if not delta_models(s):
            return {}
    try:
        find_reingested(session_factory, secret=secret)
    except Exception as exc:  # noqa: BLE001 - the next run checks again; never a clear id in the log
        log.warning("source erasure: re-ingestion check skipped: %s",
                    exc.detail if isinstance(exc, delta.SourceUnavailable) else type(exc).__name__)
    try:
        return drain(session_factory, secret=secret)
    except Exception as exc:  # noqa: BLE001 - claimed rows come back after the lease; the next run retries
        log.warning("source erasure: drain stopped: %s", type(exc).__name__)
        return {"failed": 1}


def certificate_entries(session: Session, request_id: str) -> list[dict[str, Any]]:
    """What a request's certificate states about the organisation's tables: the table version after
    which the person is absent, and when the purge ran (or is due: a certificate fetched before it)."""
    rows = session.exec(select(SourceErasure).where(SourceErasure.request_id == request_id)
                        .order_by(col(SourceErasure.id))).all()
    return [{"model": r.model_name, "table": r.uri, "status": r.status,
             "absent_after_version": r.delete_version,
             "deleted_at": as_utc(r.deleted_at).isoformat() if r.deleted_at else None,
             "purged_at": as_utc(r.purged_at).isoformat() if r.purged_at else None,
             "purge_due_by": as_utc(r.purge_not_before).isoformat()} for r in rows]
