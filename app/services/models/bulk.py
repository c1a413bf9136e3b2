"""Bulk ingest: many subjects' samples in one streamed JSON Lines upload (issue 9).

One line per sample: ``{"subject_id": "...", "features": {...}, "label": 1, "split": "train"}``
(``split`` defaults to train). Lines are parsed and validated as they arrive and written in
chunks into the model's store (rows or columnar), all in one transaction: an invalid line fails
the whole upload with its line number (nothing is kept), so a retry of the same file is safe.
Samples of suppressed subjects (who asked to be erased) are refused and counted, never stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from app.core.errors import Unprocessable
from app.core.security import subject_key
from app.data import registry
from app.db.models import Suppression
from app.ml.spec import SPLITS
from app.services import audit
from app.services.models import catalog as model_service

MAX_ERRORS = 20


class BulkIngest:
    def __init__(self, session: Session, *, model_name: str, secret: str, root: Path, actor: str) -> None:
        self.session, self.secret, self.actor = session, secret, actor
        self.model = model_service.get_model(session, model_name)
        self.spec = model_service.spec_of(session, model_name)
        self.ingest = registry.Ingestor(session, self.model, root)
        self.lines = self.refused = 0
        self.subjects: set[str] = set()
        self.keys: dict[str, str] = {}

    def feed(self, lines: list[bytes]) -> None:
        rows, errors = [], []
        for raw in lines:
            self.lines += 1
            if not raw.strip():
                continue
            try:
                rows.append(self._row(json.loads(raw)))
            except (ValueError, TypeError, KeyError) as exc:
                errors.append({"line": self.lines, "reason": "invalid_sample", "message": str(exc)[:300]})
                if len(errors) >= MAX_ERRORS:
                    break
        if errors:
            raise Unprocessable(f"{len(errors)} invalid line(s) (first at line {errors[0]['line']}); nothing was "
                                "ingested.", code="invalid_sample", errors=errors)
        keys = sorted({r["subject_key"] for r in rows})
        suppressed = set(self.session.exec(select(Suppression.subject_key).where(
            col(Suppression.subject_key).in_(keys)).distinct()).all()) if keys else set()
        kept = [r for r in rows if r["subject_key"] not in suppressed]
        self.refused += len(rows) - len(kept)
        self.subjects |= {r["subject_key"] for r in kept}
        self.ingest.add(kept)

    def _row(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise ValueError("each line must be a JSON object")
        sid = item["subject_id"]
        if not isinstance(sid, (str, int)) or isinstance(sid, bool) or not str(sid):
            raise ValueError("subject_id must be a non-empty string or integer")
        label = item["label"]
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < self.spec.num_classes:
            raise ValueError(f"label must be an integer in [0, {self.spec.num_classes})")
        split = item.get("split", "train")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}")
        sid = str(sid)
        key = self.keys.get(sid) or self.keys.setdefault(sid, subject_key(self.secret, sid))
        return {"subject_key": key, "split": split, "label": label,
                "features": self.spec.validate_input(item.get("features"))}

    def finish(self) -> dict[str, Any]:
        n = self.ingest.finish() - 0
        audit.append(self.session, type="samples_ingested", actor=self.actor,
                     payload={"model": self.model.name, "count": n, "subjects": len(self.subjects),
                              "refused_suppressed": self.refused, "bulk": True})
        return {"model": self.model.name, "store": registry.store_of(self.model), "ingested": n,
                "subjects": len(self.subjects), "refused_suppressed": self.refused, "lines": self.lines}

    def abort(self) -> None:
        self.ingest.abort()
