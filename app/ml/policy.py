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
# *prefer* that form for a spec is decided here from bench/sisa_recsys.py (median single-user SISA
# erasure vs median full retrain, and test accuracy of the ensemble vs one model, same run): it wins
# where the erasure is >= SISA_MIN_SPEEDUP times faster -- below that finetune-first chains already
# answer in about the same time -- and the ensemble costs <= SISA_MAX_COST_POINTS of test accuracy
# (DESIGN.md 8: within 0.5 points of the retrained reference). Such a spec is then registered as an
# ensemble by default; the others only when an operator lists them.
SISA_MIN_SPEEDUP = 5.0
SISA_MAX_COST_POINTS = 0.5
DEFAULT_SISA_LAYOUT: dict[str, int] = {"shards": 4, "slices": 3}


@dataclass(frozen=True)
class SisaMeasurement:
    shards: int
    slices: int
    speedup: float  # median full retrain / median single-user SISA erasure
    cost_points: float  # the full model's test accuracy minus the ensemble's, in points

    @property
    def wins(self) -> bool:
        return self.speedup >= SISA_MIN_SPEEDUP and self.cost_points <= SISA_MAX_COST_POINTS


# movielens (bench/results/sisa_recsys.md, 1 thread on 2 shared cores): the demo model retrains in
# ~1.5 s, so one erasure's fixed costs (checkpoint loads and fsync'd writes, partitioning 83k
# ratings) dominate: S=4 R=4 1.6x / 3.0 points, S=8 R=4 1.6x / 4.6 points (each shard learns item
# rows from 1/S of the users). Not a win: the demo stays one model (finetune first); S=4 R=4, the
# cheaper in accuracy, is the layout when an operator registers it as SISA anyway.
SISA_MEASURED: dict[str, SisaMeasurement] = {
    "movielens": SisaMeasurement(shards=4, slices=4, speedup=1.6, cost_points=3.0),
}


def sisa_wins(spec_name: str) -> bool:
    """Whether ``auto`` prefers a user-sharded SISA ensemble for this spec (measured, see above)."""
    measured = SISA_MEASURED.get(spec_name)
    return bool(measured and measured.wins)


def sisa_layout(spec_name: str) -> dict[str, int]:
    """Shards and slices a spec is registered with as a SISA ensemble (its measured layout)."""
    measured = SISA_MEASURED.get(spec_name)
    return {"shards": measured.shards, "slices": measured.slices} if measured else dict(DEFAULT_SISA_LAYOUT)


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
