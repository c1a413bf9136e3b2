"""Disk and database agree on a stack's data directory (issue 23): every version the database can
still serve or roll back to has its weights (and companion directories), no purged version's file is
left, the to-delete list is drained and no file is left that no row references."""

from __future__ import annotations

import time
from pathlib import Path


def disagreements(db_url: str, data_dir: Path) -> list[str]:
    """What does not hold, one line each (empty: disk and database agree)."""
    from sqlmodel import Session, create_engine, select

    from app.db.models import ModelVersion
    from app.ml.checkpoint import companion_dirs, file_sha256, read_meta
    from app.services.storage import deletions, orphans

    engine = create_engine(db_url)
    out: list[str] = []
    try:
        with Session(engine) as s:
            for v in s.exec(select(ModelVersion)).all():
                where = f"{v.model_name} v{v.number} ({v.state})"
                if v.state == "purged":
                    if Path(v.artifact_path).exists():
                        out.append(f"{where}: purged, but its weights are still on disk")
                elif not Path(v.artifact_path).exists():
                    out.append(f"{where}: rollback-eligible, but its weights are missing")
                elif file_sha256(v.artifact_path) != v.sha256:
                    out.append(f"{where}: weights do not match the recorded sha256")
                else:
                    out += [f"{where}: companion dir {d} missing" for d in companion_dirs(read_meta(v.artifact_path))
                            if not d.is_dir()]
            out += [f"on the to-delete list: {p}" for p in deletions.pending(s)]
            out += [f"orphan: {p}" for p in orphans.find(s, data_dir=data_dir, artifacts_dir=data_dir / "artifacts",
                                                         older_than_s=0)]
    finally:
        engine.dispose()
    return out


def wait_agree(db_url: str, data_dir: Path, timeout: float = 60) -> None:
    """Until the reconciler has drained what a crash left (bounded), then assert agreement."""
    deadline = time.monotonic() + timeout
    while (found := disagreements(db_url, data_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not found, found
