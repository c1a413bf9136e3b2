"""The registry-sync outbox's write side (issue 19): one ``RegistrySync`` row per publish target, in
the caller's transaction. Kept apart from ``publishing`` (which reads models and versions to plan a
sync) so that ``models`` can enqueue without an import circle."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_
from sqlmodel import Session, col, select

from app import publish
from app.core.errors import Unprocessable
from app.db.models import Model, RegistrySync, utcnow


def validate(targets: Any, *, session: Session | None = None, model_name: str | None = None) -> list[dict[str, Any]]:
    """A model's ``publish`` list, checked (422 naming every problem). With a session: no registered
    model may be another Lethe model's target too (each would purge the other's versions as history)."""
    problems = publish.validate(targets)
    if not problems and session is not None:
        mine = {publish.target_key(t) for t in targets}
        for other in session.exec(select(Model).where(Model.name != model_name)).all():
            for key in mine & {publish.target_key(t) for t in other.config.get("publish") or []}:
                problems.append(f"{key} is already model {other.name!r}'s publish target")
    if problems:
        raise Unprocessable("; ".join(problems), code="invalid_publish_target")
    return targets


def enqueue(session: Session, *, model_name: str, targets: list[dict[str, Any]], reason: str,
            request_id: str | None = None) -> list[RegistrySync]:
    """One sync per target. A pending row of the same target that no delivery holds absorbs the new
    one (a sync reconciles the whole registry, so one run covers both)."""
    rows, now = [], utcnow()
    for t in targets:
        key = publish.target_key(t)
        row = session.exec(select(RegistrySync).where(
            RegistrySync.model_name == model_name, RegistrySync.target == key, RegistrySync.status == "pending",
            or_(col(RegistrySync.lease_until).is_(None), col(RegistrySync.lease_until) < now))
            .order_by(col(RegistrySync.id))).first()
        if row is None:
            row = RegistrySync(model_name=model_name, target=key, reason=reason)
        if request_id and request_id not in row.request_ids:
            row.request_ids = [*row.request_ids, request_id]
        session.add(row)
        rows.append(row)
    return rows
