"""The ``delta`` store (issue 18): a model's training data stays in the organisation's own Delta
Lake table (delta-rs, the ``deltalake`` package: no Spark, no JVM), and an erasure reaches it.

What Lethe keeps: the model's ``source`` (``uri``, ``subject_column``, ``split_column``, and the
pinned table ``version`` it reads), the subject -> rows index (``SubjectRows`` with ``part`` = the
pinned version; keys are HMAC pseudonyms, never clear ids) and the deletion state, exactly as for
the columnar store. Jobs read the pinned version minus every deleted, owed or suppressed subject,
scanned in record batches; the manifest names ``{uri, version}`` and a hash of its files.

Erasure in the table is two audited steps (Databricks documents GDPR deletion the same way: delete,
then vacuum): ``DELETE WHERE subject_column IN (...)`` (a new table version; delta-rs rewrites the
files that held the rows, copy-on-write), then, after the model's ``purge_after_s`` but always
before the request's legal ``due_at``, the physical purge: ``VACUUM`` with zero retention removes
every file no current version references, so no earlier version can be read back. Crash
consistency (the rule of issue 23): a completing job only records the subjects in the durable
``SourceErasure`` list in its own transaction; the table changes after that commit, in
:func:`drain`, which is idempotent and retried (by the worker right after the job, and by the
housekeeping beat), so an unreachable table leaves the erasure visibly owed, never lost.

The clear subject id is needed only for the ``DELETE`` predicate: it is found by scanning the
subject column and matching HMAC keys in memory, and it never reaches a log, an audit payload or
an error message (errors are recorded by type name only).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import delete, func, insert
from sqlmodel import Session, col, select

from app.core.errors import Unavailable, Unprocessable
from app.core.security import subject_key
from app.data.view import RowsView
from app.db.models import ErasureRequest, Model, SourceErasure, SubjectRows, Suppression, as_utc, utcnow
from app.ml.spec import Example, ModelSpec

log = logging.getLogger("lethe.delta")

# Default delay between the DELETE and the physical purge. The trade-off: a reader that opened an
# older table version (the organisation's own jobs, time travel) fails once its files are vacuumed,
# while the person's rows stay on disk until then. One hour lets running queries finish; the purge
# is always capped to happen at least PURGE_MARGIN before the request's legal deadline.
DEFAULT_PURGE_AFTER_S = 3600.0
# The longest delay accepted: the purge is capped before the legal due_at (at most 3 months) anyway,
# and a larger value (1e300, infinity) would overflow the completing job's timedelta.
MAX_PURGE_AFTER_S = 366 * 86400.0
PURGE_MARGIN = timedelta(days=2)
HOLDOUT_SHARE = 10  # a table without a split column: 1 subject in 10 (by key) is held out for the MIA gate
BATCH_ROWS = 65536
# What a job keeps of decoded row groups while a method draws batches (shared by its train, test and
# held-out views; least recently used out first). A row group of the benchmark's table (1M rows,
# five columns) decodes to tens of MB, so this holds a few; a larger table adds row groups, not
# memory. The price: a random training batch over more row groups than fit decodes some again
# (bench/delta_scale.py, "one training batch").
CACHE_BYTES = 256 << 20
POOL: pa.MemoryPool | None = None  # the Arrow pool scans allocate from (None: the default; tests measure with a proxy)
COMMIT_RETRIES = 5  # a conflicting concurrent writer: reload and retry the conditional delete
RETRY_BACKOFF_S = 60.0  # an unreachable table: the next drain after this long
# Statuses of erasure requests whose subjects may never be trained on again from the table
# (owed or done); a subject found in the table again is "re-ingested" and purged again.
SUPPRESSING = ("received", "queued", "running", "verifying", "deploying", "completed", "no_data", "failed")


class SourceUnavailable(Unavailable):
    code = "source_unavailable"


@dataclass(frozen=True)
class Source:
    uri: str
    subject_column: str
    split_column: str | None = None
    version: int | None = None
    purge_after_s: float = DEFAULT_PURGE_AFTER_S

    @classmethod
    def of(cls, config: dict[str, Any]) -> Source:
        src = config.get("source")
        if not isinstance(src, dict) or not isinstance(src.get("uri"), str) or not src["uri"]:
            raise Unprocessable('store "delta" needs source.uri (a table path or object-store URI).',
                                code="invalid_source")
        if not isinstance(src.get("subject_column"), str) or not src["subject_column"]:
            raise Unprocessable('store "delta" needs source.subject_column.', code="invalid_source")
        split = src.get("split_column")
        if split is not None and not isinstance(split, str):
            raise Unprocessable("source.split_column is a column name or null.", code="invalid_source")
        after = config.get("purge_after_s", DEFAULT_PURGE_AFTER_S)
        if (not isinstance(after, int | float) or isinstance(after, bool) or not math.isfinite(after)
                or not 0 <= after <= MAX_PURGE_AFTER_S):
            raise Unprocessable(f"purge_after_s is a number of seconds from 0 to {MAX_PURGE_AFTER_S:.0f}.",
                                code="invalid_source")
        return cls(src["uri"], src["subject_column"], split, src.get("version"), float(after))

    def config(self, version: int) -> dict[str, Any]:
        return {"uri": self.uri, "subject_column": self.subject_column, "split_column": self.split_column,
                "version": version}


def _deltalake() -> Any:
    try:
        import deltalake
    except ImportError as exc:  # the optional extra
        raise Unprocessable('store "delta" needs the deltalake package: pip install "lethe[delta]".',
                            code="delta_unavailable") from exc
    return deltalake


def open_table(uri: str, version: int | None = None) -> Any:
    """The table (at ``version``), or :class:`SourceUnavailable`: the message names the table's
    URI and the error type only (a delta-rs message may quote a predicate)."""
    deltalake = _deltalake()
    try:
        return deltalake.DeltaTable(uri, version=version)
    except Exception as exc:  # noqa: BLE001 - unreachable, missing, vacuumed: the caller retries
        raise SourceUnavailable(f"Delta table {uri!r} (version {version}) cannot be read: "
                                f"{type(exc).__name__}.", code="source_unavailable") from exc


def check_schema(table: Any, source: Source) -> None:
    names = [f.name for f in table.schema().fields]
    for what, column in (("subject_column", source.subject_column), ("split_column", source.split_column)):
        if column is not None and column not in names:
            raise Unprocessable(f"The Delta table has no column {column!r} (source.{what}); its columns are "
                                f"{names}.", code="invalid_source")


def _row_groups(table: Any) -> tuple[Any, list[Any]]:
    """The pinned version's dataset and its row groups (as fragments), in file order."""
    dataset = table.to_pyarrow_dataset()
    return dataset, [group for fragment in dataset.get_fragments() for group in fragment.split_by_row_group()]


def _group_batches(group: Any, dataset: Any, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """One row group's rows (only ``columns``) in record batches of at most BATCH_ROWS, in file
    order. The batches are slices of the group's decoded columns: a caller that keeps one keeps them."""
    return group.to_batches(schema=dataset.schema, columns=columns, batch_size=BATCH_ROWS, use_threads=False,
                            memory_pool=POOL, batch_readahead=0)


def _batches(table: Any, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The table's rows, row group by row group (a dataset-wide scan reads ahead into the next files)."""
    dataset, groups = _row_groups(table)
    for group in groups:
        yield from _group_batches(group, dataset, columns)


def _keys_of(values: pa.Array, secret: str, memo: dict[Any, str]) -> list[str]:
    for v in pc.unique(values).to_pylist():
        if v not in memo:
            memo[v] = subject_key(secret, str(v))
    return [memo[v] for v in values.to_pylist()]


class Subjects:
    """The distinct subject values of one table version and their keys: one scan of the subject
    column and one HMAC per person, then every filter is a vectorised ``is_in`` on clear values
    (which never leave this process). Cached per (uri, version): a version never changes."""

    def __init__(self, table: Any, column: str, secret: str) -> None:
        rows: dict[Any, int] = {}  # one entry per person, whatever the table's size
        dataset, groups = _row_groups(table)
        for group in groups:
            for batch in _group_batches(group, dataset, [column]):
                counted = pc.value_counts(batch.column(column))
                for v, n in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(),
                                strict=True):
                    if v is not None:  # a row without a subject is nobody's
                        rows[v] = rows.get(v, 0) + n
            batch = None  # noqa: F841 - this group's decoded column goes before the next is read
        self.values = pa.array(list(rows))
        self.rows = list(rows.values())
        self.keys = [subject_key(secret, str(v)) for v in rows]
        self.key_of = dict(zip(rows, self.keys, strict=True))

    def values_where(self, keep: Any) -> pa.Array:
        """The clear values whose key satisfies ``keep`` (an Arrow array for ``is_in``)."""
        return self.values.filter(pa.array([bool(keep(k)) for k in self.keys], pa.bool_()))

    def counts(self, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
        return {k: n for k, n in zip(self.keys, self.rows, strict=True) if k not in skip}


_subjects: dict[tuple[str, int, str, int], Subjects] = {}


def subjects(table: Any, column: str, secret: str) -> Subjects:
    ident = (table.table_uri, table.version(), column, hash(secret))
    found = _subjects.get(ident)
    if found is None:
        found = Subjects(table, column, secret)
        if len(_subjects) >= 4:  # a few versions: a job's and the drain's
            _subjects.pop(next(iter(_subjects)))
        _subjects[ident] = found
    return found


def _masks(group: Any, dataset: Any, column: str, wanted: dict[str, pa.Array],
           split_column: str | None = None) -> dict[str, np.ndarray]:
    """For each ``wanted`` name, which rows of one row group have their subject in its values (and,
    with ``split_column``, that split): a bool per row, from the subject (and split) column alone,
    read in batches of at most BATCH_ROWS. Filtered here, not pushed down: files that delta-rs
    rewrote may hold ``string_view`` where others hold ``string``, and pyarrow's statistics
    pruning has no kernel comparing the two."""
    columns = [column] + ([split_column] if split_column else [])
    masks: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    for batch in _group_batches(group, dataset, columns):
        subject = batch.column(column)
        split_of = pc.cast(batch.column(split_column), pa.string()) if split_column else None
        found: dict[int, pa.Array] = {}  # the splits of a table with a split column share one value set
        for name, values in wanted.items():
            if id(values) not in found:
                found[id(values)] = pc.is_in(subject, value_set=values.cast(subject.type))
            mask = found[id(values)]
            if split_of is not None:
                mask = pc.and_(mask, pc.equal(split_of, name))
            masks[name].append(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))
    return {name: np.concatenate(m) if m else np.zeros(0, bool) for name, m in masks.items()}


def _rows_of(table: Any, column: str, values: pa.Array) -> Iterator[pa.Table]:
    """The rows whose subject is one of ``values``, row group by row group: the subject column is
    scanned everywhere, the other columns decoded only in the row groups that hold such rows."""
    dataset, groups = _row_groups(table)
    for group in groups:
        mask = _masks(group, dataset, column, {"": values})[""]
        if mask.any():  # no reference to the decoded group survives the yield
            yield group.to_table(schema=dataset.schema, use_threads=False, memory_pool=POOL).take(
                pa.array(np.flatnonzero(mask)))


def counts(table: Any, column: str, secret: str, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
    """key -> rows of the table's version (the index)."""
    return subjects(table, column, secret).counts(skip)


def _split_of(key: str) -> str:
    return "holdout" if int(key[:8], 16) % HOLDOUT_SHARE == 0 else "train"


def _examples(spec: ModelSpec, batch: pa.RecordBatch | pa.Table, keys: list[str], source: Source) -> Iterator[Example]:
    for row, key in zip(batch.to_pylist(), keys, strict=True):
        e = spec.example_from_row(row)
        split = str(row[source.split_column]) if source.split_column else _split_of(key)
        yield Example(key, split, e.features, int(e.label))


def load_examples(spec: ModelSpec, source: Source, secret: str) -> tuple[list[Example], int]:
    """Registration: the current table version, pinned, as keyed examples (subject ids -> keys)."""
    table = open_table(source.uri)
    check_schema(table, source)
    memo: dict[Any, str] = {}
    out: list[Example] = []
    for batch in _batches(table):
        out += _examples(spec, batch, _keys_of(batch.column(source.subject_column), secret, memo), source)
    return out, table.version()


class Indexer:
    """The subject -> rows index of the pinned version (``SubjectRows``, ``part`` = version)."""

    def __init__(self, session: Session, model: Model) -> None:
        self.session, self.model = session, model
        self.counts: dict[str, int] = {}

    def add(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.counts[r["subject_key"]] = self.counts.get(r["subject_key"], 0) + 1

    def finish(self) -> None:
        version = Source.of(self.model.config).version or 0
        index = [{"model_name": self.model.name, "subject_key": k, "part": version, "offset": 0, "count": n,
                  "deleted": False} for k, n in sorted(self.counts.items())]
        for i in range(0, len(index), 20000):
            self.session.execute(insert(SubjectRows), index[i:i + 20000])


def suppressed(session: Session) -> set[str]:
    """Keys that may never be trained on from a table again: suppressions and erasure requests."""
    keys = set(session.exec(select(Suppression.subject_key)).all())
    keys |= set(session.exec(select(ErasureRequest.subject_key).where(
        col(ErasureRequest.status).in_(SUPPRESSING))).all())
    return keys


def forget_examples(session: Session, model: Model, spec: ModelSpec, keys: list[str], secret: str) -> list[Example]:
    """The subjects' rows in the pinned version (the forget set of a job)."""
    source = Source.of(model.config)
    table = open_table(source.uri, source.version)
    who = subjects(table, source.subject_column, secret)
    wanted = set(keys)
    values = who.values_where(lambda k: k in wanted)
    out: list[Example] = []
    if len(values):
        for batch in _rows_of(table, source.subject_column, values):
            row_keys = [who.key_of[v] for v in batch.column(source.subject_column).to_pylist()]
            out += _examples(spec, batch, row_keys, source)
    return out


class _RowGroups:
    """Decoded row groups of one pinned version and the live positions in them, least recently
    used out first once they pass ``budget`` bytes (one is always kept: the one being read)."""

    def __init__(self, dataset: Any, budget: int) -> None:
        self.dataset, self.budget = dataset, budget
        self.items: OrderedDict[tuple[str, int], tuple[Any, int]] = OrderedDict()
        self.bytes = 0

    def get(self, key: tuple[str, int], load: Callable[[], Any]) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key][0]
        value = load()
        size = int(value.nbytes)
        self.items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.budget and len(self.items) > 1:
            _, (_, n) = self.items.popitem(last=False)
            self.bytes -= n
        return value


class LiveView(RowsView):
    """The live rows of one split of the pinned version minus the excluded subjects. It keeps one
    bit per table row (live in this split or not) per row group, and reads a row group (all
    columns, for ``example_from_row``) only when a method draws rows from it."""

    def __init__(self, segments: list[Any], bits: list[np.ndarray], sizes: list[int], counts: list[int],
                 cache: _RowGroups, spec: ModelSpec, source: Source, key_of: dict[Any, str], split: str) -> None:
        super().__init__(counts, split)
        self.fragments, self.bits, self.sizes, self.cache = segments, bits, sizes, cache
        self.spec, self.source, self.key_of = spec, source, key_of

    def _positions(self, k: int) -> np.ndarray:
        return np.flatnonzero(np.unpackbits(self.bits[k], count=self.sizes[k])).astype(np.uint32)

    def _rows(self, k: int, local: np.ndarray) -> list[dict[str, Any]]:
        group = self.cache.get(("", k), lambda: self.fragments[k].to_table(
            schema=self.cache.dataset.schema, use_threads=False, memory_pool=POOL))
        positions = self.cache.get((self.split_only, k), lambda: self._positions(k))
        return group.take(pa.array(positions[local])).to_pylist()

    def _example(self, row: dict[str, Any]) -> Example:
        e = self.spec.example_from_row(row)
        return Example(self.key_of[row[self.source.subject_column]], self.split_only, e.features, int(e.label))


def live_views(session: Session, model: Model, spec: ModelSpec, splits: Sequence[str], exclude: set[str],
               secret: str) -> dict[str, LiveView]:
    """The live rows of each split of the pinned version minus ``exclude`` (and the deleted and
    suppressed subjects), from **one** pass over the subject (and split) column, row group by
    row group; no row is decoded until a method draws it. Memory: one bit per table row and
    split, plus :data:`CACHE_BYTES` of decoded row groups once training reads."""
    source = Source.of(model.config)
    deleted = set(session.exec(select(SubjectRows.subject_key).where(
        SubjectRows.model_name == model.name, col(SubjectRows.deleted).is_(True))).all())
    out = exclude | deleted | suppressed(session)
    table = open_table(source.uri, source.version)
    who = subjects(table, source.subject_column, secret)
    if source.split_column:
        live = who.values_where(lambda k: k not in out)
        wanted = {split: live for split in splits}
    else:
        wanted = {split: who.values_where(lambda k, split=split: k not in out and _split_of(k) == split)
                  for split in splits}
    dataset, segments = _row_groups(table)
    bits: dict[str, list[np.ndarray]] = {split: [] for split in splits}
    counts: dict[str, list[int]] = {split: [] for split in splits}
    sizes: list[int] = []
    for group in segments:
        masks = _masks(group, dataset, source.subject_column, wanted, source.split_column)
        sizes.append(len(next(iter(masks.values()))) if masks else 0)
        for split, mask in masks.items():
            bits[split].append(np.packbits(mask))
            counts[split].append(int(np.count_nonzero(mask)))
    cache = _RowGroups(dataset, CACHE_BYTES)
    return {split: LiveView(segments, bits[split], sizes, counts[split], cache, spec, source, who.key_of, split)
            for split in splits}


def manifest(session: Session, model: Model, exclude: set[str]) -> dict[str, Any]:
    """``{store, uri, version, sha256}``: the pinned version's files (path, size) and the subjects
    left out name the exact training data; time travel to ``version`` reads it back (until purged)."""
    source = Source.of(model.config)
    table = open_table(source.uri, source.version)
    digest = hashlib.sha256()
    for path in sorted(table.file_uris()):
        digest.update(path.encode() + b"\0")
    deleted = set(session.exec(select(SubjectRows.subject_key).where(
        SubjectRows.model_name == model.name, col(SubjectRows.deleted).is_(True))).all())
    for key in sorted(exclude | deleted):
        digest.update(key.encode())
    return {"store": "delta", "uri": source.uri, "version": source.version, "sha256": digest.hexdigest()}


# ---------------------------------------------------------------- erasure in the table


def schedule(session: Session, model: Model, keys: list[str], *, reason: str = "erasure",
             now: datetime | None = None) -> int:
    """In the completing job's transaction: drop the subjects from the index and record them in the
    durable to-delete list (the table changes after commit, in :func:`drain`). Returns index rows."""
    source, now = Source.of(model.config), now or utcnow()
    rows = session.exec(select(func.coalesce(func.sum(SubjectRows.count), 0)).where(
        SubjectRows.model_name == model.name, col(SubjectRows.subject_key).in_(keys))).one()
    session.execute(delete(SubjectRows).where(SubjectRows.model_name == model.name,
                                              col(SubjectRows.subject_key).in_(keys)))
    open_keys = set(session.exec(select(SourceErasure.subject_key).where(
        SourceErasure.uri == source.uri, col(SourceErasure.subject_key).in_(keys),
        SourceErasure.status != "purged")).all())
    new = sorted(set(keys) - open_keys)
    earliest: dict[str, ErasureRequest] = {}  # each subject's owed request with the nearest due_at
    for req in session.exec(select(ErasureRequest).where(col(ErasureRequest.subject_key).in_(new),
                                                         col(ErasureRequest.status).in_(SUPPRESSING))
                            .order_by(col(ErasureRequest.due_at))).all():
        earliest.setdefault(req.subject_key, req)
    default_at = now + timedelta(seconds=source.purge_after_s)
    for key in new:
        req, purge_at = earliest.get(key), default_at
        if req is not None and req.due_at is not None:
            purge_at = max(now, min(purge_at, as_utc(req.due_at) - PURGE_MARGIN))
        session.add(SourceErasure(model_name=model.name, uri=source.uri, subject_column=source.subject_column,
                                  subject_key=key, request_id=req.id if req else None, reason=reason,
                                  purge_not_before=purge_at, not_before=now))
    return int(rows)


def _literal(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise TypeError("subject column values must be strings or integers")
    return str(v) if isinstance(v, int) else "'" + v.replace("'", "''") + "'"


def _clear_ids(table: Any, column: str, keys: set[str], secret: str) -> dict[str, list[Any]]:
    """key -> the clear subject values of those keys present in the table (in memory only)."""
    who = subjects(table, column, secret)
    found: dict[str, list[Any]] = {}
    for v in who.values_where(lambda k: k in keys).to_pylist():
        found.setdefault(who.key_of[v], []).append(v)
    return found


def delete_rows(uri: str, column: str, keys: set[str], secret: str,
                sleep: Callable[[float], None] = time.sleep) -> tuple[int, int, set[str]]:
    """``DELETE WHERE column IN (...)``, a conditional commit retried on conflict with a concurrent
    writer. Returns (table version after, rows deleted, keys that had rows)."""
    deltalake = _deltalake()
    for attempt in range(COMMIT_RETRIES):
        table = open_table(uri)
        clear = _clear_ids(table, column, keys, secret)
        if not clear:
            return table.version(), 0, set()
        quoted = '"' + column.replace('"', '""') + '"'
        predicate = f"{quoted} IN ({', '.join(_literal(v) for vs in clear.values() for v in vs)})"
        try:
            metrics = table.delete(predicate)
        except deltalake.exceptions.CommitFailedError:
            sleep(0.2 * (attempt + 1))
            continue
        except Exception as exc:  # noqa: BLE001 - never let the predicate (clear ids) into a message
            raise SourceUnavailable(f"DELETE on Delta table {uri!r} failed: {type(exc).__name__}.") from None
        deleted = int((metrics or {}).get("num_deleted_rows", 0))
        return table.version(), deleted, set(clear)
    raise SourceUnavailable(f"DELETE on Delta table {uri!r} kept conflicting with concurrent writers.")


LOG_RETENTION = "delta.logRetentionDuration"
DEFAULT_LOG_RETENTION = "interval 30 days"  # Delta's default, restored when the table had none


def vacuum(uri: str) -> list[str]:
    """The physical purge. (1) Files behind deletion vectors are rewritten (a DV only masks rows).
    (2) VACUUM with zero retention removes every data file no current version references, so no
    earlier version can be read back. (3) The transaction log is cut at a fresh checkpoint: its old
    JSON commits hold the removed files' column statistics (min/max values, which can be a subject
    id) and the DELETE's own predicate, so log retention is set to 0 for one ``cleanup_metadata``
    and then restored. Returns the data files removed."""
    table = open_table(uri)
    try:
        features = set(getattr(table.protocol(), "writer_features", None) or [])
        if "deletionVectors" in features:
            table.optimize.compact()
            table = open_table(uri)
        removed = list(table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False))
        before = table.metadata().configuration.get(LOG_RETENTION)
        table.alter.set_table_properties({LOG_RETENTION: "interval 0 seconds"})
        try:
            table = open_table(uri)
            table.create_checkpoint()
            table.cleanup_metadata()
        finally:
            open_table(uri).alter.set_table_properties({LOG_RETENTION: before or DEFAULT_LOG_RETENTION})
        return removed
    except SourceUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001
        raise SourceUnavailable(f"The purge of Delta table {uri!r} failed: {type(exc).__name__}.") from None
