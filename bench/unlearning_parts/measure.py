"""One forget set, measured: every method and the ``auto`` policy, verified and set against retrain.

Each method runs as the engine runs it (``UnlearnContext`` with the spec's and the model's method
config) and is scored by the quick verification gate (``workers/verify/report.py``); the ``auto``
row is ``engine.forget(policy="auto")`` with its escalations. Gaps (``d_*``) and speed-ups are
against the ``retrain`` of the same forget set and seed. An optional audit-mode MIA
(``workers/verify/audit.py``: LiRA / RMIA with reference models) scores every candidate.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from app.ml.spec import Example, ModelSpec
from app.ml.train import evaluate
from bench.unlearning_parts.configs import ForgetSet
from workers.unlearning import METHODS, engine
from workers.unlearning.base import UnlearnContext
from workers.verify.audit import score_target, train_reference_models
from workers.verify.report import Gates, verify_candidate


def param_change(before: torch.nn.Module, after: torch.nn.Module) -> float | None:
    """||after - before|| / ||before|| over all weights; None when the shapes differ (rebuilt meta).

    0 flags a method that left the model as it was: on a model with no measurable membership
    signal the gate passes such a candidate too, so the chains must not rely on it.
    """
    a, b = before.state_dict(), after.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return None
    den = sum(float(a[k].double().pow(2).sum()) for k in a)
    num = sum(float((b[k].double().cpu() - a[k].double().cpu()).pow(2).sum()) for k in a)
    return math.sqrt(num / den) if den else None


def _accepts(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


@dataclass
class Stage:
    """What every run of one (config, seed, forget set) shares."""

    spec: ModelSpec
    fs: ForgetSet
    test: list[Example]
    holdout: list[Example]
    device: torch.device
    seed: int
    reference: dict[str, Any] | None
    gates: Gates
    method_config: dict[str, dict[str, Any]]
    # The auto chain to run (a registered model's ``config["chain"]``); None: the spec default.
    chain: list[str] | None = None

    def verify(self, model, meta, baseline, *, exact: bool, method: str, served_conf=None):
        extra = {"forget_unseen": self.fs.unseen} if _accepts(verify_candidate, "forget_unseen") else {}
        if served_conf is not None:
            extra["served_conf"] = served_conf
        return verify_candidate(
            spec=self.spec, candidate=model, meta=meta, forget=self.fs.forget, retain=self.fs.retain, test=self.test,
            holdout=self.holdout, forget_subject_ids=self.fs.subject_ids, baseline=baseline, reference=self.reference,
            gates=self.gates, device=self.device, exact=exact, method=method, **extra,
        )


def report_fields(report) -> dict[str, Any]:
    return {
        "forget_acc": report.forget_acc, "retain_acc": report.retain_acc, "test_acc": report.test_acc,
        "mia_auc": report.mia_auc, "within_auc": getattr(report, "within_auc", None), "mia_test": report.mia_test,
        "gate_passed": report.passed, "verify_seconds": report.seconds,
    }


def run_method(st: Stage, name: str, model, meta, baseline) -> tuple[dict[str, Any], Any]:
    """One method on one forget set, timed like the engine times it; returns (row fields, result)."""
    method = METHODS[name]
    ctx = UnlearnContext(
        spec=st.spec, model=model, meta=meta, forget=st.fs.forget, retain=st.fs.retain,
        forget_subject_ids=list(st.fs.subject_ids), recipe=st.spec.recipe, device=st.device, seed=st.seed,
        config={**engine.DEFAULT_CONFIGS.get(st.spec.name, {}).get(name, {}), **st.method_config.get(name, {})},
        calibration=st.test,
    )
    torch.manual_seed(st.seed)  # forward-time randomness (MovieLens user dropout) per run, not per order
    started, cpu = time.perf_counter(), time.process_time()
    result = method(ctx)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    report = st.verify(result.model, result.meta, baseline, exact=method.exact, method=name)
    return {"method": name, "exact": method.exact, "status": "ok", "seconds": seconds, "cpu_seconds": cpu_seconds,
            **report_fields(report)}, result


def run_auto(st: Stage, model, meta, baseline) -> tuple[dict[str, Any], Any]:
    """The engine's ``auto`` policy, wall time including every verification and escalation."""
    extra = {"forget_unseen": st.fs.unseen} if _accepts(engine.forget, "forget_unseen") else {}
    if st.chain:
        extra["chains"] = {st.spec.name: tuple(st.chain)}
    torch.manual_seed(st.seed)
    started, cpu = time.perf_counter(), time.process_time()
    outcome = engine.forget(
        spec=st.spec, model=model, meta=meta, forget=st.fs.forget, retain=st.fs.retain, test=st.test,
        holdout=st.holdout, forget_subject_ids=st.fs.subject_ids, policy="auto", device=st.device, seed=st.seed,
        baseline=baseline, reference=st.reference, gates=st.gates, config=st.method_config, **extra,
    )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    last = outcome.attempts[-1]["report"]
    tried = ">".join(f"{a['method']}{'' if a['passed'] else '(fail)'}" for a in outcome.attempts)
    row = {
        "method": "auto", "exact": METHODS[outcome.method].exact, "status": "ok" if outcome.passed else "failed",
        "seconds": seconds, "cpu_seconds": cpu_seconds,
        "verify_seconds": sum(a["verify_seconds"] for a in outcome.attempts),
        "forget_acc": last["forget_acc"], "retain_acc": last["retain_acc"], "test_acc": last["test_acc"],
        "mia_auc": last["mia_auc"], "within_auc": last.get("within_auc"), "mia_test": last["mia_test"],
        "gate_passed": outcome.passed, "note": f"chose {outcome.method}; tried {tried}",
    }
    return row, outcome


def bench_stage(st: Stage, base: dict[str, Any], original, meta, special: dict, skipped: dict[str, str],
                train: list[Example], args, bar, *, audit: bool) -> list[dict]:
    """Rows of one forget set: the original, each method of ``args.methods``, ``auto``; then, when
    ``audit`` and the forget set is one of ``args.audit_sizes``, the audit-mode MIA of each candidate."""
    baselines: dict[int, dict] = {}

    def baseline(model, m) -> dict[str, float]:  # the serving version's utility, as the pipeline passes it
        if id(model) not in baselines:
            baselines[id(model)] = {"retain_acc": evaluate(st.spec, model, m, st.fs.retain, device=st.device),
                                    "test_acc": evaluate(st.spec, model, m, st.test, device=st.device)}
        return baselines[id(model)]

    rows, models = [], {}
    report = st.verify(original, meta, baseline(original, meta), exact=False, method="original")
    rows.append({**base, "method": "original", "exact": False, "status": "ok", "seconds": float("nan"),
                 **report_fields(report), "note": "not unlearned: the remembered level"})
    models["original"] = (original, meta)
    for name, (m_model, m_meta) in special.items():  # the specially trained originals, for context
        report = st.verify(m_model, m_meta, baseline(m_model, m_meta), exact=False, method=f"original[{name}]")
        rows.append({**base, "method": f"original[{name}]", "exact": False, "status": "ok", "seconds": float("nan"),
                     **report_fields(report), "note": f"model trained for {name}, not unlearned"})
    for name in args.methods:
        bar.set_description(f"{base['config']} {base['forget_set']} s{base['seed']}: {name}")
        if name in skipped:
            rows.append({**base, "method": name, "exact": METHODS[name].exact, "status": "skipped",
                         "note": skipped[name]})
        else:
            src = special.get(name, (original, meta))
            try:
                row, result = run_method(st, name, *src, baseline(*src))
                models[name] = (result.model, result.meta)
                row["param_change"] = param_change(src[0], result.model)
                if row["param_change"] == 0:
                    row["note"] = "no-op: the model was left unchanged"
                if name in special:
                    row["note"] = f"on a model trained for {name}"
                rows.append({**base, **row})
            except Exception as exc:  # a broken method must not hide the others' results; recorded, not hidden
                traceback.print_exc(file=sys.stderr)
                rows.append({**base, "method": name, "exact": METHODS[name].exact, "status": "error",
                             "note": f"{type(exc).__name__}: {exc}"[:300]})
        bar.update(1)
    bar.set_description(f"{base['config']} {base['forget_set']} s{base['seed']}: auto")
    row, outcome = run_auto(st, original, meta, baseline(original, meta))
    rows.append({**base, **row})
    models["auto"] = (outcome.model, outcome.meta)
    bar.update(1)
    add_gaps(rows)
    if audit and base["forget_set"] in args.audit_sizes and args.n_shadow and base["seed"] < args.audit_seeds:
        bar.set_description(f"{base['config']} {base['forget_set']} s{base['seed']}: audit")
        refs = train_reference_models(st.spec, forget=st.fs.forget, holdout=st.holdout, train_examples=train,
                                      device=st.device, n_shadow=args.n_shadow, seed=st.seed)
        for row in rows:
            if row["method"] in models:
                scores = score_target(st.spec, refs, target_model=models[row["method"]][0],
                                      meta=models[row["method"]][1], device=st.device)
                row.update(audit_auc=scores["auc"], audit_tpr1=scores["tpr_at_1fpr"],
                           audit_tpr5=scores["tpr_at_5fpr"], rmia_tpr1=scores["attacks"]["rmia"]["tpr_at_1fpr"],
                           rmia_tpr5=scores["attacks"]["rmia"]["tpr_at_5fpr"])
    return rows


def add_gaps(rows: list[dict]) -> None:
    """Gap to the retrain of the same forget set and seed, and speed-up over it, on every row."""
    ref = next((r for r in rows if r["method"] == "retrain" and r["status"] == "ok"), None)
    if ref is None:
        return
    for r in rows:
        if r.get("forget_acc") is None:
            continue
        for k in ("forget_acc", "retain_acc", "test_acc", "mia_auc"):
            if r.get(k) is not None and ref.get(k) is not None:
                r[f"d_{k}"] = r[k] - ref[k]
        for k, out in (("seconds", "speedup"), ("cpu_seconds", "cpu_speedup")):
            if r.get(k) and not math.isnan(r[k]):
                r[out] = ref[k] / r[k]
