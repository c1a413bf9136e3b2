"""The durable to-delete list: files change only after the database stops needing them (issue 23).

A completion changes rows and files together. If it deleted files first and its commit then
failed (a DB blip, a killed worker, a lost lease), the database would still point at files that
are gone. So every store and publish target follows one rule:

1. write new files under **new names** (never overwrite a file a committed row points at);
2. in the transaction that stops referencing an old file, call :func:`schedule_deletion` — the
   entry commits or rolls back with the change that made the file obsolete;
3. after the commit, call :func:`drain` (the pipeline does, and so does the reconciler on every
   beat), which deletes each file and only then removes its entry.

A crash between 2 and 3 leaves entries, never a row that points at a missing file; a crash
inside 3 leaves an entry whose file may already be gone (deleting it again is a no-op). Files
written in step 1 by a transaction that then rolled back are orphans: ``app/services/storage/orphans.py``
finds them and schedules them here.

Contract for callers: a path with a pending entry is never reused for a new file (new names are
fresh: version numbers grow, columnar part numbers skip scheduled ones, run directories carry a
random id).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable
from os import PathLike
from pathlib import Path

from sqlalchemy import delete
from sqlmodel import Session, col, select

from app.db.models import PendingDeletion

log = logging.getLogger(__name__)


def schedule_deletion(session: Session, path: str | PathLike[str], *, reason: str = "") -> None:
    """Delete ``path`` (a file or a directory tree) once the caller's transaction commits."""
    session.add(PendingDeletion(path=str(Path(path).resolve()), reason=reason))


def pending(session: Session, under: str | PathLike[str] | None = None) -> list[str]:
    """Paths scheduled and not yet deleted (optionally only those under a directory)."""
    paths = list(session.exec(select(PendingDeletion.path).order_by(col(PendingDeletion.id))).all())
    if under is None:
        return paths
    root = Path(under).resolve()
    return [p for p in paths if Path(p).is_relative_to(root)]


def remove_path(path: str | PathLike[str]) -> None:
    """Delete a file or a directory tree; already gone is fine (a drain may be repeated)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def drain(new_session: Callable[[], Session], *, limit: int = 1000,
          remove: Callable[[str], None] | None = None) -> list[str]:
    """Delete the committed entries' files, then their entries (one commit each, so a crash
    mid-way loses nothing). Returns the paths deleted. A path that cannot be deleted (e.g. a
    permission error) keeps its entry for the next drain and is logged."""
    with new_session() as s:
        entries = [(e.id, e.path) for e in s.exec(select(PendingDeletion).order_by(col(PendingDeletion.id))
                                                   .limit(limit)).all()]
    done: list[str] = []
    remove = remove or remove_path
    for entry_id, path in entries:
        try:
            remove(path)
        except OSError:
            log.warning("could not delete %s; left on the to-delete list", path, exc_info=True)
            continue
        with new_session() as s:  # a bulk DELETE: another drainer may have removed it already
            s.exec(delete(PendingDeletion).where(col(PendingDeletion.id) == entry_id))
            s.commit()
        done.append(path)
    return done


def schedule_all(session: Session, paths: Iterable[str | PathLike[str]], *, reason: str) -> int:
    n = 0
    for path in paths:
        schedule_deletion(session, path, reason=reason)
        n += 1
    return n
