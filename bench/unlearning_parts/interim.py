"""Epsilon mode's interim rows (``--interim params,auto``): the scheduler's interim forget, scored.

Issue 16: the interim version a scheduled model publishes at once must be honest about how much it
forgets. This module runs the interim step *as the product runs it*: the worker's own
``workers.interim.interim_forget`` (the heavy-forget rule, then its functions
``workers.interim._clear_params``: ``ModelSpec.forget_subjects`` and the quick verification;
``workers.interim._cheapest_passing``: the model's approximate methods in chain order, gated,
within ``approx_budget_share`` x the expected exact cost) on a ``workers.problem.ForgetProblem``
built from the benchmark's forget set instead of from the database, composed as
``workers.interim.run_interim`` does (``auto`` falls back to ``params``). Only
``collect`` (database reads, deletion flags) and the publish step are left out; the budget comes
from ``app.services.models.schedule.expected_exact_s`` on the reference the benchmark calibrated,
as it would for a freshly registered model (no job history, so no observed job overhead).

**Weight noise** (``--interim-noise``). ``params`` trains nothing: its N runs from one original are
the same model, and the competition metric's "peaky" guard gives every forget example 0 points
when one side's N outputs do not vary (a deterministic unlearner scores F = 0, DESIGN.md section
4). That says "distinguishable", not how far from a retrain the interim is. To score *how far*,
each level SIGMA adds a second row per interim: every non-zero weight of a deterministic candidate
(``params``, also when ``auto`` falls back to it) is scaled by ``1 + SIGMA x N(0, 1)`` (seeded per
run). Zeros stay zero, so cleared user rows and the unknown-user row stay exactly cleared. A
candidate of a seeded approximate method is scored as it is in both rows. The gate's verdict
(``gate_passed``) is the product's, on the candidate without noise.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch

from app.db.models import Model
from app.ml import policy
from app.ml.spec import ModelSpec
from app.services.models import schedule as schedule_service
from bench.unlearning_parts.measure import Stage
from workers import interim as product
from workers.problem import ForgetProblem

INTERIMS = ("params", "auto")
INTERIM_SEED = 3000  # interim runs' seeds (approximate methods, noise): none of the retrains' or auto's
STRANGER_CHECKED = 200  # forget examples predicted twice per run (as themselves, as a stranger)


def row_name(kind: str, noise: float | None = None) -> str:
    """The method column of an interim row: ``interim params``, ``interim auto +noise 0.01``."""
    return f"interim {kind}" + (f" +noise {noise:g}" if noise else "")


def budget_s(spec_name: str, reference: dict[str, Any] | None) -> float:
    """``auto``'s budget as ``run_interim`` computes it, for a model whose only cost record is the
    reference's retrain time (``expected_exact_s``; none recorded: unbounded, as
    ``schedule.interim_budget_s`` answers for a model without a cost record)."""
    model = Model(name="bench", spec=spec_name, config={"reference": reference or {}})
    rule = policy.DEFAULT_ESCALATION.get(spec_name, policy.FALLBACK_ESCALATION)
    expected = schedule_service.expected_exact_s(model)
    return math.inf if expected is None else rule.approx_budget_share * expected


def problem(st: Stage, baseline: dict[str, Any], reference: dict[str, Any] | None) -> ForgetProblem:
    """The worker's ``ForgetProblem`` for the stage's forget set (what ``collect`` would build)."""
    return ForgetProblem(
        model_name="bench", spec=st.spec, request_ids=[], policy="auto", forget=list(st.fs.forget),
        forget_unseen=list(st.fs.unseen), retain=st.fs.retain, test=st.test, holdout=st.holdout,
        subject_ids=list(st.fs.subject_ids), serving=1, artifact_path="", sha256="", free_of=[],
        baseline=baseline, reference=reference, methods=st.method_config or None, chain=st.chain,
        manifest={})


def step(kind: str, p: ForgetProblem, served, meta: dict[str, Any], device, seed: int,
         budget: float) -> tuple[str, Any, dict[str, Any], list[dict[str, Any]]]:
    """The interim of ``kind`` on ``served``: ``(served method, candidate, meta, attempts)``.
    ``served`` is not modified (``_clear_params`` deep-copies; approximate methods copy)."""
    if kind not in INTERIMS:
        raise ValueError(f"unknown interim {kind!r}; known: {', '.join(INTERIMS)}")
    attempts: list[dict[str, Any]] = []
    name, candidate, new_meta = product.interim_forget(p, served, meta, device, seed,
                                                       budget if kind == "auto" else 0.0, attempts)
    return name, candidate, new_meta, attempts


def with_noise(model: torch.nn.Module, sigma: float, seed: int) -> torch.nn.Module:
    """A copy with every non-zero weight scaled by ``1 + sigma x N(0, 1)``; zeros stay zero."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in out.parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=param.dtype).to(param.device)
            param.mul_(1.0 + sigma * noise)
    return out


def stranger_gap(spec: ModelSpec, model, meta: dict[str, Any], features: list[dict[str, Any]], device) -> float | None:
    """Largest |logit difference| between ``features`` as given and with the subject replaced by an
    id no model ever saw (MovieLens: the unknown-user row); None for a spec without a subject input.
    0 is what ``params`` promises: the person is scored exactly like a stranger."""
    key = spec.subject_feature
    if not key or not features:
        return None
    from app.ml.train import predict_logits

    stranger = [{**f, key: -1} for f in features]
    a = predict_logits(spec, model, meta, features, device=device)
    b = predict_logits(spec, model, meta, stranger, device=device)
    return float((a - b).abs().max())


def run(kind: str, st: Stage, served, meta: dict[str, Any], baseline: dict[str, Any],
        reference: dict[str, Any] | None, seed: int, noises: tuple[float, ...]) -> dict[str, Any]:
    """One interim run, timed: the served method, the product's gate verdict, whether the subjects'
    own parameters are cleared (the spec's check), the stranger gap, and the candidate with each
    noise level applied (``noised``: level -> model; the same model where the candidate is seeded)."""
    p = problem(st, baseline, reference)
    torch.manual_seed(seed)
    started, cpu = time.perf_counter(), time.process_time()
    budget = budget_s(st.spec.name, reference)
    name, candidate, new_meta, attempts = step(kind, p, served, meta, st.device, seed, budget)
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    deterministic = name == "params"
    return {
        "seconds": seconds, "cpu_seconds": cpu_s, "model": candidate, "meta": new_meta, "served": name,
        "gate": bool(attempts[-1]["passed"]),
        "decision": ">".join(f"{a['method']}{'' if a['passed'] else '(fail)'}" for a in attempts),
        "cleared": bool(st.spec.subject_params_cleared(candidate, new_meta, p.subject_ids)),
        "stranger_gap": stranger_gap(st.spec, candidate, new_meta,
                                     [e.features for e in st.fs.forget[:STRANGER_CHECKED]], st.device),
        "noised": {s: (with_noise(candidate, s, seed) if deterministic else candidate) for s in noises},
    }
