"""Policy engine: run a method, verify it, escalate, finally retrain exactly (DESIGN.md 3, 4).

Before any work, ``app.ml.policy.plan`` weighs the chain against the model's recorded exact-retrain
time: a heavy forget set goes straight to the exact method, otherwise the approximate attempts
share a budget that is a fraction of the expected retrain (``Escalation``); the decision and its
reason travel in ``ForgetOutcome.decision``. ``auto`` starts with the cheapest approximate method measured to pass for the spec
(``DEFAULT_CHAINS``, per spec, overridable) and ends with ``retrain``; a named policy runs that
method, then ``retrain`` if it fails. A candidate that fails a gate is never reported as passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from app.ml.policy import (
    DEFAULT_CHAINS, DEFAULT_CONFIGS, DEFAULT_ESCALATION, FALLBACK_CHAIN, FALLBACK_ESCALATION, Escalation, plan,
)
from app.ml.spec import Example, ModelSpec
from workers.unlearning import get_method
from workers.unlearning.base import UnlearnContext
from workers.verify.calibrate import conf
from workers.verify.report import Gates, verify_candidate

# Seeds an exact method gets before the job fails (and is retried later with backoff).
EXACT_TRIES = 3


@dataclass
class ForgetOutcome:
    model: nn.Module
    meta: dict[str, Any]
    method: str
    passed: bool
    attempts: list[dict[str, Any]]
    # ``plan``'s decision: rule, reason, budget (JSON-able; recorded in the job and the audit trail).
    decision: dict[str, Any] = field(default_factory=dict)


def method_chain(
    spec_name: str, policy: str, chains: dict[str, tuple[str, ...]] | None = None, *, meta: dict[str, Any] | None = None
) -> list[str]:
    """Methods to try in order for ``policy`` (``auto`` or a method name); always ends in an exact one.

    ``meta`` is the served model's: ``sisa`` runs only on a SISA ensemble (``meta["sisa"]``) and
    ``amnesiac`` only with an update log (``meta["update_log"]``); otherwise they are dropped.
    On a SISA ensemble only exact methods run and the fallback is ``sisa`` (``retrain`` only when
    named): an approximate candidate would be served beside slice checkpoints that still hold
    the subject, and a later ``sisa`` would restart from them.
    """
    meta = meta or {}
    sisa = isinstance(meta.get("sisa"), dict)
    if policy == "auto":
        chain = list((chains or DEFAULT_CHAINS).get(spec_name, FALLBACK_CHAIN))
    else:
        get_method(policy)  # KeyError for an unknown policy before any work is done
        chain = [policy]
    chain = [m for m in chain if (m != "sisa" or sisa) and (m != "amnesiac" or isinstance(meta.get("update_log"), dict))]
    if sisa:
        return ["retrain"] if policy == "retrain" else [
            m for m in chain if get_method(m).exact and m not in ("retrain", "sisa")] + ["sisa"]
    if not chain or chain[-1] != "retrain":
        chain.append("retrain")
    return chain


def forget(
    *,
    spec: ModelSpec,
    model: nn.Module,
    meta: dict[str, Any],
    forget: list[Example],
    retain: list[Example],
    test: list[Example],
    holdout: list[Example],
    forget_subject_ids: list[str],
    forget_unseen: list[Example] | None = None,
    policy: str = "auto",
    device: torch.device | str,
    seed: int = 0,
    progress: Callable[[str, float], None] | None = None,
    baseline: dict[str, float],
    reference: dict[str, float] | None = None,
    gates: Gates | None = None,
    config: dict[str, dict[str, Any]] | None = None,
    chains: dict[str, tuple[str, ...]] | None = None,
    time_budget_s: float | None = None,
    escalation: Escalation | None = None,
    failed_streak: int = 0,
) -> ForgetOutcome:
    """Unlearn ``forget_subject_ids`` from ``model``; ``config`` maps method name -> overrides.

    Returns the first candidate that passes every gate, else the last one tried with
    ``passed=False`` (the caller must not serve it).
    """
    gates = gates or Gates()
    report_progress = progress or (lambda stage, fraction: None)
    chain = method_chain(spec.name, policy, chains, meta=meta)
    decision: dict[str, Any] = {"rule": "named", "reason": f"policy {policy!r} names its method"}
    budget = None
    if policy == "auto":
        rule = escalation or DEFAULT_ESCALATION.get(spec.name, FALLBACK_ESCALATION)
        chain, budget, decision = plan(chain, exact={m: get_method(m).exact for m in chain},
                                       retrain_seconds=(reference or {}).get("retrain_seconds"),
                                       n_forget=len(forget), n_train=len(forget) + len(retain), rule=rule,
                                       failed_streak=failed_streak)
    served_conf = conf(spec, model, meta, forget, device) if forget else None
    spent = 0.0  # seconds of approximate attempts, verification included
    last_cost = 0.0
    attempts: list[dict[str, Any]] = []
    for name in chain:
        method = get_method(name)
        method_budget = time_budget_s
        if budget is not None and not method.exact:
            left = budget - spent
            if left <= 0 or (last_cost and left < last_cost):  # the next attempt would overrun: go exact
                decision = {**decision, "escalated_early": f"{left:.1f} s of the approximate budget left, last "
                                                           f"attempt cost {last_cost:.1f} s: skipped {name}"}
                continue
            method_budget = left if time_budget_s is None else min(left, time_budget_s)
        # An exact candidate fails only a sanity gate (diverged, collapsed): a new seed, not a
        # weaker method, is the remedy; approximate methods get one try each.
        for attempt_seed in range(seed, seed + (EXACT_TRIES if method.exact else 1)):
            ctx = UnlearnContext(
                spec=spec, model=model, meta=meta, forget=forget, retain=retain,
                forget_subject_ids=list(forget_subject_ids), recipe=spec.recipe, device=device, seed=attempt_seed,
                time_budget_s=method_budget, progress=lambda f, n=name: report_progress(f"unlearn:{n}", f),
                config={**DEFAULT_CONFIGS.get(spec.name, {}).get(name, {}), **(config or {}).get(name, {})},
                calibration=test,
            )
            started = time.perf_counter()
            result = method(ctx)
            unlearn_s = time.perf_counter() - started
            report_progress(f"verify:{name}", 0.0)
            report = verify_candidate(
                spec=spec, candidate=result.model, meta=result.meta, forget=forget, retain=retain, test=test,
                holdout=holdout, forget_subject_ids=list(forget_subject_ids), baseline=baseline,
                reference=reference, gates=gates, device=device, exact=method.exact, method=name,
                forget_unseen=forget_unseen, original=(model, meta), served_conf=served_conf,
            )
            report_progress(f"verify:{name}", 1.0)
            if not method.exact:
                last_cost = time.perf_counter() - started
                spent += last_cost
            attempts.append({
                "method": name, "exact": method.exact, "seed": attempt_seed, "seconds": unlearn_s,
                "verify_seconds": report.seconds, "passed": report.passed, "report": report.to_dict(),
            })
            if report.passed:
                return ForgetOutcome(result.model, result.meta, name, True, attempts, decision)
    return ForgetOutcome(result.model, result.meta, chain[-1], False, attempts, decision)
