"""Unlearning policy as data: method names, default chains and configs per spec, and the
per-model policy (``Model.config["chain"]`` / ``["methods"]``) that overrides them (issue 9).

The API validates and shows policies from here without importing the worker's method registry
(``workers/unlearning``); a test asserts that ``METHODS`` matches that registry exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# name -> exact? (an exact method never saw the forget set: retrain, sisa)
METHODS: dict[str, bool] = {
    "retrain": True, "sisa": True, "finetune": False, "neggrad_plus": False, "scrub": False, "ssd": False,
    "salun": False, "amnesiac": False, "reinit_repair": False,
}

# Cheapest-first chains per spec, from bench/results/unlearning.md (bench/unlearning.py: every method
# vs retrain on 1 subject / 1 % / 10 % forget sets, 2 seeds, 2 shared CPU cores). movielens (demo and
# the 24-epoch dim-128 model): finetune passes every single-subject set (the common request) but
# fails 10 % sets on the big model (AUC 0.53 vs retrain 0.49), where neggrad_plus passes (0.51) and
# spares the retrain (~80 s); neggrad_plus first replays 4 % faster overall but over-forgets single
# users (AUC 0.08-0.37), so it goes second. digits: finetune passed all 6 runs (ssd passes too, but
# by leaving the model unchanged: the CNN shows no measurable membership signal). mnist: finetune
# passed 5/6, salun the single-subject run it missed. toy (not benchmarked for chains): finetune
# leaves the memorised set at AUC 0.70, neggrad_plus reaches 0.59 (retrain 0.60).
DEFAULT_CHAINS: dict[str, tuple[str, ...]] = {
    "movielens": ("finetune", "neggrad_plus", "retrain"),
    "digits": ("finetune", "retrain"),
    "mnist": ("finetune", "salun", "retrain"),
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
# erasure is >= SISA_MIN_SPEEDUP times faster (below that a finetune-first chain answers in about the
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
# the data per erasure). Not a win: the demo stays one network, finetune first. The benchmark's
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
