"""Data registry: ingest samples per subject (refused once suppressed) and describe a subject."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from app.core.errors import Conflict, NotFound, Unprocessable
from app.data import registry
from app.db.models import ErasureRequest, Model, Sample, Suppression
from app.ml.spec import SPLITS
from app.ml.specs import get_spec
from app.services import audit


def ingest(session: Session, *, subject_key: str, model_name: str, samples: list[dict[str, Any]],
           actor: str, root: Path) -> int:
    """Add samples of one subject; 409 if the subject has been erased (suppression list)."""
    model = session.get(Model, model_name)
    if model is None:
        raise NotFound(f"No model named {model_name!r}.")
    registry.check_ingestible(model)
    if session.get(Suppression, subject_key) is not None:
        raise Conflict("This subject has asked to be erased; their data may not be ingested again.",
                       code="subject_suppressed")
    spec = get_spec(model.spec)
    rows = []
    for i, s in enumerate(samples):
        try:
            features = spec.validate_input(s.get("features"))
            label = int(s["label"])
            if not 0 <= label < spec.num_classes:
                raise ValueError(f"label must be in [0, {spec.num_classes})")
        except (ValueError, TypeError, KeyError) as exc:
            raise Unprocessable(f"Sample {i}: {exc}", code="invalid_sample") from exc
        split = s.get("split", "train")
        if split not in SPLITS:
            raise Unprocessable(f"Sample {i}: split must be one of {list(SPLITS)}.", code="invalid_sample")
        rows.append({"subject_key": subject_key, "split": split, "features": features, "label": label})
    ingest = registry.Ingestor(session, model, root)
    ingest.add(rows)
    ingest.finish()
    audit.append(session, type="samples_ingested", actor=actor, subject_key=subject_key,
                 payload={"model": model_name, "count": len(rows)})
    return len(rows)


def describe(session: Session, *, subject_key: str) -> dict[str, Any]:
    """What Lethe holds for a subject (GDPR Art. 15) and what was erased.

    ``samples``: live rows per model and split. ``pending_erasure``: rows already withdrawn from
    every use but kept until the erasure completes, because a version that can serve may still
    carry them; ``held_by``: the models that still hold the subject in that sense."""
    held = session.exec(select(Sample.model_name, Sample.split, Sample.deleted, func.count())
                        .where(Sample.subject_key == subject_key)
                        .group_by(Sample.model_name, Sample.split, Sample.deleted)).all()
    samples: dict[str, dict[str, int]] = {}
    pending: dict[str, dict[str, int]] = {}
    for model_name, split, deleted, n in held:
        (pending if deleted else samples).setdefault(model_name, {})[split] = n
    requests = session.exec(select(ErasureRequest).where(ErasureRequest.subject_key == subject_key)
                            .order_by(col(ErasureRequest.received_at))).all()
    return {
        "subject_key": subject_key,
        "suppressed": session.get(Suppression, subject_key) is not None,
        "samples": samples,
        "pending_erasure": pending,
        "held_by": sorted(set(samples) | set(pending)),
        "erasure_requests": [{"id": r.id, "status": r.status, "received_at": r.received_at,
                              "completed_at": r.completed_at} for r in requests],
    }


def require_known(info: dict[str, Any]) -> dict[str, Any]:
    if not info["held_by"] and not info["erasure_requests"] and not info["suppressed"]:
        raise NotFound("Lethe holds nothing about this subject.")
    return info
