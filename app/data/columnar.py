"""Columnar sample store for training sets too large for one registry row per sample (issue 9).

Layout: ``<data_dir>/columnar/<model>/part-<n>.arrow``: Arrow IPC files, uncompressed so that a
job *memory-maps* them (it touches pages, it does not copy the set), each sorted by subject key,
with columns ``subject_key``, ``split``, ``label`` and ``features`` (a struct). Lethe keeps in SQL
what it must decide on quickly and transactionally: the subject -> rows index
(``SubjectRows``: model, subject, part, offset, count) and the deletion state (``deleted``, set
when a job starts, exactly like ``Sample.deleted``). When an erasure completes, the parts that
held the subject are rewritten without their rows and the index follows (``purge``).

Jobs read the retain set through :class:`LiveView`, a lazy ``Sequence[Example]`` over the live
rows: nothing is materialised until a method draws a batch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import delete, insert, update
from sqlmodel import Session, col, select

from app.db.models import SubjectRows
from app.services.storage import deletions
from app.data.view import RowsView
from app.ml.spec import Example

PART_ROWS = 1_000_000  # rows per part: ~1 s to rewrite one when a subject in it is purged


def model_dir(root: Path, model_name: str) -> Path:
    return root / "columnar" / model_name


def _part_path(root: Path, model_name: str, part: int) -> Path:
    return model_dir(root, model_name) / f"part-{part:05d}.arrow"


def part_number(path: Path) -> int | None:
    """The part number of a ``part-<n>.arrow`` file name, else None."""
    stem, _, num = path.stem.partition("-")
    return int(num) if path.suffix == ".arrow" and stem == "part" and num.isdigit() else None


def _new_part(session: Session, root: Path, model_name: str) -> tuple[int, Path]:
    """A part number never used before by this model's index, its files, or its to-delete list,
    reserved by creating the file exclusively (a concurrent ingest and a purge cannot collide)."""
    folder = model_dir(root, model_name)
    folder.mkdir(parents=True, exist_ok=True)
    used = set(session.exec(select(SubjectRows.part).where(SubjectRows.model_name == model_name).distinct()).all())
    used |= {n for p in folder.glob("part-*.arrow") if (n := part_number(p)) is not None}
    used |= {n for p in deletions.pending(session, folder) if (n := part_number(Path(p))) is not None}
    n = max(used, default=-1) + 1
    while True:
        path = _part_path(root, model_name, n)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return n, path
        except FileExistsError:
            n += 1


def referenced_parts(session: Session, model_name: str) -> list[int]:
    return sorted(set(session.exec(select(SubjectRows.part).where(SubjectRows.model_name == model_name)).all()))


def _open(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _runs(table: pa.Table) -> list[tuple[str, int, int]]:
    """(subject_key, offset, count) of each subject's contiguous rows in a sorted table."""
    counts = pc.value_counts(table["subject_key"])
    out, offset = [], 0
    for key, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True):
        out.append((key, offset, n))
        offset += n
    return out


def _dictionary(table: pa.Table) -> pa.Table:
    """Subject keys and splits dictionary-encoded: a 64-hex key per row would make the columns a
    job scans (to mask deleted and owed subjects) ~16x larger than their int32 codes."""
    for name in ("subject_key", "split"):
        i = table.schema.get_field_index(name)
        if not pa.types.is_dictionary(table.schema.field(i).type):
            table = table.set_column(i, name, pc.dictionary_encode(table[name]))
    return table.combine_chunks()


def _write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)  # a job that memory-mapped the old file keeps reading it


class Writer:
    """Buffers rows and writes them as sorted parts; ``finish`` indexes them (caller commits).
    ``abort`` removes the parts it wrote (nothing half-ingested survives a failure)."""

    def __init__(self, session: Session, root: Path, model_name: str, part_rows: int = PART_ROWS) -> None:
        self.session, self.root, self.model_name, self.part_rows = session, root, model_name, part_rows
        self.buffer: list[dict[str, Any]] = []
        self.written: list[Path] = []
        self.rows = 0

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.buffer.append(row)
            if len(self.buffer) >= self.part_rows:
                self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        table = pa.Table.from_pylist(self.buffer).select(["subject_key", "split", "label", "features"])
        table = _dictionary(table.sort_by("subject_key"))
        part, path = _new_part(self.session, self.root, self.model_name)
        self.written.append(path)
        _write(path, table)
        index = [{"model_name": self.model_name, "subject_key": k, "part": part, "offset": o, "count": n,
                  "deleted": False} for k, o, n in _runs(table)]
        for i in range(0, len(index), 20000):
            self.session.execute(insert(SubjectRows), index[i:i + 20000])
        self.rows += len(self.buffer)
        self.buffer = []

    def finish(self) -> int:
        self._flush()
        return self.rows

    def abort(self) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)


def _index(session: Session, model_name: str, keys: list[str]) -> list[SubjectRows]:
    return list(session.exec(select(SubjectRows).where(SubjectRows.model_name == model_name,
                                                       col(SubjectRows.subject_key).in_(keys))).all())


def forget_examples(session: Session, root: Path, model_name: str, keys: list[str]) -> list[Example]:
    """Every row of these subjects (deleted or not), read by the index's ranges."""
    out: list[Example] = []
    for entry in _index(session, model_name, keys):
        rows = _open(_part_path(root, model_name, entry.part)).slice(entry.offset, entry.count).to_pylist()
        out += [Example(r["subject_key"], r["split"], r["features"], int(r["label"])) for r in rows]
    return out


def mark_deleted(session: Session, model_name: str, keys: list[str]) -> int:
    res = session.execute(update(SubjectRows).where(SubjectRows.model_name == model_name,
                                                    col(SubjectRows.subject_key).in_(keys)).values(deleted=True))
    return res.rowcount


def purge(session: Session, root: Path, model_name: str, keys: list[str]) -> int:
    """Remove these subjects' rows for good: write each part that held them, without their rows,
    as a **new** part, re-index it (keeping the other subjects' deletion flags), and schedule the
    old part for deletion after the caller's commit (``deletions``). Until that commit the old
    index and the old file stay valid together; after it, the new ones do. Returns rows removed."""
    removed = 0
    for part in sorted({e.part for e in _index(session, model_name, keys)}):
        path = _part_path(root, model_name, part)
        table = _open(path)
        keep = pc.invert(pc.is_in(table["subject_key"], value_set=pa.array(keys, pa.string())))
        kept = table.filter(keep)
        removed += table.num_rows - kept.num_rows
        flags = dict(session.exec(select(SubjectRows.subject_key, SubjectRows.deleted).where(
            SubjectRows.model_name == model_name, SubjectRows.part == part)).all())
        session.execute(delete(SubjectRows).where(SubjectRows.model_name == model_name, SubjectRows.part == part))
        if kept.num_rows:
            new_part, new_path = _new_part(session, root, model_name)
            _write(new_path, kept)
            session.execute(insert(SubjectRows), [
                {"model_name": model_name, "subject_key": k, "part": new_part, "offset": o, "count": n,
                 "deleted": flags.get(k, False)} for k, o, n in _runs(kept)])
        deletions.schedule_deletion(session, path, reason=f"{model_name} part {part} rewritten by a purge")
    return removed


class LiveView(RowsView):
    """The live rows of one split, minus ``exclude`` (deleted and owed subjects), lazily: the parts
    are memory-mapped and only the positions of their live rows are kept."""

    def __init__(self, session: Session, root: Path, model_name: str, split: str, exclude: set[str]) -> None:
        deleted = set(session.exec(select(SubjectRows.subject_key).where(
            SubjectRows.model_name == model_name, col(SubjectRows.deleted).is_(True))).all())
        out = pa.array(sorted(exclude | deleted), pa.string())
        self.tables: list[pa.Table] = []
        self.rows: list[pa.Array] = []
        for part in referenced_parts(session, model_name):
            table = _open(_part_path(root, model_name, part))
            mask = pc.and_(pc.equal(table["split"], split), pc.invert(pc.is_in(table["subject_key"], value_set=out)))
            self.tables.append(table)
            self.rows.append(pc.indices_nonzero(mask))
        super().__init__([len(r) for r in self.rows], split)

    def _rows(self, k: int, local: np.ndarray) -> list[dict[str, Any]]:
        return self.tables[k].take(pc.take(self.rows[k], pa.array(local))).to_pylist()

    def _example(self, r: dict[str, Any]) -> Example:
        return Example(r["subject_key"], r["split"], r["features"], int(r["label"]))


def manifest(root: Path, model_name: str, session: Session, exclude: set[str]) -> dict[str, Any]:
    """Rows and a content hash of the data a version is trained on: the parts' bytes plus the
    subjects left out (deleted or owed), so the exact training set can be named and checked."""
    digest = hashlib.sha256()
    for part in referenced_parts(session, model_name):  # not orphans or files awaiting deletion
        with open(_part_path(root, model_name, part), "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    deleted = set(session.exec(select(SubjectRows.subject_key).where(
        SubjectRows.model_name == model_name, col(SubjectRows.deleted).is_(True))).all())
    for key in sorted(exclude | deleted):
        digest.update(key.encode())
    return {"store": "columnar", "sha256": digest.hexdigest()}
