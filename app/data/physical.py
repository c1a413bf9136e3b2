"""Lethe's own database after a purge (issue 18, item 5): deleted rows leave the disk, not just the table.

Measured on the embedded default before this: after the erasure of MovieLens user 547 reported
``completed`` (rows hard-deleted), the SQLite file still held 2,391 copies of that user's feature
bytes and its WAL 4,782, until something checkpointed. So:
  * SQLite runs with ``secure_delete`` (``app/core/db.py``): a deleted row's bytes are overwritten
    with zeros in the page that held them;
  * after the commit that hard-deletes a completing erasure's rows, and before the commit that
    turns its requests ``completed`` (``workers.pipeline.purge_samples``), :func:`compact` runs a
    truncating WAL checkpoint: the WAL's frames (old page images with the rows) are copied back,
    zeroed pages included, and the WAL file is truncated to 0 bytes. It needs a moment without
    readers on an old snapshot; it retries briefly and otherwise reports ``busy`` (the next
    completion or the housekeeping beat tries again);
  * PostgreSQL: ``VACUUM`` of the sample tables, so dead tuples are marked free at once instead of
    at autovacuum's pace. A database cannot promise more: freed space is not zeroed until reused,
    and WAL segments and backups keep the rows until their retention ends (README, Guarantees).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

log = logging.getLogger("lethe.physical")
TABLES = ("sample", "subjectrows")  # where raw samples and their index live


def compact(engine: Engine, *, tries: int = 5, wait_s: float = 0.2) -> dict[str, Any]:
    """Make deleted rows physically gone from the database files (see the module docstring)."""
    if engine.dialect.name == "sqlite":
        raw = engine.raw_connection()  # the DBAPI connection: a checkpoint cannot run inside a transaction
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA busy_timeout=0")  # never stall a worker behind a reader
            try:
                for attempt in range(tries):
                    busy, frames, _ = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                    if not busy:
                        return {"database": "sqlite", "checkpoint": "truncated", "frames": frames, "tries": attempt + 1}
                    time.sleep(wait_s)
            finally:
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()
        finally:
            raw.close()
        log.warning("WAL checkpoint busy after %d tries: erased rows may stay in the WAL until the next one", tries)
        return {"database": "sqlite", "checkpoint": "busy", "tries": tries}
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM {', '.join(TABLES)}"))
        return {"database": "postgresql", "vacuumed": list(TABLES)}
    return {"database": engine.dialect.name}
