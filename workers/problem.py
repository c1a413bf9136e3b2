"""A job's forget problem, built once, and its unlearning: collect -> unlearn -> verify -> publish.

``collect`` flags the batch's raw samples deleted (excluded from every later use at once; the
rows are removed when the erasure completes) and builds a typed :class:`ForgetProblem`: the
forget / retain / test / held-out sets, the subjects, the served version and the model's
references. ``unlearn_and_publish`` hands it to the engine and publishes a passing candidate.

Two rules from issue 8 live here:
  - the retain set leaves out every subject this model still owes an erasure (queued, running
    or failed), not only the batch's: a person whose erasure has not completed is never
    trained on again;
  - utility gates compare with the model's exact-retrain reference (``Model.config["reference"]``)
    or, for a model without one, the fixed bar of its first version — never with the serving
    version, which would ratchet. An exact candidate that serves re-calibrates the reference.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.db import reading
from app.data import registry
from app.db.models import Model, UnlearningJob
from app.ml import policy
from app.ml.spec import Example, ModelSpec
from app.services import audit
from app.services.models import jobs
from app.services.models import catalog as model_service
from app.services.models import schedule as schedule_service
from app.services.models.jobs import ACTOR
from workers.lease import holds_fence

if TYPE_CHECKING:
    from workers.context import Worker


@dataclass(frozen=True)
class ForgetProblem:
    model_name: str
    spec: ModelSpec
    request_ids: list[str]
    policy: str
    forget: list[Example]  # the batch's trained samples
    forget_unseen: list[Example]  # the batch's never-trained samples (same subjects)
    retain: Sequence[Example]  # a list, or a lazy view of a columnar store
    test: Sequence[Example]
    holdout: Sequence[Example]
    subject_ids: list[str]  # as the spec names them (per-subject parameters)
    serving: int
    artifact_path: str
    sha256: str
    free_of: list[str]
    baseline: dict[str, Any]  # fixed utility bar: the first version's metrics
    reference: dict[str, Any] | None
    methods: dict[str, Any] | None  # per-model method overrides (Model.config["methods"])
    chain: list[str] | None  # per-model auto chain (Model.config["chain"])
    manifest: dict[str, Any]  # the retain data a new version is trained on
    # Consecutive auto jobs whose approximate path served nothing (policy.next_failed_streak).
    failed_streak: int = 0


def collect(w: Worker, job_id: str, *, manifest: bool = True, retain_sample: int | None = None) -> ForgetProblem:
    """``manifest=False`` (an interim job, issue 16): the new version keeps the serving version's
    manifest -- its weights are the serving ones with per-subject rows cleared, trained on nothing
    new -- and the retain set is not hashed. ``retain_sample``: a job that trains nothing reads only
    that many retain rows, at random (its verification subsamples them anyway)."""
    root = Path(w.settings.data_dir)
    with w.session() as s:
        job = s.get(UnlearningJob, job_id)
        model = s.get(Model, job.model_name)
        spec = model_service.spec_of(s, job.model_name)
        requests = jobs.requests_of(s, job)
        keys = sorted({r.subject_key for r in requests})
        forget_rows = registry.take_forget(s, model, keys, root)
        for req in requests:
            n = sum(1 for r in forget_rows if r.subject_id == req.subject_key)
            audit.append(s, type="samples_deleted", actor=ACTOR, request_id=req.id, subject_key=req.subject_key,
                         payload={"model": job.model_name, "samples": n, "job_id": job.id})
        serving = model_service.get_version(s, model.name, model.serving_version)
        first = model_service.get_version(s, model.name, 1) if serving.number != 1 else serving
        job.version_before = serving.number
        s.add(job)
        s.commit()  # the deletion flags hold before any training starts
        # Every live sample is read in a reader's transaction: on SQLite a write transaction held for
        # these seconds (BEGIN IMMEDIATE) stalled the model's lease renewal past a short lease (a 1.5 s
        # lease went unrenewed for 4.9 s while the demo model's rows loaded) and another worker took it.
        reading(s)
        owed = jobs.owed_subjects(s, job.model_name) | set(keys)
        live = registry.live_splits(s, model, ("train", "test", "holdout"), owed, root,
                                    samples={"train": retain_sample} if retain_sample else None)
        return ForgetProblem(
            model_name=job.model_name, spec=spec, request_ids=list(job.request_ids), policy=job.policy,
            forget=[r for r in forget_rows if r.split == "train"],
            forget_unseen=[r for r in forget_rows if r.split == "test"],
            retain=live["train"], test=live["test"], holdout=live["holdout"],
            subject_ids=sorted({sid for r in forget_rows if (sid := spec.subject_id_of(r.features))}),
            serving=serving.number, artifact_path=serving.artifact_path, sha256=serving.sha256,
            free_of=list(serving.free_of), baseline=dict(first.metrics), reference=model.config.get("reference"),
            methods=model.config.get("methods"), chain=model.config.get("chain"),
            manifest=registry.manifest(s, model, live["train"], owed, root) if manifest else dict(serving.manifest),
            failed_streak=int((model.config.get("escalation") or {}).get("approx_failed_streak", 0)))


def unlearn_and_publish(w: Worker, job_id: str, p: ForgetProblem, *, progress: Callable[[str, float], None],
                        settle: Callable[[], None] | None = None) -> bool:
    """Unlearn, verify, publish. False when the job ended here (failed, or fenced off).

    ``settle`` (a scheduled model's exact job, ``pipeline.InterimsAlongside.stop``): called before
    publishing; interim versions published meanwhile on top of ``p.serving`` stay in the history --
    the new version is built on the last of them and clears their subjects' own parameters too, as
    they did (their requests are still owed: the new version is not ``free_of`` them)."""
    from app.ml.checkpoint import load_checkpoint
    from workers.unlearning.engine import forget
    from workers.verify.calibrate import absorb_exact

    if not p.forget and not p.subject_ids:
        # The subjects' samples were never trained on (test / holdout only): the serving
        # version is already free of them; record that instead of changing the model.
        with w.session() as s:
            v = model_service.get_version(s, p.model_name, p.serving)
            v.free_of = sorted(set(v.free_of) | set(p.request_ids))
            s.add(v)
            jobs.record_outcome(s, s.get(UnlearningJob, job_id), method="none", attempts=[],
                                version_after=p.serving, seconds=0.0)
            s.commit()
        return True
    # A fresh seed per job, recorded: an erasure is reproducible from its audit trail, and a
    # deterministic unlearner is what the competition metric scores 0 (DESIGN.md section 4).
    seed = w.settings.job_seed if w.settings.job_seed is not None else random.SystemRandom().randrange(2**31)
    progress("unlearning", 0.0)
    served, meta, _ = load_checkpoint(p.artifact_path, p.spec, expected_sha256=p.sha256, device=w.device)
    t0 = time.monotonic()
    outcome = forget(spec=p.spec, model=served, meta=meta, forget=p.forget, retain=p.retain, test=p.test,
                     holdout=p.holdout, forget_subject_ids=p.subject_ids, forget_unseen=p.forget_unseen,
                     policy=p.policy, device=w.device, seed=seed, progress=progress, baseline=p.baseline,
                     reference=p.reference, config=p.methods, failed_streak=p.failed_streak,
                     chains={p.spec.name: tuple(p.chain)} if p.chain else None)
    seconds = time.monotonic() - t0
    progress("publishing", 0.0)
    if settle is not None:
        settle()
    with w.session() as s:
        job = s.get(UnlearningJob, job_id)
        parent, interim_ids = schedule_service.interims_on(s, p.model_name, p.serving)
        if not holds_fence(s, w, job, serving=parent):
            s.commit()  # the job_fenced audit event
            return False
        job.timings = {**job.timings, "seed": seed, "decision": outcome.decision}
        for attempt in outcome.attempts:
            audit.append(s, type="unlearning_attempted", actor=ACTOR,
                         payload={"job_id": job_id, "model": p.model_name, "method": attempt["method"],
                                  "seed": attempt.get("seed"), "passed": attempt["passed"],
                                  "seconds": attempt["seconds"], "gates": _failed_gates(attempt),
                                  "decision": outcome.decision.get("rule"),
                                  "decision_reason": outcome.decision.get("reason")})
        if not outcome.passed:
            jobs.record_outcome(s, job, method=None, attempts=outcome.attempts, version_after=None, seconds=seconds)
            jobs.fail_job(s, job, "no unlearning candidate passed verification (exact ones failed their sanity "
                                  "checks); the serving model is unchanged", w.settings)
            s.commit()
            return False
        report = outcome.attempts[-1]["report"]
        new_metrics = {k: report.get(k) for k in ("retain_acc", "test_acc", "forget_acc", "mia_auc") if k in report}
        new_metrics["train_acc"] = new_metrics.get("retain_acc")
        meta = outcome.meta
        if interim_ids:  # subjects whose interim served while this job trained: their rows stay cleared
            meta = p.spec.forget_subjects(outcome.model, dict(meta), _subject_ids(s, p, interim_ids, w.settings))
            job.timings = {**job.timings, "interims_alongside": len(interim_ids)}
        version = model_service.register_trained(
            s, name=p.model_name, model_obj=outcome.model, meta=meta, metrics=new_metrics,
            artifacts_dir=Path(w.settings.artifacts_dir), method=outcome.method, parent=parent,
            free_of=sorted(set(p.free_of) | set(p.request_ids)), actor=ACTOR, manifest=p.manifest)
        model_service.set_serving(s, name=p.model_name, number=version.number, actor=ACTOR)
        jobs.record_outcome(s, job, method=outcome.method, attempts=outcome.attempts, version_after=version.number,
                            seconds=seconds)
        if report.get("exact"):
            _recalibrate(s, p.model_name, report, absorb_exact, seconds=outcome.attempts[-1].get("seconds"))
        _record_streak(s, p.model_name, policy.next_failed_streak(p.failed_streak, outcome.decision or {},
                                                                  bool(report.get("exact"))))
        for warning in report.get("warnings") or []:
            # An exact candidate below the retrain band serves (it never saw the subjects) but
            # an operator should look: data drift, or a recipe that no longer fits.
            audit.append(s, type="utility_warning", actor=ACTOR,
                         payload={"job_id": job_id, "model": p.model_name, "version": version.number,
                                  "method": outcome.method, "warning": warning})
        s.commit()
        w.publish(p.model_name, version.number)
    return True


def _subject_ids(s: Any, p: ForgetProblem, request_ids: list[str], settings: Any) -> list[str]:
    """The spec's subject ids (e.g. MovieLens user ids) of these requests, from their rows (flagged
    deleted by their interim's collect, kept until their erasure completes)."""
    from app.db.models import ErasureRequest

    keys = sorted({r.subject_key for rid in request_ids if (r := s.get(ErasureRequest, rid)) is not None})
    rows = registry.take_forget(s, model_service.get_model(s, p.model_name), keys, Path(settings.data_dir))
    return sorted({sid for r in rows if (sid := p.spec.subject_id_of(r.features))})


def _failed_gates(attempt: dict[str, Any]) -> list[str]:
    return sorted(k for k, g in (attempt.get("report") or {}).get("gates", {}).items() if not g.get("passed"))


def _record_streak(s: Any, model_name: str, streak: int) -> None:
    model = s.get(Model, model_name)
    state = model.config.get("escalation") or {}
    if state.get("approx_failed_streak", 0) != streak:
        model.config = {**model.config, "escalation": {**state, "approx_failed_streak": streak}}
        s.add(model)


def _recalibrate(s: Any, model_name: str, report: dict[str, Any], absorb: Callable[..., dict[str, Any]],
                 seconds: float | None = None) -> None:
    model = s.get(Model, model_name)
    model.config = {**model.config, "reference": absorb(model.config.get("reference"),
                                                        retain_acc=report.get("retain_acc"),
                                                        test_acc=report.get("test_acc"), seconds=seconds)}
    s.add(model)
