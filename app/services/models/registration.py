"""Registering a model: an instance of a plugin spec joins the registry and serves (issue 9).

``prepare`` does all the slow, fallible work without touching the database — load the spec's
examples, key them by subject, train version 1 with the spec's recipe or adopt given weights
(checked to load into ``build(meta)``), measure it, calibrate the exact-retrain reference — and
``commit`` then writes the model, its samples, version 1 and the audit events in one short
transaction. A failure anywhere leaves nothing half-registered (the staged artifact directory is
removed too), and every failure is a :class:`RegistrationFailed` with a message an operator can
act on. On a running stack the registration is a job (``ModelRegistration``: stage, percent) run
by a worker; every replica's DB poll then loads and serves the new model without a restart.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from app.core.errors import Conflict, LetheError, NotFound, Unprocessable
from app.core.security import subject_key
from app.data import delta, registry
from app.db.models import Model, ModelRegistration, ModelVersion, utcnow
from app.ml.spec import SPLITS, Example, ModelSpec
from app.ml.specs import get_spec
from app.services import audit
from app.services.models import catalog as model_service
from app.services.integrations import registry_outbox

log = logging.getLogger("lethe.registration")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Stages and where they sit on the percent bar.
SPAN = {"loading_data": (0, 10), "training": (10, 70), "adopting": (10, 70), "calibrating": (70, 93),
        "committing": (93, 95), "deploying": (95, 100)}
Progress = Callable[[str, float], None]
Calibrate = Callable[..., dict[str, Any]]


class RegistrationFailed(Unprocessable):
    code = "registration_failed"


@dataclass
class Prepared:
    spec_name: str
    spec: ModelSpec
    rows: list[dict[str, Any]]
    n_subjects: int
    model_obj: Any
    meta: dict[str, Any]
    metrics: dict[str, Any]
    reference: dict[str, Any] | None
    method: str  # train, or adopt
    source: dict[str, Any] | None = None  # store "delta": the table and the version read (pinned)


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise Unprocessable("A model name is 1-63 lowercase letters, digits, '-' or '_', starting with a letter "
                            "or digit.", code="invalid_model_name")


def _spec_step(spec_name: str, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except LetheError:
        raise
    except Exception as exc:  # noqa: BLE001 - the plugin's own error, reported, never a crash
        raise RegistrationFailed(f"spec {spec_name!r}: {what} raised {type(exc).__name__}: {exc}") from exc


def _check_examples(spec_name: str, examples: list[Example]) -> None:
    if not isinstance(examples, list) or not all(isinstance(e, Example) for e in examples):
        raise RegistrationFailed(f"spec {spec_name!r}: load_examples must return a list of app.ml.spec.Example")
    splits = {e.split for e in examples}
    if not splits <= set(SPLITS):
        raise RegistrationFailed(f"spec {spec_name!r}: unknown splits {sorted(splits - set(SPLITS))}")
    for split in ("train", "holdout"):  # holdout: the never-trained subjects the MIA gate compares with
        if split not in splits:
            raise RegistrationFailed(f"spec {spec_name!r}: no {split!r} examples")


def adopt_weights(spec: ModelSpec, spec_name: str, train: list[Example], weights: Path) -> tuple[Any, dict[str, Any]]:
    """``build(make_meta(train))`` with the given safetensors state dict, strictly: every tensor
    present, none extra, every shape equal — or a message naming what does not fit."""
    from safetensors.torch import load_file

    meta = _spec_step(spec_name, "make_meta", lambda: spec.make_meta([e.features for e in train]))
    model = _spec_step(spec_name, "build", lambda: spec.build(meta))
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001
        raise RegistrationFailed(f"the weights are not a readable safetensors file: {exc}") from exc
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(state) & set(expected))
              if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or shapes:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {extra[:5]}" if extra else "",
                 f"shape mismatch {shapes[:5]}" if shapes else ""]
        raise RegistrationFailed(f"the weights do not fit spec {spec_name!r}: " + "; ".join(p for p in parts if p))
    from app.ml import public

    meta = public.declare(spec, model, meta)  # the public part as its source builds it (issue 20)
    model.load_state_dict(state, strict=True)
    try:
        public.check(model, meta, what="the given weights")
    except public.PublicParametersChanged as exc:
        raise RegistrationFailed(str(exc)) from exc
    return public.freeze(model, meta).eval(), meta


def _load(spec: ModelSpec, spec_name: str, secret: str, config: dict[str, Any] | None,
          ) -> tuple[list[Example], int, dict[str, Any] | None]:
    """Keyed examples, subject count, and for ``store: delta`` the source pinned to the version read."""
    if (config or {}).get("store") == "delta":
        source = delta.Source.of(config or {})
        keyed, version = _spec_step(spec_name, "example_from_row", lambda: delta.load_examples(spec, source, secret))
        _check_examples(spec_name, keyed)
        return keyed, len({e.subject_id for e in keyed}), source.config(version)
    examples = _spec_step(spec_name, "load_examples", spec.load_examples)
    _check_examples(spec_name, examples)
    keys: dict[str, str] = {}
    keyed = [replace(e, subject_id=keys.setdefault(e.subject_id, subject_key(secret, e.subject_id))) for e in examples]
    return keyed, len(keys), None


def prepare(*, spec_name: str, secret: str, workdir: Path, device: Any, seed: int = 0,
            training: dict[str, Any] | None = None, weights: Path | None = None, calibrate: Calibrate | None = None,
            progress: Progress | None = None, config: dict[str, Any] | None = None) -> Prepared:
    """Everything slow and fallible, before any write (see the module docstring)."""
    from app.ml.train import evaluate, train_for_registration

    report = progress or (lambda stage, fraction: None)
    spec = get_spec(spec_name)
    report("loading_data", 0.0)
    keyed, n_subjects, source = _load(spec, spec_name, secret, config)
    rows = [{"subject_key": e.subject_id, "split": e.split, "features": e.features, "label": int(e.label)}
            for e in keyed]
    # Workers only ever see subject keys; train on the same IDs so that anything derived from
    # them at training time (e.g. SISA shard assignment) matches at unlearning time.
    train = [e for e in keyed if e.split == "train"]
    if weights is not None:
        report("adopting", 0.0)
        model_obj, meta = adopt_weights(spec, spec_name, train, weights)
        method = "adopt"
    else:
        report("training", 0.0)
        model_obj, meta = _spec_step(spec_name, "training", lambda: train_for_registration(
            spec, train, training=training, workdir=workdir, device=device, seed=seed,
            progress=lambda f: report("training", f)))
        method = "train"
    train_acc = _spec_step(spec_name, "evaluation", lambda: evaluate(spec, model_obj, meta, train, device=device))
    test = [e for e in keyed if e.split == "test"]
    metrics = {"train_acc": train_acc, "retain_acc": train_acc,
               "test_acc": evaluate(spec, model_obj, meta, test, device=device) if test else None,
               "n_train": len(train), "n_subjects": n_subjects}
    reference = None
    if calibrate is not None:
        report("calibrating", 0.0)
        reference = _spec_step(spec_name, "calibration", lambda: calibrate(
            spec, keyed, model=model_obj, meta=meta, device=device))
    return Prepared(spec_name, spec, rows, n_subjects, model_obj, meta, metrics, reference, method, source)


def commit(session: Session, *, name: str, prepared: Prepared, artifacts_dir: Path, config: dict[str, Any],
           actor: str, data_root: Path | None = None, source: dict[str, Any] | None = None) -> ModelVersion:
    """Write the model, its samples (into the store ``config["store"]`` names), version 1 with
    the manifest of its training data, and the audit events; the caller commits."""
    if session.get(Model, name) is not None:
        raise Conflict(f"A model named {name!r} already exists.", code="model_exists")
    if config.get("publish") is not None:
        registry_outbox.validate(config["publish"], session=session, model_name=name)
    if (store := config.get("store", "rows")) not in registry.STORES:
        raise Unprocessable(f"store must be one of {list(registry.STORES)}, not {store!r}.", code="invalid_store")
    if prepared.reference is not None:
        config = {**config, "reference": prepared.reference}
    if prepared.source is not None:
        config = {**config, "source": prepared.source}
    model = Model(name=name, spec=prepared.spec_name, description=prepared.spec.description, config=config)
    session.add(model)
    session.flush()
    root = data_root or artifacts_dir.parent
    ingest = registry.Ingestor(session, model, root, indexing=True)
    try:
        for i in range(0, len(prepared.rows), 20000):
            ingest.add(prepared.rows[i:i + 20000])
        ingest.finish()
        train = [Example(r["subject_key"], r["split"], r["features"], r["label"]) for r in prepared.rows
                 if r["split"] == "train"]
        manifest = registry.manifest(session, model, train, set(), root)
        if source:  # adopted from a model registry: which version of which registered model (issue 19)
            manifest = {**manifest, "source": source}
        audit.append(session, type="model_registered", actor=actor,
                     payload={"model": name, "spec": prepared.spec_name, "samples": len(prepared.rows),
                              "subjects": prepared.n_subjects, "method": prepared.method, "store": store,
                              "reference": prepared.reference})
        version = model_service.register_trained(session, name=name, model_obj=prepared.model_obj,
                                                 meta=prepared.meta, metrics=prepared.metrics,
                                                 artifacts_dir=artifacts_dir, method=prepared.method, actor=actor,
                                                 manifest=manifest)
    except BaseException:
        ingest.abort()
        raise
    model_service.set_serving(session, name=name, number=version.number, actor=actor)
    if config.get("publish"):  # publish targets get version 1 once it serves
        registry_outbox.enqueue(session, model_name=name, targets=config["publish"], reason="registered")
    return version


def register(session: Session, *, name: str, spec: str, secret: str, artifacts_dir: Path, device: Any,
             seed: int = 0, config: dict[str, Any] | None = None, weights: Path | None = None,
             calibrate: Calibrate | None = None, progress: Progress | None = None, actor: str = "lethe") -> ModelVersion:
    """Prepare and commit in one call (bootstrap, tests). The caller commits; on failure the
    staged artifact directory is removed and nothing was written."""
    check_name(name)
    if session.get(Model, name) is not None:
        raise Conflict(f"A model named {name!r} already exists.", code="model_exists")
    workdir = artifacts_dir / name
    existed = workdir.exists()
    try:
        prepared = prepare(spec_name=spec, secret=secret, workdir=workdir, device=device, seed=seed,
                           training=(config or {}).get("training"), weights=weights, calibrate=calibrate,
                           progress=progress, config=config)
        if progress:
            progress("committing", 0.0)
        return commit(session, name=name, prepared=prepared, artifacts_dir=artifacts_dir, config=dict(config or {}),
                      actor=actor)
    except BaseException:
        if not existed:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


# ---------------------------------------------------------------- on a running stack


def open_registration(session: Session, *, name: str, spec: str, config: dict[str, Any] | None,
                      weights: bytes | None, uploads_dir: Path, actor: str,
                      weights_uri: str | None = None) -> ModelRegistration:
    """Record a registration job (the caller commits, then enqueues it). Refused at once: a bad
    name, an unknown spec, a name that exists or is being registered."""
    check_name(name)
    get_spec(spec)  # UnknownSpec (422) / SpecUnavailable (503) before anything is recorded
    if (config or {}).get("store") == "delta":  # a bad source (no such column) is a 422 now, not a failed job
        source = delta.Source.of(config or {})
        delta.check_schema(delta.open_table(source.uri), source)
    if session.get(Model, name) is not None:
        raise Conflict(f"A model named {name!r} already exists.", code="model_exists")
    busy = session.exec(select(ModelRegistration).where(ModelRegistration.name == name,
                                                        col(ModelRegistration.status).in_(("queued", "running")))).first()
    if busy is not None:
        raise Conflict(f"Model {name!r} is being registered ({busy.id}).", code="registration_in_progress")
    if weights is not None and weights_uri is not None:
        raise Unprocessable("Give weights_base64 or weights_uri, not both.", code="invalid_weights")
    if (config or {}).get("publish") is not None:
        registry_outbox.validate(config["publish"], session=session, model_name=name)
    # The same policy checks as PUT /policy: a bad chain, method field or schedule would otherwise
    # register fine and then fail every erasure job of the model.
    from app.ml import policy, schedule

    problems = policy.validate((config or {}).get("chain"), (config or {}).get("methods")) \
        + schedule.validate((config or {}).get("schedule"))
    if problems:
        raise Unprocessable("; ".join(problems), code="invalid_policy")
    reg = ModelRegistration(name=name, spec=spec, config=dict(config or {}), actor=actor)
    if weights_uri is not None:  # fetched by the worker (issue 19: adopt from a model registry)
        reg.weights_path = weights_uri
    if weights is not None:
        uploads_dir.mkdir(parents=True, exist_ok=True)
        path = uploads_dir / f"{reg.id}.safetensors"
        path.write_bytes(weights)
        reg.weights_path = str(path.resolve())
    session.add(reg)
    audit.append(session, type="model_registration_requested", actor=actor,
                 payload={"registration_id": reg.id, "model": name, "spec": spec, "weights": weights is not None,
                          **({"weights_uri": weights_uri} if weights_uri else {})})
    return reg


def get_registration(session: Session, registration_id: str) -> ModelRegistration:
    reg = session.get(ModelRegistration, registration_id)
    if reg is None:
        raise NotFound(f"No model registration {registration_id}.")
    return reg


def run_registration(session_factory: Callable[[], Session], registration_id: str, *, secret: str,
                     artifacts_dir: Path, device: Any, calibrate: Calibrate | None,
                     publish: Callable[[str, int], Any] = lambda name, version: None,
                     deploy_timeout_s: float = 0.0, replica_ttl_s: float = 10.0,
                     sleep: Callable[[float], None] = time.sleep,
                     fetch_weights: Callable[[str, dict[str, Any], Path], dict[str, Any]] | None = None) -> str:
    """Run one registration job to its end (the worker's task). Returns its final status.

    After the commit it announces the model (``publish``) and, for up to ``deploy_timeout_s``,
    waits until every live replica serves it (stage ``deploying``), so that ``completed`` means
    "predict answers on every replica". A replica that is slower than that does not fail the
    registration (the model exists): the result lists it under ``replicas_pending``."""
    with session_factory() as s:
        reg = s.get(ModelRegistration, registration_id)
        if reg is None or reg.status not in ("queued", "running"):
            return reg.status if reg else "missing"
        reg.status = "running"
        s.add(reg)
        s.commit()
        name, spec, config, weights = reg.name, reg.spec, dict(reg.config), reg.weights_path
    uri, source = (weights, None) if weights and weights.startswith("models:/") else (None, None)

    def progress(stage: str, fraction: float) -> None:
        lo, hi = SPAN.get(stage, (0, 100))
        with session_factory() as s:
            row = s.get(ModelRegistration, registration_id)
            row.stage, row.percent = stage, round(lo + (hi - lo) * max(0.0, min(1.0, fraction)), 1)
            s.add(row)
            s.commit()

    workdir = artifacts_dir / name
    existed = workdir.exists()
    try:
        with session_factory() as s:  # a short read: on SQLite any transaction holds the write lock
            if s.get(Model, name) is not None:
                raise Conflict(f"A model named {name!r} already exists.", code="model_exists")
        if uri is not None:  # adopt from a model registry: downloaded, then checked like a local file
            if fetch_weights is None:
                raise RegistrationFailed("this worker cannot fetch weights from a model registry")
            progress("adopting", 0.0)
            weights = str((artifacts_dir.parent / "uploads" / f"{registration_id}.safetensors").resolve())
            source = fetch_weights(uri, config, Path(weights))
        # The slow part holds no session, so intake, progress and the rest of the stack go on.
        prepared = prepare(spec_name=spec, secret=secret, workdir=workdir, device=device,
                           training=config.get("training"), weights=Path(weights) if weights else None,
                           calibrate=calibrate, progress=progress, config=config)
        progress("committing", 0.0)
        with session_factory() as s:
            version = commit(s, name=name, prepared=prepared, artifacts_dir=artifacts_dir, config=config,
                             actor="worker", source=source)
            result = {"version": version.number, "sha256": version.sha256, "metrics": version.metrics,
                      "method": version.method, **({"source": source} if source else {})}
            s.commit()
        number, pending = result["version"], []
        try:  # the model exists from here on: serving lag or a lost message never fail the registration
            publish(name, number)
            progress("deploying", 0.0)
            deadline = time.monotonic() + deploy_timeout_s
            while True:
                with session_factory() as s:
                    pending = model_service.replicas_missing(s, name=name, version=number, ttl_s=replica_ttl_s)
                if not pending or time.monotonic() >= deadline:
                    break
                sleep(0.2)
        except Exception:  # noqa: BLE001
            log.warning("registration %s: model %s committed; waiting for replicas failed", registration_id, name,
                        exc_info=True)
        with session_factory() as s:
            row = s.get(ModelRegistration, registration_id)
            row.status, row.stage, row.percent, row.finished_at = "completed", "completed", 100.0, utcnow()
            row.result = {**result, "replicas_pending": pending}
            s.add(row)
            s.commit()
        status = "completed"
    except Exception as exc:  # noqa: BLE001 - every failure ends the job visibly, with its reason
        if not existed:
            shutil.rmtree(workdir, ignore_errors=True)
        message = exc.detail if isinstance(exc, LetheError) else f"{type(exc).__name__}: {exc}"
        log.warning("registration %s of model %s failed: %s", registration_id, name, message)
        with session_factory() as s:
            row = s.get(ModelRegistration, registration_id)
            row.status, row.error, row.finished_at = "failed", message, utcnow()
            s.add(row)
            audit.append(s, type="model_registration_failed", actor="worker",
                         payload={"registration_id": registration_id, "model": name, "spec": spec, "error": message})
            s.commit()
        status = "failed"
    if weights and not weights.startswith("models:/"):
        Path(weights).unlink(missing_ok=True)
    return status


def view(reg: ModelRegistration, base_url: str) -> dict[str, Any]:
    return {"id": reg.id, "name": reg.name, "spec": reg.spec, "status": reg.status, "stage": reg.stage,
            "percent": reg.percent, "error": reg.error, "result": reg.result or None, "created_at": reg.created_at,
            "finished_at": reg.finished_at, "status_url": f"{base_url}/v1/models/registrations/{reg.id}",
            "model_url": f"{base_url}/v1/models/{reg.name}"}


def register_demo_model(session: Session, *, name: str, secret: str, artifacts_dir: Path, device: str = "auto",
                        seed: int = 0, progress: Callable[[float], None] | None = None,
                        training: dict[str, Any] | None = None,
                        calibrate: Callable[..., dict[str, Any]] | None = None,
                        spec: str | None = None) -> ModelVersion | None:
    """Register model ``name`` of spec ``spec`` (default: the spec of the same name) as
    ``register`` does; no-op when registered. ``progress(fraction)`` covers the
    whole registration. ``calibrate(spec, examples, model=, meta=, device=)`` measures the
    exact-retrain reference (``Model.config["reference"]``). ``training``: ``None`` for one
    network, ``{"sisa": {"shards": 4, "slices": 3}}`` for a SISA ensemble, ``{"update_log": True}``
    for amnesiac's update log (``train_for_registration``)."""
    from app.ml.device import pick_device

    if session.get(Model, name) is not None:
        return None

    def overall(stage: str, fraction: float) -> None:
        lo, hi = SPAN.get(stage, (0, 100))
        progress((lo + (hi - lo) * fraction) / 100)

    return register(session, name=name, spec=spec or name, secret=secret, artifacts_dir=artifacts_dir,
                    device=pick_device(device), seed=seed,
                    config={"training": training} if training else {}, calibrate=calibrate,
                    progress=overall if progress else None)
