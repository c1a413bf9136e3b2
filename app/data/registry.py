"""The data registry: where a model's training samples live, behind one small interface.

Three stores (``Model.config["store"]``): ``rows`` (default; one ``Sample`` row per sample, JSON
features — right for the demo sets and up to about a million samples), ``columnar``
(``app/data/columnar.py``: Arrow parts + a subject index in SQL, for tens of millions) and
``delta`` (``app/data/delta.py``: the organisation's own Delta Lake table, read at a pinned
version, erased there after the erasure completes). Intake,
jobs, registration and bulk ingest call only this module, so both stores keep the same rules:
a subject is *held* while any row of theirs remains (deleted or not), rows are flagged deleted
when a job starts and removed when the erasure completes.

Each ``ModelVersion`` records a ``manifest`` of the data it was trained on (``rows``, ``sha256``):
for the row store an order-independent hash of the rows (the sum of per-row SHA-256 values
mod 2**256, so it needs no sort and streams), for the columnar store the parts' bytes plus the
subjects left out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, union
from sqlmodel import Session, col, select

from app.core.config import get_settings
from app.core.errors import Conflict
from app.data import columnar, delta, feature_cache
from app.db.models import Model, Sample, SubjectRows, utcnow
from app.ml.spec import Example
from app.ml.specs import get_spec

STORES = ("rows", "columnar", "delta")


def store_of(model: Model) -> str:
    return (model.config or {}).get("store", "rows")


def holding(session: Session, subject_keys: list[str]) -> dict[str, list[str]]:
    """subject key -> models holding any row of theirs, deleted or not (both stores)."""
    out: dict[str, list[str]] = {}
    if not subject_keys:
        return out
    both = union(  # one round trip for intake, whatever the stores
        select(Sample.subject_key, Sample.model_name).where(col(Sample.subject_key).in_(subject_keys)),
        select(SubjectRows.subject_key, SubjectRows.model_name).where(col(SubjectRows.subject_key).in_(subject_keys)))
    for key, model in session.execute(both).all():
        out.setdefault(key, []).append(model)
    return out


def rows_manifest(examples: Iterable[Example]) -> dict[str, Any]:
    total, n = 0, 0
    for e in examples:
        line = json.dumps([e.subject_id, e.split, int(e.label), e.features], sort_keys=True, separators=(",", ":"))
        total = (total + int.from_bytes(hashlib.sha256(line.encode()).digest(), "big")) % (1 << 256)
        n += 1
    return {"store": "rows", "rows": n, "sha256": f"{total:064x}"}


def check_ingestible(model: Model) -> None:
    """409 ``external_store`` for a model whose rows live outside Lethe (a Delta table): samples sent
    to Lethe for it would be stored nowhere while the index counted them."""
    if store_of(model) == "delta":
        raise Conflict(f"Model {model.name!r} reads its training data from a Delta table: add the rows to "
                       "that table; Lethe reads rows appended there when it next pins a version (after an erasure's "
                       "DELETE).", code="external_store")


class Ingestor:
    """Adds rows ``{subject_key, split, label, features}`` to one model's store in the caller's
    transaction; ``abort`` undoes what the store wrote outside the database. A Delta model's rows
    live in the organisation's table: only registration (``indexing=True``, the rows it read from
    the pinned version) indexes them; samples sent through the API are a 409 ``external_store``."""

    def __init__(self, session: Session, model: Model, root: Path, *, indexing: bool = False) -> None:
        self.session, self.model = session, model
        self.columnar = columnar.Writer(session, root, model.name) if store_of(model) == "columnar" else None
        self.delta = None
        if store_of(model) == "delta":  # the rows stay in the organisation's table: index them only
            if not indexing:
                check_ingestible(model)
            self.delta = delta.Indexer(session, model)
        self.rows = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        if self.delta is not None:
            self.delta.add(rows)
        elif self.columnar is not None:
            self.columnar.add(rows)
        elif rows:
            now = utcnow()
            self.session.execute(insert(Sample), [{**r, "model_name": self.model.name, "deleted": False,
                                                   "created_at": now} for r in rows])
        self.rows += len(rows)

    def finish(self) -> int:
        if self.delta is not None:
            self.delta.finish()
        if self.columnar is not None:
            self.columnar.finish()
        return self.rows

    def abort(self) -> None:
        if self.columnar is not None:
            self.columnar.abort()


def take_forget(session: Session, model: Model, keys: list[str], root: Path) -> list[Example]:
    """The subjects' rows (deleted or not), now flagged deleted: excluded from every later use.
    Their cached backbone features (``feature_cache``, derived data) are deleted at once."""
    feature_cache.drop(root, model.name, keys)
    if store_of(model) == "delta":
        rows = delta.forget_examples(session, model, _spec(model), keys, _secret())
        columnar.mark_deleted(session, model.name, keys)
        return rows
    if store_of(model) == "columnar":
        rows = columnar.forget_examples(session, root, model.name, keys)
        columnar.mark_deleted(session, model.name, keys)
        return rows
    samples = list(session.exec(select(Sample).where(Sample.model_name == model.name,
                                                     col(Sample.subject_key).in_(keys))).all())
    for r in samples:
        if not r.deleted:
            r.deleted = True
            session.add(r)
    return [Example(r.subject_key, r.split, r.features, r.label) for r in samples]


def live(session: Session, model: Model, split: str, exclude: set[str], root: Path,
         sample: int | None = None) -> Sequence[Example]:
    """The live rows of a split minus ``exclude``: a list (rows) or a lazy view (columnar, delta).
    ``sample``: at most that many rows, drawn at random (rows store; the lazy views read only what
    their caller indexes anyway) -- for a caller that only measures, never trains."""
    return live_splits(session, model, (split,), exclude, root, samples={split: sample} if sample else None)[split]


def live_splits(session: Session, model: Model, splits: Sequence[str], exclude: set[str],
                root: Path, samples: dict[str, int] | None = None) -> dict[str, Sequence[Example]]:
    """:func:`live` for several splits (``samples``: split -> at most that many rows, as ``sample``);
    the delta store finds them all in one pass over its table."""
    if store_of(model) == "delta":
        return dict(delta.live_views(session, model, _spec(model), splits, exclude, _secret()))
    if store_of(model) == "columnar":
        return {split: columnar.LiveView(session, root, model.name, split, exclude) for split in splits}
    # Columns, not ORM objects: building 100k Sample instances cost more than reading them (issue 16:
    # this load is most of an interim job's time on the demo model).
    def rows(split: str) -> list[Example]:
        q = select(Sample.subject_key, Sample.split, Sample.features, Sample.label).where(
            Sample.model_name == model.name, Sample.split == split, col(Sample.deleted).is_(False))
        if (samples or {}).get(split):
            q = q.order_by(func.random()).limit(samples[split])
        return [Example(key, split_, features, label) for key, split_, features, label in session.exec(q).all()
                if key not in exclude]

    return {split: rows(split) for split in splits}


def manifest(session: Session, model: Model, retain: Sequence[Example], exclude: set[str], root: Path) -> dict[str, Any]:
    """What a version trains on: the store's record of the retain rows, and for a model with a public
    backbone the feature cache (``feature_cache.manifest``) its head trains from."""
    if store_of(model) == "delta":
        out = {**delta.manifest(session, model, exclude), "rows": len(retain)}
    elif store_of(model) == "columnar":
        out = {**columnar.manifest(root, model.name, session, exclude), "rows": len(retain)}
    else:
        out = rows_manifest(retain)
    cache = feature_cache.manifest(root, model.name, retain)
    return {**out, "feature_cache": cache} if cache is not None else out


def purge(session: Session, model: Model, keys: list[str], root: Path) -> int:
    """Remove the subjects' rows (and any cached features of theirs) for good (the erasure completed).
    For ``delta``: dropped from the index and recorded as owed to the table; the table itself changes
    after commit (``app/services/integrations/source_erasure.py``)."""
    feature_cache.drop(root, model.name, keys)
    if store_of(model) == "delta":
        return delta.schedule(session, model, keys)
    if store_of(model) == "columnar":
        return columnar.purge(session, root, model.name, keys)
    res = session.exec(delete(Sample).where(Sample.model_name == model.name, col(Sample.subject_key).in_(keys)))
    return res.rowcount


def _spec(model: Model) -> Any:
    return get_spec(model.spec)


def _secret() -> str:
    return get_settings().subject_key_secret
