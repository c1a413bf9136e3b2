"""Orphans: files no committed row references, left by a transaction that wrote them and rolled
back (a failed commit, a killed worker). Found per model and handed to the to-delete list
(``app/services/storage/deletions.py``), by the reconciler on every beat (issue 23).

What is referenced: the columnar parts in ``SubjectRows``; the weights of every version that is
not ``purged`` and the directories their meta names (SISA slices, update logs). What is looked
at: ``<data_dir>/columnar/<model>/`` and ``<artifacts_dir>/<model>/`` (``v*.safetensors``,
``*.tmp``, ``sisa-*`` and ``updates-*`` directories); other files there are left alone. A model
whose job holds its lock is skipped (the job's new files are not committed yet), and so is any
file younger than ``older_than_s`` (a registration still writing) — for the columnar folder, the
whole folder while any file in it is that young (an ingest of many parts commits only at its end).
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlmodel import Session, select

from app.data import columnar
from app.db.models import Model, ModelVersion, utcnow
from app.ml.checkpoint import companion_dirs, read_meta


def _old(path: Path, older_than_s: float, now: float) -> bool:
    try:
        return now - path.stat().st_mtime >= older_than_s
    except FileNotFoundError:
        return False


def live_files(session: Session, model_name: str) -> tuple[set[Path], set[Path]]:
    """(artifact files, companion directories) of the versions that are not purged."""
    files, dirs = set(), set()
    for v in session.exec(select(ModelVersion).where(ModelVersion.model_name == model_name,
                                                     ModelVersion.state != "purged")).all():
        path = Path(v.artifact_path).resolve()
        files.add(path)
        if path.exists():
            dirs |= {d.resolve() for d in companion_dirs(read_meta(path))}
    return files, dirs


def find(session: Session, *, data_dir: Path, artifacts_dir: Path, older_than_s: float) -> list[Path]:
    """Unreferenced files and directories of every model not locked by a job."""
    now, wall = time.time(), utcnow()
    out: list[Path] = []
    for model in session.exec(select(Model)).all():
        if model.lock_until is not None and model.lock_until > wall:
            continue
        folder = columnar.model_dir(data_dir, model.name)
        files = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
        # An ingest writes a part every PART_ROWS rows and commits at the end, however long it runs:
        # while any file here is young, one may be under way, and its older parts are not orphans.
        if files and all(_old(p, older_than_s, now) for p in files):
            parts = set(columnar.referenced_parts(session, model.name))
            out += [p.resolve() for p in files if columnar.part_number(p) not in parts]
        folder = artifacts_dir / model.name
        if folder.is_dir():
            files, dirs = live_files(session, model.name)
            for p in folder.iterdir():
                r = p.resolve()
                if p.is_dir():
                    orphan = p.name.startswith(("sisa-", "updates-")) and r not in dirs
                else:
                    orphan = p.name.endswith(".tmp") or (p.name.endswith(".safetensors") and r not in files)
                if orphan and _old(p, older_than_s, now):
                    out.append(r)
    return sorted(out)
