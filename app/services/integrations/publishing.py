"""Publishing clean versions to model registries and purging the ones that carry an erased person
(issue 19; DESIGN.md 4e). The *what*; ``app/publish/<kind>.py`` is the *how* for each kind of registry.

A model's ``config["publish"]`` lists its targets. Whenever a registry may be out of date — an
erasure of the model completed (every live replica serves the clean version), a target was
configured, a model was registered with one — a ``RegistrySync`` outbox row is written in the same
transaction, and housekeeping delivers it after the commit (``deliver_due``), at least once, with
backoff and without ever giving up. A delivery reconciles the registry with Lethe's DB, so repeating
it is harmless and a version deleted behind Lethe's back is simply published again:

1. publish every clean Lethe version from the first one the target got up to the serving one
   (safetensors byte for byte + ``lethe.json`` + an ``MLmodel`` whose pyfunc loads it through the
   spec; ``lethe.*`` tags);
2. move the alias to the serving version only when it is clean and every live replica serves it;
   if the alias points at a version about to be purged and no such version exists, remove it;
3. purge every registry version that is not free of each completed erasure of the model: Lethe's own
   tainted versions, and versions that predate Lethe (the organisation's history, trained on
   everybody) unless the target says ``"history": "keep"``. Purging deletes the artifact files (and
   checks they are gone), then the version (``"on_taint": "archive"``: keeps it, stripped, tagged
   ``lethe.tainted``).

Crash consistency (issue 23): nothing Lethe's DB points at is deleted — the registry's copies are
only ever copies, and the sync that deletes them runs after the commit that made them tainted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_
from sqlmodel import Session, col, select

from app import publish
from app.core.errors import Unprocessable
from app.db.models import ErasureRequest, Model, ModelVersion, RegistrySync, as_utc, utcnow
from app.publish import RegistryError, RegistryTarget, RegistryVersion
from app.services import audit
from app.services.integrations import registry_outbox
from app.services.requests import lifecycle
from app.services.models import catalog as model_service

log = logging.getLogger("lethe.publishing")
ACTOR = "lethe"
MAX_BACKOFF_S = 3600.0
Opener = Callable[[dict[str, Any], Any], RegistryTarget]


def targets_of(model: Model) -> list[dict[str, Any]]:
    return list(model.config.get("publish") or [])


def owe_to_request(session: Session, req: ErasureRequest, *, model_name: str) -> None:
    """At completion: the request's result lists each target of the model as owed until its sync lands."""
    model = model_service.get_model(session, model_name)
    targets = targets_of(model)
    if not targets:
        return
    registry_outbox.enqueue(session, model_name=model_name, targets=targets, reason="completed", request_id=req.id)
    _set_result(req, model_name, {publish.target_key(t): {
        "status": "owed", "required": bool(t.get("required", False)),
        "note": "the registry sync is queued; the registry may still hold versions that carry this person"}
        for t in targets})
    session.add(req)


def _set_result(req: ErasureRequest, model_name: str, registry: dict[str, Any]) -> None:
    result = dict(req.result or {})
    models = dict(result.get("models") or {})
    entry = dict(models.get(model_name) or {})
    entry["registry"] = {**(entry.get("registry") or {}), **registry}
    models[model_name] = entry
    req.result = {**result, "models": models}


# ---------------------------------------------------------------- the plan (from the DB)


def _plan(session: Session, model_name: str, ttl_s: float) -> dict[str, Any]:
    model = model_service.get_model(session, model_name)
    erased = model_service.erased_request_ids(session, model_name)
    versions = {}
    for v in session.exec(select(ModelVersion).where(ModelVersion.model_name == model_name)).all():
        versions[v.number] = {"number": v.number, "sha256": v.sha256, "state": v.state, "parent": v.parent,
                              "method": v.method, "path": v.artifact_path, "free_of": sorted(v.free_of),
                              "manifest": v.manifest, "metrics": v.metrics, "spec": model.spec,
                              "taint": sorted(erased - set(v.free_of))}
    serving = model.serving_version
    everywhere = serving is not None and not model_service.replicas_missing(session, name=model_name, version=serving,
                                                                            ttl_s=ttl_s)
    return {"model": model_name, "erased": sorted(erased), "versions": versions, "serving": serving,
            "everywhere": everywhere, "targets": {publish.target_key(t): t for t in targets_of(model)}}


def tags_of(v: dict[str, Any]) -> dict[str, str]:
    from app.publish.mlflow import free_of_tag

    verification = (v["metrics"] or {}).get("verification") or {k: v["metrics"].get(k) for k in
                                                                 ("test_acc", "retain_acc", "forget_acc", "mia_auc")
                                                                 if k in (v["metrics"] or {})}
    return {"lethe.version": str(v["number"]), "lethe.sha256": v["sha256"], "lethe.parent": str(v["parent"] or ""),
            "lethe.method": v["method"], "lethe.free_of": free_of_tag(v["free_of"]),
            "lethe.data_manifest": json.dumps(v["manifest"], sort_keys=True, default=str)[:5000],
            "lethe.verification": json.dumps(verification, sort_keys=True, default=str)[:5000],
            "lethe.spec": v["spec"]}


def files_of(v: dict[str, Any]) -> dict[str, Path | bytes]:
    from app.publish.pyfunc import INFO, WEIGHTS, mlmodel_yaml

    data = Path(v["path"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != v["sha256"]:
        raise RegistryError(f"version {v['number']}'s artifact does not hash to its recorded sha256; not published",
                            retry=False, code="artifact_checksum_mismatch")
    info = {"model_version": v["number"], "version": v["number"], "sha256": v["sha256"], "spec": v["spec"],
            "parent": v["parent"], "method": v["method"], "free_of_count": len(v["free_of"])}
    created = utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")
    return {WEIGHTS: data, INFO: json.dumps(info, sort_keys=True).encode(),
            "MLmodel": mlmodel_yaml(version=v["number"], sha256=v["sha256"], spec=v["spec"], created=created,
                                    model_uuid=uuid.uuid4().hex).encode()}


def _owner(rv: RegistryVersion, plan: dict[str, Any]) -> dict[str, Any] | None:
    """The Lethe version a registry version is a copy of (version tag and sha256 both match), else None."""
    v = plan["versions"].get(rv.lethe_version) if rv.lethe_version is not None else None
    return v if v is not None and rv.tags.get("lethe.sha256") == v["sha256"] else None


def sync(target: RegistryTarget, config: dict[str, Any], plan: dict[str, Any], done: list[dict[str, Any]]) -> dict[str, Any]:
    """Reconcile one registry with the plan; every step taken is appended to ``done`` as it happens
    (so a failure half-way still audits what reached the registry). Returns the report."""
    regs = target.versions()
    erased, versions, serving = set(plan["erased"]), plan["versions"], plan["serving"]
    copies: dict[int, RegistryVersion] = {}
    tainted: list[tuple[RegistryVersion, dict[str, Any] | None]] = []
    history_kept = []
    for rv in regs:
        if rv.tags.get("lethe.tainted"):
            continue  # archived already: no artifacts left
        owner = _owner(rv, plan)
        if owner is not None:
            if owner["taint"]:
                tainted.append((rv, owner))
            else:
                copies.setdefault(owner["number"], rv)
        elif erased:  # the organisation's history (or a foreign copy): trained on everybody
            if config.get("history", "purge") == "keep":
                history_kept.append(rv.number)
            else:
                tainted.append((rv, None))
    clean = [n for n, v in sorted(versions.items()) if not v["taint"] and v["state"] != "purged"
             and serving is not None and n <= serving and Path(v["path"]).exists()]
    first = min(copies) if copies else serving
    for n in clean:
        if n >= (first if first is not None else n) and n not in copies:
            v = versions[n]
            rv = target.publish(files=files_of(v), tags=tags_of(v), folder=f"v{n}-{v['sha256'][:12]}")
            copies[n] = rv
            done.append({"op": "published", "lethe_version": n, "registry_version": rv.number, "sha256": v["sha256"]})
    alias = config.get("alias")
    current = target.alias_version() if alias else None
    want = copies.get(serving) if serving is not None and plan["everywhere"] and serving in clean else None
    doomed = {rv.number for rv, _ in tainted}
    if alias and want is not None and current != want.number:
        target.move_alias(want.number)
        done.append({"op": "alias_moved", "alias": alias, "registry_version": want.number, "lethe_version": serving,
                     "previous": current})
        current = want.number
    elif alias and current in doomed:
        target.move_alias(None)
        done.append({"op": "alias_removed", "alias": alias, "previous": current})
        current = None
    for rv, owner in tainted:
        carries = owner["taint"] if owner else sorted(erased)
        archive = ({"lethe.tainted": json.dumps({"count": len(carries), "request_ids": carries})[:5000]}
                   if config.get("on_taint", "delete") == "archive" else None)
        files = target.purge(rv, archive_tags=archive)
        done.append({"op": "archived" if archive else "purged", "registry_version": rv.number,
                     "lethe_version": owner["number"] if owner else None, "history": owner is None,
                     "files_deleted": len(files), "carries": len(carries)})
    if swept := target.sweep():  # uploads a cut-off publish left without a version: no purge would find them
        done.append({"op": "orphans_swept", "files_deleted": len(swept)})
    served = copies.get(serving)
    return {"clean_version": {"lethe_version": serving, "registry_version": served.number if served else None},
            "alias": {"name": alias, "registry_version": current} if alias else None,
            "alias_pending": bool(alias and served is not None and current != served.number),
            "history_kept": history_kept}


# ---------------------------------------------------------------- delivery (housekeeping)


def _claim(session_factory: Callable[[], Session], now: datetime, lease_s: float, limit: int) -> list[int]:
    """Due rows, at most one per target, none whose target another delivery holds right now."""
    with session_factory() as s:
        held = {(m, t) for m, t in s.exec(select(RegistrySync.model_name, RegistrySync.target).where(
            RegistrySync.status == "pending", col(RegistrySync.lease_until) >= now)).all()}
        q = (select(RegistrySync).where(RegistrySync.status == "pending", col(RegistrySync.next_attempt_at) <= now,
                                        or_(col(RegistrySync.lease_until).is_(None), col(RegistrySync.lease_until) < now))
             .order_by(col(RegistrySync.id)).limit(limit))
        if s.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        ids = []
        for r in s.exec(q).all():
            if (r.model_name, r.target) in held:
                continue
            held.add((r.model_name, r.target))
            r.lease_until = now + timedelta(seconds=lease_s)
            s.add(r)
            ids.append(r.id)
        s.commit()
        return ids


def deliver_due(session_factory: Callable[[], Session], *, settings: Any, now: datetime | None = None,
                limit: int = 20, opener: Opener | None = None) -> dict[str, int]:
    """Run every due sync once; returns counts of delivered, retried and dropped rows."""
    now = as_utc(now) if now else utcnow()
    counts = {"delivered": 0, "retry": 0, "dropped": 0}
    lease_s = settings.registry_timeout_s * 20 + 60
    for row_id in _claim(session_factory, now, lease_s, limit):
        counts[deliver_one(session_factory, row_id, settings=settings, now=now, opener=opener)] += 1
    return counts


def deliver_one(session_factory: Callable[[], Session], row_id: int, *, settings: Any, now: datetime,
                opener: Opener | None = None) -> str:
    with session_factory() as s:
        row = s.get(RegistrySync, row_id)
        model_name, key = row.model_name, row.target
        plan = _plan(s, model_name, settings.replica_ttl_s) if model_service.get_model_or_none(s, model_name) else None
    config = plan["targets"].get(key) if plan else None
    done: list[dict[str, Any]] = []
    report, error = None, None
    if config is not None:
        try:
            target = (opener or publish.open_target)(config, settings)
            try:
                report = sync(target, config, plan, done)
            finally:
                target.close()
        except RegistryError as exc:
            error = exc
        except OSError as exc:  # a local artifact vanished (purged meanwhile): the next sync re-plans
            error = RegistryError(f"{type(exc).__name__} reading a local artifact")
    with session_factory() as s:
        row = s.get(RegistrySync, row_id)
        outcome = _record(s, row, config=config, report=report, error=error, done=done, now=now, settings=settings)
        s.commit()
    return outcome


def _record(s: Session, row: RegistrySync, *, config: dict[str, Any] | None, report: dict[str, Any] | None,
            error: RegistryError | None, done: list[dict[str, Any]], now: datetime, settings: Any) -> str:
    row.lease_until = None
    base = {"model": row.model_name, "target": row.target, "sync_id": row.id, "request_ids": row.request_ids}
    for step in done:
        kind = {"published": "registry_published", "purged": "registry_version_purged",
                "archived": "registry_version_purged", "orphans_swept": "registry_orphans_purged"
                }.get(step["op"], "registry_alias_changed")
        audit.append(s, type=kind, actor=ACTOR, payload={**base, **step})
    if config is None:
        row.status, row.last_error = "dropped", "the target is no longer configured for this model"
        s.add(row)
        _report_to_requests(s, row, None, None, done)
        return "dropped"
    row.attempts += 1
    if error is None and not report["alias_pending"]:
        row.status, row.delivered_at, row.last_error, row.report = "delivered", now, None, {**report, "steps": done}
        outcome = "delivered"
    else:
        delay = min(MAX_BACKOFF_S, settings.registry_backoff_s * 2 ** (row.attempts - 1))
        row.next_attempt_at = now + timedelta(seconds=delay)
        row.last_error = str(error) if error else "waiting for every live replica to serve the clean version"
        row.report = {**(report or {}), "steps": done}
        outcome = "retry"
        if error is not None:
            audit.append(s, type="registry_sync_failed", actor=ACTOR, payload={
                **base, "error": str(error), "code": error.code, "attempt": row.attempts,
                "next_attempt_at": row.next_attempt_at.isoformat()})
            log.warning("registry sync %s of model %s (%s) failed, attempt %d: %s", row.id, row.model_name,
                        row.target, row.attempts, error)
    s.add(row)
    # The clean version is there and every tainted version gone (the alias may still wait for replicas).
    landed = error is None and report is not None and report["clean_version"]["registry_version"] is not None
    _report_to_requests(s, row, config, report if landed else None, done)
    return outcome


def _report_to_requests(s: Session, row: RegistrySync, config: dict[str, Any] | None, report: dict[str, Any] | None,
                        done: list[dict[str, Any]]) -> None:
    """What each completed request's result says about this target."""
    purged = [d["registry_version"] for d in done if d["op"] in ("purged", "archived")]
    q = select(ErasureRequest).where(col(ErasureRequest.id).in_(row.request_ids))
    if s.get_bind().dialect.name == "postgresql":  # another model's job may be writing the same result
        q = q.with_for_update()
    for req in s.exec(q).all():
        previous = ((req.result or {}).get("models", {}).get(row.model_name, {}).get("registry") or {}).get(row.target, {})
        so_far = sorted(set(previous.get("registry_versions_purged", [])) | set(purged), key=int)
        if config is None:
            entry = {**previous, "status": "dropped", "note": "the target was removed from the model's config "
                     "before this erasure's sync landed; the registry was not checked"}
        elif report is None:
            entry = {**previous, "status": "owed", "last_error": row.last_error, "attempts": row.attempts,
                     "next_attempt_at": row.next_attempt_at.isoformat(), "registry_versions_purged": so_far}
        else:
            entry = {"status": "published", "required": bool(config.get("required", False)),
                     "registry_version": report["clean_version"]["registry_version"],
                     "lethe_version": report["clean_version"]["lethe_version"],
                     "alias": report["alias"], "alias_pending": report["alias_pending"],
                     "registry_versions_purged": so_far}
            if report["history_kept"]:
                entry["history_kept"] = report["history_kept"]
                entry["note"] = (f"registry versions {', '.join(report['history_kept'])} predate Lethe and were kept "
                                 "(\"history\": \"keep\"): they were trained on everybody, this person included")
        _set_result(req, row.model_name, {row.target: entry})
        s.add(req)
        if entry["status"] != "owed":
            lifecycle.release(s, req, actor=ACTOR)  # a request a required target held completes now


def registry_hold(req: ErasureRequest) -> str | None:
    """``lifecycle`` hold: a target marked ``required`` that does not have this erasure's clean version yet."""
    for entry in ((req.result or {}).get("models") or {}).values():
        for target in (entry.get("registry") or {}).values():
            if target.get("required") and target.get("status") == "owed":
                return "awaiting_registry"
    return None


def fetch_for_registration(uri: str, config: dict[str, Any], dest: Path, *, settings: Any) -> dict[str, Any]:
    """Adoption (``register --weights models:/NAME@ALIAS``): the weights of that registry version, saved
    to ``dest``; the server is the model's first MLflow publish target, else ``LETHE_MLFLOW_TRACKING_URI``."""
    from app.publish.mlflow import fetch_weights

    tracking_uri = next((t["tracking_uri"] for t in config.get("publish") or [] if t.get("kind") == "mlflow"),
                        settings.mlflow_tracking_uri)
    if not tracking_uri:
        raise Unprocessable(f"{uri} names a model registry, but no MLflow server is configured: give the model a "
                            "publish target or set LETHE_MLFLOW_TRACKING_URI", code="registry_not_configured")
    try:
        return fetch_weights(uri, tracking_uri=tracking_uri, settings=settings, dest=dest)
    except RegistryError as exc:
        raise Unprocessable(f"could not adopt {uri}: {exc}", code=exc.code) from None


def status(session: Session, *, name: str) -> list[dict[str, Any]]:
    """Per target: configuration (no credentials), the last delivered sync and what is still owed."""
    model = model_service.get_model(session, name)
    out = []
    for t in targets_of(model):
        key = publish.target_key(t)
        rows = session.exec(select(RegistrySync).where(RegistrySync.model_name == name, RegistrySync.target == key)
                            .order_by(col(RegistrySync.id).desc()).limit(20)).all()
        last = next((r for r in rows if r.status == "delivered"), None)
        owed = [r for r in rows if r.status == "pending"]
        out.append({"target": key, "config": t, "last_sync": last.report if last else None,
                    "owed": [{"id": r.id, "reason": r.reason, "attempts": r.attempts, "last_error": r.last_error,
                              "next_attempt_at": r.next_attempt_at} for r in owed]})
    return out
