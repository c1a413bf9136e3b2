"""The interim forget of a scheduled model (issue 16; DESIGN.md 4d): at once, cheaply, honestly.

``collect`` (shared with exact jobs) has already flagged the batch's samples deleted, so no later
training sees them. Then, by the model's ``schedule.interim``:

- ``params``: clear the subjects' own parameters (``ModelSpec.forget_subjects``: the MovieLens
  user row) -- no training -- and publish the result as a new version;
- ``auto``: the model's approximate methods, cheapest first (the order of its ``auto`` chain),
  under the usual gates and the audited admission, within what is left of the exact cycle's
  approximate budget (``schedule.interim_budget_s``: ``approx_budget_share`` of the exact cost per
  exact cycle, all its interims together); the first that passes is published, else ``params``;
- ``none``: nothing is published; the requests wait for the exact job with their samples excluded.

The interim version is a real version, hot-swapped like any other, but it is *not* ``free_of``
the batch: shared parameters (MovieLens item rows) still carry the subjects' influence, so the
requests become ``scheduled``, never ``completed``, and after the exact job completes them the
interim version is tainted (never served again, artifact purged). Its verification report (quick
MIA against the reference band, forget accuracy against the exact-retrain reference) is stored
with the job and shown on each request, whether or not it passes.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.db.models import Model, UnlearningJob
from app.ml import policy
from app.services.models import jobs
from app.services.models import catalog as model_service
from app.services.models import schedule as schedule_service
from app.services.models.jobs import ACTOR
from workers.lease import holds_fence
from workers.problem import ForgetProblem, collect

if TYPE_CHECKING:
    from workers.context import Worker


def run_interim(w: Worker, job_id: str, *, progress: Callable[[str, float], None]) -> bool:
    """Collect, forget cheaply, publish. True when an interim version now waits to be deployed;
    False when the job ended here (``interim: none`` scheduled the batch already, or fenced off)."""
    with w.session() as s:
        model = s.get(Model, s.get(UnlearningJob, job_id).model_name)
        sched = schedule_service.schedule_of(model)
        budget = schedule_service.interim_budget_s(s, model) if sched.interim == "auto" else 0.0
        expected = schedule_service.interim_costs_s(s, model) if budget > 0 else {}
    # params trains nothing: the interim keeps its parent's data manifest (no retain hash to compute),
    # and its verification measures a random 2 x ``Gates.max_retain`` retain rows, not all of them
    # (on the demo model, loading the 80k retain rows was 3 of an interim job's 5 s under load).
    from workers.verify.report import Gates

    p = collect(w, job_id, manifest=budget > 0, retain_sample=None if budget > 0 else 2 * Gates().max_retain)
    if sched.interim == "none" or (not p.forget and not p.subject_ids):
        with w.session() as s:
            job = s.get(UnlearningJob, job_id)
            jobs.record_outcome(s, job, method="none", attempts=[], version_after=None, seconds=0.0)
            schedule_service.complete_interim(s, job, w.settings, deploy_s=0.0)
            s.commit()
        return False
    from app.ml.checkpoint import load_checkpoint

    progress("unlearning", 0.0)
    served, meta, _ = load_checkpoint(p.artifact_path, p.spec, expected_sha256=p.sha256, device=w.device)
    t0 = time.monotonic()
    seed = w.settings.job_seed if w.settings.job_seed is not None else random.SystemRandom().randrange(2**31)
    attempts: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    name, candidate, new_meta = interim_forget(p, served, meta, w.device, seed, budget, attempts,
                                               expected=expected, skipped=skipped)
    seconds = time.monotonic() - t0
    progress("publishing", 0.0)
    with w.session() as s:
        job = s.get(UnlearningJob, job_id)
        if not holds_fence(s, w, job, serving=p.serving):
            s.commit()
            return False
        report = attempts[-1]["report"]
        new_metrics = {k: report.get(k) for k in ("retain_acc", "test_acc", "forget_acc", "mia_auc") if k in report}
        version = model_service.register_trained(
            s, name=p.model_name, model_obj=candidate, meta=new_meta, metrics={**new_metrics, "interim": True},
            artifacts_dir=Path(w.settings.artifacts_dir), method=name, parent=p.serving,
            free_of=list(p.free_of), actor=ACTOR, manifest=p.manifest)  # NOT free of the batch; the parent's data
        model_service.set_serving(s, name=p.model_name, number=version.number, actor=ACTOR)
        job.timings = {**job.timings, "seed": seed, **({"interim_skipped": skipped} if skipped else {})}
        jobs.record_outcome(s, job, method=name, attempts=attempts, version_after=version.number, seconds=seconds)
        s.commit()
        w.publish(p.model_name, version.number)
    return True


def interim_forget(p: ForgetProblem, served: Any, meta: dict[str, Any], device: Any, seed: int, budget: float,
                   attempts: list[dict[str, Any]], *, expected: dict[str, float] | None = None,
                   skipped: list[dict[str, Any]] | None = None) -> tuple[str, Any, dict[str, Any]]:
    """The interim candidate: ``auto``'s approximate methods within ``budget`` seconds (0: none),
    else ``params``. A forget set above the spec's ``max_forget_share`` skips the approximate
    methods, as the ordinary ``auto`` does (``policy.plan``): they are measured to fail there, and an
    interim that pays for a failing attempt before clearing the rows wastes the seconds it exists
    to save (the heavy MovieLens user: 0.6-1.5 s a job). ``expected``: per method, what an attempt
    of it has cost on this model (``schedule.interim_costs_s``); a method expected to cost more
    than the budget left is not started (noted in ``skipped``): cut short, it fails its gates.
    The bench scores this function."""
    rule = policy.DEFAULT_ESCALATION.get(p.spec.name, policy.FALLBACK_ESCALATION)
    n_train = len(p.forget) + len(p.retain)
    if budget > 0 and n_train and len(p.forget) / n_train > rule.max_forget_share:
        budget = 0.0
    chosen = (_cheapest_passing(p, served, meta, device, seed, budget, attempts, expected or {},
                                skipped if skipped is not None else []) if budget > 0 else None)
    return chosen if chosen is not None else _clear_params(p, served, meta, device, attempts)


def _verify(p: ForgetProblem, candidate: Any, meta: dict[str, Any], device: Any, *, method: str,
            original: tuple[Any, dict[str, Any]]) -> Any:
    from workers.verify.report import Gates, verify_candidate

    return verify_candidate(spec=p.spec, candidate=candidate, meta=meta, forget=p.forget, retain=p.retain,
                            test=p.test, holdout=p.holdout, forget_subject_ids=p.subject_ids, baseline=p.baseline,
                            reference=p.reference, gates=Gates(), device=device, exact=False, method=method,
                            forget_unseen=p.forget_unseen, original=original)


def _clear_params(p: ForgetProblem, served: Any, meta: dict[str, Any], device: Any,
                  attempts: list[dict[str, Any]]) -> tuple[str, Any, dict[str, Any]]:
    """``params``: the subjects' own parameters cleared, nothing trained; verified for the record."""
    started = time.perf_counter()
    candidate = copy.deepcopy(served)
    new_meta = p.spec.forget_subjects(candidate, dict(meta), p.subject_ids)
    unlearn_s = time.perf_counter() - started
    report = _verify(p, candidate, new_meta, device, method="params", original=(served, meta))
    attempts.append({"method": "params", "exact": False, "seed": None, "seconds": unlearn_s,
                     "verify_seconds": report.seconds, "passed": report.passed, "report": report.to_dict()})
    return "params", candidate, new_meta


def _cheapest_passing(p: ForgetProblem, served: Any, meta: dict[str, Any], device: Any, seed: int, budget: float,
                      attempts: list[dict[str, Any]], expected: dict[str, float],
                      skipped: list[dict[str, Any]]) -> tuple[str, Any, dict[str, Any]] | None:
    """``auto``: the model's approximate methods in chain order, each gated, within ``budget`` (> 0)
    seconds; one whose ``expected`` cost exceeds what is left is skipped, not cut short."""
    from workers.unlearning import get_method
    from workers.unlearning.base import UnlearnContext

    chain = p.chain or list(policy.effective(p.spec.name, {})["chain"])
    spent = 0.0
    for name in [m for m in chain if not policy.METHODS.get(m, True)]:
        if spent >= budget:
            break
        left = budget - spent
        if name in expected and expected[name] > left:
            skipped.append({"method": name, "expected_s": round(expected[name], 3), "left_s": round(left, 3)})
            continue
        started = time.perf_counter()
        ctx = UnlearnContext(spec=p.spec, model=served, meta=meta, forget=p.forget, retain=p.retain,
                             forget_subject_ids=list(p.subject_ids), recipe=p.spec.recipe, device=device, seed=seed,
                             time_budget_s=None if math.isinf(budget) else left,
                             config={**policy.DEFAULT_CONFIGS.get(p.spec.name, {}).get(name, {}),
                                     **(p.methods or {}).get(name, {})}, calibration=list(p.test))
        result = get_method(name)(ctx)
        unlearn_s = time.perf_counter() - started
        report = _verify(p, result.model, result.meta, device, method=name, original=(served, meta))
        spent += time.perf_counter() - started
        attempts.append({"method": name, "exact": False, "seed": seed, "seconds": unlearn_s,
                         "verify_seconds": report.seconds, "passed": report.passed, "report": report.to_dict(),
                         "budget_s": None if math.isinf(left) else round(left, 3)})
        if report.passed:
            return name, result.model, result.meta
    return None
