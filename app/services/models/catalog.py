"""Model registry: demo-model registration, versions, taint checks, replicas, rollback.

A version is *tainted* for a model when an erasure of that model has completed (or is
being deployed) and the version is not free of it. Tainted versions are never loaded,
served or rolled back to (DESIGN.md section 5).
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from app.core.errors import Conflict, NotFound
from app.data.delta import DEFAULT_PURGE_AFTER_S
from app.db.models import ErasureTarget, Model, ModelVersion, Replica, utcnow
from app.ml.specs import get_spec
from app.publish import target_key
from app.services import audit
from app.services.integrations import registry_outbox

log = logging.getLogger("lethe.models")


def get_model(session: Session, name: str) -> Model:
    model = session.get(Model, name)
    if model is None:
        raise NotFound(f"No model named {name!r}.")
    return model


def get_model_or_none(session: Session, name: str) -> Model | None:
    return session.get(Model, name)


def get_version(session: Session, name: str, number: int) -> ModelVersion:
    v = session.exec(select(ModelVersion).where(ModelVersion.model_name == name, ModelVersion.number == number)).first()
    if v is None:
        raise NotFound(f"Model {name!r} has no version {number}.")
    return v


def serving_version(session: Session, name: str) -> ModelVersion | None:
    model = get_model(session, name)
    return None if model.serving_version is None else get_version(session, name, model.serving_version)


def erased_request_ids(session: Session, name: str) -> set[str]:
    """Requests whose erasure from this model completed or is being deployed."""
    rows = session.exec(select(ErasureTarget.request_id).where(ErasureTarget.model_name == name,
                                                                col(ErasureTarget.status).in_(("done",)))).all()
    return set(rows)


def taint_of(session: Session, version: ModelVersion) -> list[str]:
    """Completed erasures this version still carries (empty list: clean)."""
    return sorted(erased_request_ids(session, version.model_name) - set(version.free_of))


def register_trained(session: Session, *, name: str, model_obj: Any, meta: dict[str, Any],
                     metrics: dict[str, Any], artifacts_dir: Path, method: str = "train",
                     parent: int | None = None, free_of: list[str] | None = None, actor: str = "lethe",
                     manifest: dict[str, Any] | None = None) -> ModelVersion:
    """Write a verified network as the next version of ``name`` (safetensors + sha256)."""
    from app.ml.checkpoint import save_checkpoint

    last = session.exec(select(ModelVersion).where(ModelVersion.model_name == name)
                        .order_by(col(ModelVersion.number).desc())).first()
    number = (last.number + 1) if last else 1
    # A fresh name per write, never v<N>.safetensors alone: a job whose commit was lost (killed
    # worker, DB blip) leaves its file as an orphan, and the retry reuses the number N. If the
    # reconciler had already put that orphan on the to-delete list, a shared name would let the
    # drain delete the retry's committed weights (the list's contract: a pending path is never reused).
    path = artifacts_dir / name / f"v{number}-{secrets.token_hex(4)}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"model": name, "version": number, "parent": parent, "method": method, "metrics": metrics,
            "data_manifest": manifest or {}}
    sha = save_checkpoint(path, model_obj, meta, info)
    version = ModelVersion(model_name=name, number=number, parent=parent, artifact_path=str(path.resolve()),
                           sha256=sha, method=method, metrics=metrics, free_of=sorted(free_of or []),
                           manifest=manifest or {})
    session.add(version)
    session.flush()
    audit.append(session, type="model_version_created", actor=actor,
                 payload={"model": name, "version": number, "parent": parent, "method": method, "sha256": sha,
                          "metrics": metrics, "data_manifest": manifest or {}})
    return version


def set_serving(session: Session, *, name: str, number: int, actor: str, event: str = "model_version_published") -> None:
    model = get_model(session, name)
    previous = model.serving_version
    model.serving_version = number
    session.add(model)
    audit.append(session, type=event, actor=actor, payload={"model": name, "version": number, "previous": previous})


def spec_of(session: Session, name: str) -> Any:
    """The spec instance of model ``name`` (resolved by entry point, never by the model's name)."""
    return get_spec(get_model(session, name).spec)


ANY_MODEL = "*"  # Replica rows under this name say only that the replica is live


def replicas_missing(session: Session, *, name: str, version: int, ttl_s: float) -> list[str]:
    """Live replicas (by their liveness row) that do not yet serve ``name`` at ``version`` or later."""
    live = {r.replica_id for r in live_replicas(session, name=ANY_MODEL, ttl_s=ttl_s)}
    serving = {r.replica_id for r in live_replicas(session, name=name, ttl_s=ttl_s)
               if r.version is not None and r.version >= version}
    return sorted(live - serving)


def live_replicas(session: Session, *, name: str, ttl_s: float) -> list[Replica]:
    cutoff = utcnow() - timedelta(seconds=ttl_s)
    return list(session.exec(select(Replica).where(Replica.model_name == name, col(Replica.last_seen) >= cutoff)
                             .order_by(col(Replica.replica_id))).all())


def heartbeat(session: Session, *, replica_id: str, model_name: str, version: int | None, loaded_at) -> None:  # noqa: ANN001
    row = session.get(Replica, (replica_id, model_name))
    if row is None:
        row = Replica(replica_id=replica_id, model_name=model_name)
    row.version, row.loaded_at, row.last_seen = version, loaded_at, utcnow()
    session.add(row)


def describe(session: Session, *, name: str, ttl_s: float) -> dict[str, Any]:
    model = get_model(session, name)
    spec = get_spec(model.spec)
    versions = session.exec(select(ModelVersion).where(ModelVersion.model_name == name)
                            .order_by(col(ModelVersion.number))).all()
    return {
        "name": name,
        "spec": model.spec,
        "description": model.description,
        "serving_version": model.serving_version,
        "input_schema": spec.input_schema,
        "input_example": spec.input_example,
        "predict_example": {"inputs": [spec.input_example]},
        "recipients": model.config.get("recipients") or [],
        "replicas": [{"replica_id": r.replica_id, "version": r.version, "loaded_at": r.loaded_at,
                      "last_seen": r.last_seen} for r in live_replicas(session, name=name, ttl_s=ttl_s)],
        "versions": [{"version": v.number, "parent": v.parent, "method": v.method, "state": v.state,
                      "sha256": v.sha256, "metrics": v.metrics, "free_of_requests": len(v.free_of),
                      "tainted_by_requests": len(taint_of(session, v)),
                      "data_manifest": v.manifest,
                      "created_at": v.created_at} for v in versions],
    }


def list_models(session: Session) -> list[Model]:
    return list(session.exec(select(Model).order_by(col(Model.name))).all())


def rollback(session: Session, *, name: str, number: int, actor: str) -> ModelVersion:
    version = get_version(session, name, number)
    if version.state == "purged":
        raise Conflict(f"Version {number} was purged.", code="version_purged")
    taint = taint_of(session, version)
    if taint:
        raise Conflict(f"Version {number} still carries {len(taint)} completed erasure(s); it may never be "
                       "served again.", code="tainted_version")
    floor = interim_floor(session, name)
    if floor is not None and number < floor:
        raise Conflict(f"Version {number} predates v{floor}, the interim forget that scheduled erasures rely on "
                       "until their exact version serves; it would serve their own parameters again.",
                       code="tainted_version")
    set_serving(session, name=name, number=number, actor=actor, event="model_rolled_back")
    if targets := get_model(session, name).config.get("publish"):  # the alias follows once replicas swap
        registry_outbox.enqueue(session, model_name=name, targets=targets, reason="rolled_back")
    return version


def interim_floor(session: Session, name: str) -> int | None:
    """The newest interim version a ``scheduled`` erasure of ``name`` relies on (its subjects' own
    parameters are cleared from it and every later version); None when nothing is scheduled."""
    from app.db.models import ErasureRequest

    reqs = session.exec(select(ErasureRequest).join(ErasureTarget, col(ErasureTarget.request_id) == ErasureRequest.id)
                        .where(ErasureTarget.model_name == name, ErasureTarget.status == "scheduled")).all()
    versions = [(((r.result or {}).get("interim") or {}).get(name) or {}).get("version") for r in reqs]
    return max((v for v in versions if isinstance(v, int)), default=None)


def set_recipients(session: Session, *, name: str, recipients: list[dict[str, Any]], actor: str) -> Model:
    """GDPR Art. 19: who received this model (or data from it) and must hear of each erasure."""
    model = get_model(session, name)
    model.config = {**model.config, "recipients": recipients}
    session.add(model)
    audit.append(session, type="recipients_updated", actor=actor,
                 payload={"model": name, "recipients": [r["name"] for r in recipients]})
    return model


def notify_recipients(session: Session, *, name: str, request_id: str, version_before: int | None,
                      version_after: int | None, completed_at: Any) -> list[str]:
    """Art. 19 notices for one completed erasure of model ``name``: an audit record per recipient and,
    where a recipient gave a callback URL, a signed notice from the callback outbox. Returns the names."""
    from app.services.integrations import callbacks

    recipients = get_model(session, name).config.get("recipients") or []
    after = get_version(session, name, version_after) if version_after else None
    for r in recipients:
        if r.get("callback_url"):
            callbacks.enqueue(session, kind="recipient", request_id=request_id, url=r["callback_url"], body={
                "event": "erasure.completed", "request_id": request_id, "model": name,
                "superseded_version": version_before, "clean_version": version_after,
                "clean_sha256": after.sha256 if after else None,
                "completed_at": callbacks.rfc3339(completed_at),
                "instruction": "stop using the superseded version and any copy or output derived from it"})
    if recipients:
        audit.append(session, type="recipients_notified", actor="lethe", request_id=request_id,
                     payload={"model": name, "recipients": [r["name"] for r in recipients]})
    return [r["name"] for r in recipients]


def policy_of(session: Session, *, name: str) -> dict[str, Any]:
    from app.ml import policy

    from app.ml import schedule

    model = get_model(session, name)
    purge = None
    if (model.config or {}).get("store") == "delta":
        purge = float(model.config.get("purge_after_s", DEFAULT_PURGE_AFTER_S))
    sched, source = schedule.parse(model.config.get("schedule"), (model.config.get("reference") or {}).get(
        "retrain_seconds"))
    return {"model": name, "spec": model.spec, **policy.effective(model.spec, model.config), "purge_after_s": purge,
            "publish": list(model.config.get("publish") or []), "schedule": sched.to_dict(),
            "schedule_source": source}


def set_policy(session: Session, *, name: str, changes: dict[str, Any], actor: str) -> dict[str, Any]:
    """Per-model chain / method overrides (issue 9); ``None`` resets a field to the spec default."""
    from app.core.errors import Unprocessable
    from app.ml import policy, schedule

    model = get_model(session, name)
    config = dict(model.config)
    for field in ("chain", "methods", "publish", "schedule"):
        if field in changes:
            if changes[field] is None:
                config.pop(field, None)
            else:
                config[field] = changes[field]
    problems = policy.validate(config.get("chain"), config.get("methods")) + schedule.validate(config.get("schedule"))
    if "purge_after_s" in changes and changes["purge_after_s"] is None:  # null resets to the default
        config.pop("purge_after_s", None)
    elif changes.get("purge_after_s") is not None:
        if config.get("store") != "delta":
            problems.append("purge_after_s applies to models of the delta store only")
        config["purge_after_s"] = float(changes["purge_after_s"])
    if problems:
        raise Unprocessable("; ".join(problems), code="invalid_policy")
    if config.get("publish") is not None:
        registry_outbox.validate(config["publish"], session=session, model_name=name)
    model.config = config
    session.add(model)
    audit.append(session, type="policy_updated", actor=actor,
                 payload={"model": name, "chain": config.get("chain"), "methods": config.get("methods"),
                          "purge_after_s": config.get("purge_after_s"), "schedule": config.get("schedule"),
                          **({"publish": [target_key(t) for t in config.get("publish") or []]}
                             if "publish" in changes else {})})
    if changes.get("publish"):  # at once, for the version serving now (and again after every erasure)
        registry_outbox.enqueue(session, model_name=name, targets=config["publish"], reason="configured")
    return policy_of(session, name=name)
