"""Unlearning policy as data: method names, default chains and configs per spec, and the
per-model policy (``Model.config["chain"]`` / ``["methods"]``) that overrides them (issue 9).

The API validates and shows policies from here without importing the worker's method registry
(``workers/unlearning``); a test asserts that ``METHODS`` matches that registry exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# name -> exact? (an exact method never saw the forget set: retrain, sisa)
METHODS: dict[str, bool] = {
    "retrain": True, "sisa": True, "finetune": False, "neggrad_plus": False, "scrub": False, "ssd": False,
    "salun": False, "amnesiac": False, "reinit_repair": False,
}

# Chains per spec. movielens, from bench/results/unlearning-epsilon.md (the competition metric,
# 16 models per side, person-level sets; F as a share of the retrain floor, heavy user / 10 random
# users / 10 % of users): reinit_repair 0.46 / 0.70 / 0.70 is the best approximate method at every
# size, finetune 0.32 / 0.56 / 0.63 second (neggrad_plus, formerly second, 0.30 / 0.41 / 0.42: it now
# fails the gate's audit admission). None reaches 0.8 x floor, so the escalation rule sends heavy
# sets (> 2 %) and cheap retrains (< 5 s, the demo model) to retrain directly; on a model whose
# retrain is dear (movielens-large) reinit_repair gets the first half-retrain budget. Other specs
# from bench/results/unlearning.md (bench/unlearning.py: every method vs retrain on 1 subject / 1 %
# / 10 % forget sets, 2 seeds, population-AUC gate): digits: finetune passed all 6 runs (ssd passes
# too, but by leaving the model unchanged: the CNN shows no measurable membership signal). mnist:
# finetune passed 5/6, salun the single-subject run it missed. toy (not benchmarked for chains):
# finetune leaves the memorised set at AUC 0.70, neggrad_plus reaches 0.59 (retrain 0.60).
DEFAULT_CHAINS: dict[str, tuple[str, ...]] = {
    "movielens": ("reinit_repair", "finetune", "retrain"),
    "digits": ("finetune", "retrain"),
    # A CNN that memorises (bench mnist-memo: MNIST with 20 % wrong labels, the competition metric at
    # N=16 on 10 random users, bench/results/unlearning-epsilon-mnist-memo.md): finetune passed the
    # quick gate 16/16 yet scored 0.38 x the retrain floor, ssd 0.38, reinit_repair 0.26, salun 0.13;
    # served by auto, finetune was 4.6x faster at 0.28 x floor. No approximate method is fit to
    # serve, so auto retrains (the demo mnist model shows no membership signal to rank them by).
    "mnist": ("retrain",),
    "toy": ("neggrad_plus", "retrain"),
}
FALLBACK_CHAIN: tuple[str, ...] = ("finetune", "retrain")
# Per-spec overrides of the methods' config defaults, measured like the chains. Toy: the
# memorised blobs survive retain-only steps at the recipe rate (AUC 0.70 -> 0.70), 10x erodes
# them (0.59); on digits 10x costs a point of test accuracy, so it stays spec-specific. On the demo
# movielens model 3-5x finetune rates cost 1-2 test points (measured with bench/unlearning.py's
# run_method on 1 subject / 1 % / 10 % sets, seed 0): defaults
# kept; a model with a slower recipe records its own rate (Model.config["methods"]), as the
# benchmark's movielens-large does ({"finetune": {"steps": 150, "lr_scale": 5}}).
DEFAULT_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "toy": {"finetune": {"lr_scale": 10.0}},
}




# User-sharded SISA (issue 10 section 4; app/ml/sisa.py). A model registered as a SISA ensemble
# (``training.sisa``, e.g. ``LETHE_SISA_MODELS=movielens``) runs exact methods only: ``auto`` on it is
# ``sisa`` alone (``engine.method_chain``; ``effective`` below shows the same). Whether ``auto`` should
# *prefer* that form is decided per spec and training recipe -- the recipe's cost decides whether
# SISA's fixed costs per erasure matter -- from bench/sisa_recsys.py (median single-user SISA erasure
# vs median full retrain, and test accuracy of the ensemble vs one model, same run): it wins where the
# erasure is >= SISA_MIN_SPEEDUP times faster (below that the one-network chain answers in about the
# same time) and the ensemble costs <= SISA_MAX_COST_POINTS of test accuracy (DESIGN.md 8: within 0.5
# points of the retrained reference). A demo model whose spec and recipe win registers as an ensemble
# by default (``train.demo_training``); any other only when an operator lists it.
SISA_MIN_SPEEDUP = 5.0
SISA_MAX_COST_POINTS = 0.5
DEFAULT_SISA_LAYOUT: dict[str, int] = {"shards": 4, "slices": 3}


@dataclass(frozen=True)
class SisaMeasurement:
    recipe: tuple[int, int, float]  # (epochs, batch size, lr) of the measured recipe
    shards: int
    slices: int
    retrain_s: float  # median full retrain of one model, the baseline
    speedup: float  # median full retrain / median single-user SISA erasure
    cost_points: float  # the full model's test accuracy minus the ensemble's, in points (< 0: a gain)

    @property
    def wins(self) -> bool:
        return self.speedup >= SISA_MIN_SPEEDUP and self.cost_points <= SISA_MAX_COST_POINTS


# movielens, 1 torch thread on 2 shared cores (load 5-7), bench/results/sisa_recsys.md and -large.md.
# Demo recipe (4 epochs, batch 1024): a full retrain takes ~1.4 s, so one erasure's fixed costs
# (checkpoint reads and fsync'd writes, partitioning 83k ratings) dominate and each shard learns item
# rows from 1/S of the users: 1.1x / 3.0 points (S=4), 1.8x / 4.6 points (S=8); three runs ranged
# 1.1-1.6x and 1.6-2.0x (S=2 R=4, measured for accuracy only, costs 1.3 points and retrains half
# the data per erasure). Not a win: the demo stays one network (DEFAULT_CHAINS, Escalation below). The benchmark's
# movielens-large recipe (dim 128, 24 epochs,
# batch 256, bench/unlearning_parts/configs.py) retrains in ~190 s: 5.5x / -3.0 points (S=4),
# 14.6x / -1.7 points (S=8) -- that full model over-fits (test 0.643 vs the demo's 0.709) and the
# shards, each fitting fewer users, do not. A win: S=8 R=4 for it.
SISA_MEASURED: dict[str, tuple[SisaMeasurement, ...]] = {
    "movielens": (
        SisaMeasurement((4, 1024, 3e-3), shards=4, slices=4, retrain_s=1.38, speedup=1.1, cost_points=3.0),
        SisaMeasurement((4, 1024, 3e-3), shards=8, slices=4, retrain_s=1.38, speedup=1.8, cost_points=4.6),
        SisaMeasurement((24, 256, 3e-4), shards=4, slices=4, retrain_s=188, speedup=5.5, cost_points=-3.0),
        SisaMeasurement((24, 256, 3e-4), shards=8, slices=4, retrain_s=188, speedup=14.6, cost_points=-1.7),
    ),
}


def sisa_job_seconds(shard_seconds: float, shards_touched: int, *, workers: int = 1, overhead_s: float = 0.0) -> float:
    """What an exact SISA job costs, for the erasure scheduler (issue 20): the shards it touches
    retrain independently, in ``ceil(touched / workers)`` waves when fanned out over ``workers`` free
    workers (``LETHE_SISA_FAN_OUT``; 1: one after another in the job), plus the job's fixed
    ``overhead_s`` (collect, verify, publish). ``shard_seconds``: one shard's retrain from its first
    slice (a whole shard, the dearest case; a later slice costs less)."""
    if shards_touched <= 0:
        return overhead_s
    return overhead_s + math.ceil(shards_touched / max(1, workers)) * shard_seconds


def _measured(spec_name: str, recipe: Any) -> list[SisaMeasurement]:
    key = (recipe.epochs, recipe.batch_size, recipe.lr)
    return [m for m in SISA_MEASURED.get(spec_name, ()) if m.recipe == key]


def sisa_wins(spec_name: str, recipe: Any) -> bool:
    """Whether ``auto`` prefers a user-sharded SISA ensemble for this spec and ``TrainRecipe``."""
    return any(m.wins for m in _measured(spec_name, recipe))


def sisa_layout(spec_name: str, recipe: Any) -> dict[str, int]:
    """Shards and slices to register this spec and recipe with as a SISA ensemble: the fastest
    measured win, else the measured layout that costs the least accuracy, else the default."""
    measured = _measured(spec_name, recipe)
    wins = [m for m in measured if m.wins]
    best = max(wins, key=lambda m: m.speedup) if wins else min(measured, key=lambda m: m.cost_points, default=None)
    return {"shards": best.shards, "slices": best.slices} if best else dict(DEFAULT_SISA_LAYOUT)


@dataclass(frozen=True)
class Escalation:
    """When ``auto`` tries approximate methods at all, and for how long (issue 10 section 3).

    ``auto`` must never cost much more than the exact method it falls back to. The model's
    exact-retrain time ``T`` is measured at registration (``calibrate_reference`` records
    ``reference["retrain_seconds"]``; every exact candidate that serves refreshes it). Approximate
    attempts, verification included, share a budget of ``approx_budget_share x T``; an attempt
    starts only if the remaining budget covers its last measured cost, and each gets the remaining
    budget as its deadline, so the worst case of an escalating ``auto`` is ``(1 + share) x T`` and a
    passing one costs at most ``share x T``. A forget set holding more than ``max_forget_share`` of
    the training samples goes straight to the exact method.
    """

    # Measured on movielens (bench/results/unlearning-epsilon.md, N=16): see DEFAULT_ESCALATION.
    approx_budget_share: float = 0.5
    # Share of training samples above which approximate candidates fail the gate (or score far
    # below the floor) so often that their expected cost exceeds their saving: exact directly.
    # 1.0 (never) unless measured for the spec (DEFAULT_ESCALATION).
    max_forget_share: float = 1.0
    # Expected exact time below which trying an approximate method cannot save anything worth its
    # verification (a retrain of a few seconds is its own fastest path): exact directly.
    min_exact_seconds: float = 0.0
    # After this many consecutive auto jobs of one model in which no approximate candidate served,
    # the approximate path is skipped (exact directly): each of those jobs paid up to
    # ``approx_budget_share x T`` on top of its retrain for nothing (movielens-30s, 10 users, gate at
    # 1 point: 16 of 16 escalated, 1.22x a retrain's CPU time; bench/results/epsilon-30s-gate-1pt/).
    max_failed_streak: int = 3
    # ...except every ``probe_every``-th job of a streak, which tries it again, so a model whose
    # data or methods changed can earn the approximate path back.
    probe_every: int = 10


# movielens, measured with bench/unlearning.py --epsilon 16 (bench/results/unlearning-epsilon.md;
# the heavy user holds 2.6 % of the training ratings, 10 random users 1.6 %): on the heavy user no
# approximate method passes the gate reliably or reaches half the retrain floor (F / floor
# 0.29-0.46), and the old chain spent finetune + neggrad_plus + retrain, 0.13x a retrain's speed;
# so sets above 2 % go exact at once. On the demo model a retrain takes ~1-1.5 s on one CPU
# thread, about what one approximate attempt and its verification cost (0.4-1.8 s + 0.3-0.5 s):
# below 5 s the exact path is the cheapest, and the only one at the floor. The scaled-up model
# (movielens-large, ~80-110 s per retrain) tries approximate methods within half a retrain.
# Measured with this rule (original seed 1): auto served retrain on all three sets, F 0.84 / 1.01 /
# 0.96 x floor, test accuracy within 0.1 point, at 0.86 / 0.86 / 0.64x a bare retrain's CPU time
# (the difference is the exact candidate's sanity verification).
DEFAULT_ESCALATION: dict[str, Escalation] = {
    "movielens": Escalation(approx_budget_share=0.5, max_forget_share=0.02, min_exact_seconds=5.0),
}

# Audited forget quality per spec and approximate method: the lowest F / floor the competition
# metric measured over person-level forget sets (bench/unlearning.py --epsilon 16, N models per
# side; bench/results/unlearning-epsilon.md). The quick gate cannot measure F (it needs N models);
# it refuses candidates of a method audited below ``Gates.min_audited_share`` of the floor, which
# brings its false-pass rate (passed, but F < floor / 2) under 5 % (issue 10 section 5).
# Each entry: (forget share of the training samples the set had, F / floor measured there). A
# candidate is judged by the measurement at the nearest share at or above its own (larger sets
# are harder), else the largest measured. A method missing here has not been audited for the
# spec and is not refused on this ground.
# movielens: original seed 0, heaviest user (2.58 % of training ratings) and 10 random users
# (1.65 %), 16 models per side; ssd and scrub with their current defaults (noise + repair; KL to
# uniform), measured on the heavy user only. Re-measured out of sample (original seed 1, another
# draw of 10 users) in bench/results/unlearning-epsilon.md.
AUDITED_F_SHARE: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {
    "movielens": {
        "finetune": ((0.0165, 0.57), (0.0258, 0.33)),
        "neggrad_plus": ((0.0165, 0.49), (0.0258, 0.29)),
        "reinit_repair": ((0.0165, 0.66), (0.0258, 0.45)),
        "ssd": ((0.0258, 0.36),),
        "scrub": ((0.0258, 0.37),),
        "salun": ((0.0258, 0.32),),
    },
    # mnist-memo, 10 random users = 3.5 % of the training images (see DEFAULT_CHAINS): refuses them
    # at the gate too, should a per-model chain name them.
    "mnist": {
        "finetune": ((0.0355, 0.38),),
        "ssd": ((0.0355, 0.38),),
        "reinit_repair": ((0.0355, 0.26),),
        "salun": ((0.0355, 0.13),),
    },
}


def audited_share(spec_name: str, method: str, forget_share: float) -> float | None:
    """The audited F / floor of ``method`` on ``spec_name`` for a forget set of ``forget_share``."""
    points = sorted(AUDITED_F_SHARE.get(spec_name, {}).get(method, ()))
    if not points:
        return None
    return next((f for share, f in points if share >= forget_share), points[-1][1])
FALLBACK_ESCALATION = Escalation()


def plan(chain: list[str], *, exact: dict[str, bool], retrain_seconds: float | None, n_forget: int, n_train: int,
         rule: Escalation, failed_streak: int = 0) -> tuple[list[str], float | None, dict[str, Any]]:
    """``(chain to run, approximate budget in seconds or None, decision)`` for one erasure.

    ``decision`` (JSON-able, recorded in the job and its audit trail) says which rule decided and
    why: ``approximate_first`` (with the budget), ``exact_direct`` (heavy forget set, a retrain too
    cheap to undercut, or ``failed_streak`` recent jobs whose approximate path served nothing;
    ``next_failed_streak`` keeps that count) or ``no_cost_data`` (no recorded retrain time: the chain as configured).
    """
    share = n_forget / n_train if n_train else 0.0
    info: dict[str, Any] = {"forget_share": round(share, 5), "expected_exact_s": retrain_seconds,
                            "max_forget_share": rule.max_forget_share, "budget_share": rule.approx_budget_share}
    exact_tail = [m for m in chain if exact.get(m, False)]
    approx = [m for m in chain if not exact.get(m, False)]
    if not approx:
        return chain, None, {**info, "rule": "exact_only", "reason": "the chain has no approximate method"}
    if share > rule.max_forget_share:
        return exact_tail, None, {**info, "rule": "exact_direct", "reason": (
            f"forget set is {100 * share:.2f} % of the training samples (> {100 * rule.max_forget_share:.2f} %): "
            "approximate candidates are measured to fail there, so escalating would cost more than retraining")}
    if retrain_seconds is None or not math.isfinite(retrain_seconds) or retrain_seconds <= 0:
        return chain, None, {**info, "rule": "no_cost_data",
                             "reason": "no recorded exact-retrain time: the chain runs without a budget"}
    if retrain_seconds < rule.min_exact_seconds:
        return exact_tail, None, {**info, "rule": "exact_direct", "reason": (
            f"expected retrain {retrain_seconds:.1f} s < {rule.min_exact_seconds:.1f} s: nothing to save")}
    if failed_streak >= rule.max_failed_streak and failed_streak % rule.probe_every:
        return exact_tail, None, {**info, "rule": "exact_direct", "failed_streak": failed_streak, "reason": (
            f"the last {failed_streak} auto erasures of this model served no approximate candidate: exact "
            f"directly (the approximate path is tried again every {rule.probe_every}th job of such a streak)")}
    budget = rule.approx_budget_share * retrain_seconds
    return chain, budget, {**info, "rule": "approximate_first", "budget_s": round(budget, 3), "reason": (
        f"forget share {100 * share:.2f} % <= {100 * rule.max_forget_share:.2f} %; approximate attempts get "
        f"{budget:.1f} s ({rule.approx_budget_share:.2f} x the {retrain_seconds:.1f} s retrain)")}


def next_failed_streak(streak: int, decision: dict[str, Any], served_exact: bool) -> int:
    """A model's count of consecutive jobs whose approximate path served nothing, after one more job:
    reset when an approximate candidate served; grown when the job tried the approximate path (or
    skipped it for the streak) and served an exact one; unchanged when the job went exact for
    another reason (forget share, a cheap retrain, an exact-only chain)."""
    if not served_exact:
        return 0
    if decision.get("rule") == "approximate_first" or "failed_streak" in decision:
        return streak + 1
    return streak


# The config fields each method's ``resolve_config`` accepts (workers/unlearning/*.py ``*Config``
# dataclasses; a test asserts they match), with their types as written there. An override the worker
# would refuse (an unknown field: ValueError) or choke on (a string for steps) failed every job of the
# model, while the PUT answered 200; the exact methods take no overrides.
METHOD_FIELDS: dict[str, dict[str, str]] = {
    "retrain": {}, "sisa": {},
    "finetune": {"steps": "int", "lr_scale": "float", "batch_size": "int | None", "weight_decay": "float | None",
                 "noise_scale": "float"},
    "neggrad_plus": {"steps": "int", "alpha": "float", "lr_scale": "float", "batch_size": "int | None",
                     "forget_batch_size": "int", "clamp_scale": "float"},
    "scrub": {"cycles": "int", "max_cycles": "int", "forget_steps": "int | None", "retain_steps": "int",
              "alpha": "float", "temperature": "float", "lr_scale": "float", "max_lr_scale": "float",
              "batch_size": "int | None", "forget_batch_size": "int", "clamp_scale": "float | None",
              "forget_objective": "str"},
    "ssd": {"alpha": "float", "lam": "float", "batch_size": "int", "full_samples": "int | None",
            "full_importance": "dict[str, Any] | None", "noise_scale": "float", "repair_steps": "int",
            "repair_lr_scale": "float"},
    "salun": {"steps": "int", "quantile": "float", "forget_weight": "float", "lr_scale": "float",
              "batch_size": "int | None", "forget_batch_size": "int", "clamp_scale": "float | None"},
    "amnesiac": {"steps": "int", "lr_scale": "float", "batch_size": "int | None"},
    "reinit_repair": {"reinit_share": "float", "reinit_head": "bool", "cycles": "int", "steps_per_cycle": "int",
                      "lr_scale": "float", "temperature": "float", "ce_weight": "float", "kl_weight": "float",
                      "batch_size": "int | None"},
}


def _fits(value: Any, kind: str) -> bool:
    base = kind.removesuffix(" | None")
    if value is None:
        return kind.endswith(" | None")
    if base == "bool":
        return isinstance(value, bool)
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if base == "str":
        return isinstance(value, str)
    return isinstance(value, dict) if base.startswith("dict") else True


def validate(chain: list[str] | None, methods: dict[str, dict[str, Any]] | None) -> list[str]:
    """Problems with a per-model policy (empty list: valid). A chain must name known methods and
    end with an exact one, so an erasure can always finish."""
    problems = []
    for name in [*(chain or []), *(methods or {})]:
        if name not in METHODS:
            problems.append(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    if chain is not None:
        if not chain:
            problems.append("a chain names at least one method")
        elif chain[-1] in METHODS and not METHODS[chain[-1]]:
            problems.append(f"a chain ends with an exact method (retrain or sisa), not {chain[-1]!r}")
    for name, overrides in (methods or {}).items():
        if not isinstance(overrides, dict):
            problems.append(f"methods.{name} must be an object of config overrides")
        elif name in METHOD_FIELDS:
            fields = METHOD_FIELDS[name]
            for key, value in overrides.items():
                if key not in fields:
                    problems.append(f"methods.{name}.{key} is not a setting of {name}; known: "
                                    f"{', '.join(sorted(fields)) or 'none'}")
                elif not _fits(value, fields[key]):
                    problems.append(f"methods.{name}.{key} must be {fields[key]}")
    return problems


def effective(spec_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The chain and method overrides a model's ``auto`` policy runs, and where each comes from."""
    chain = config.get("chain")
    methods = {**DEFAULT_CONFIGS.get(spec_name, {}), **(config.get("methods") or {})}
    if (config.get("training") or {}).get("sisa"):  # as engine.method_chain: exact methods only, then sisa
        kept = [m for m in chain or [] if METHODS.get(m) and m not in ("retrain", "sisa")]
        return {"chain": [*kept, "sisa"], "chain_source": "SISA ensemble", "methods": methods}
    return {
        "chain": list(chain) if chain else list(DEFAULT_CHAINS.get(spec_name, FALLBACK_CHAIN)),
        "chain_source": "model" if chain else ("spec default" if spec_name in DEFAULT_CHAINS else "fallback"),
        "methods": {**DEFAULT_CONFIGS.get(spec_name, {}), **(config.get("methods") or {})},
    }
