"""Verification report and gates for an unlearning candidate (DESIGN.md section 4).

Gates, all computed in seconds on subsamples:
  - MIA: loss-threshold AUC, forget set vs held-out subjects matched in class mix, two-sided
    against the exact-retrain reference (over-forgetting is as detectable as remembering).
    When the forgotten subjects also have samples that were never trained on (MovieLens keeps
    a test share of every user's ratings), the gate instead compares the subjects' trained
    samples with their own never-trained ones ("within_subject_auc"): same people on both
    sides, so subject-to-subject variation cannot hide memorisation, and an exact retrain
    scores 0.5 in expectation (both sides are non-members).
    Small forget sets have no set-level power: approximate methods then face a per-sample
    rank test instead; exact methods pass on their guarantee (never trained on the forget set).
  - utility (approximate candidates only): retain and test accuracy not more than a couple of
    points below the *exact-retrain reference* of this model (``reference["retain_acc"]`` /
    ``["test_acc"]``, calibrated with its seed-to-seed spread and re-measured by every exact
    candidate that serves), never below the serving version: comparing with the serving version
    ratchets, since an approximate version that fits the retain set tightly raises the bar until
    an honest retrain fails (issue 8).
  - forget accuracy not above the band of the reference (or of held-out subjects).
  - the subjects' per-subject parameters are gone (``spec.subject_params_cleared``).
Exact candidates (retrain, SISA) are never rejected for utility: they never saw the subjects, so
their accuracy *is* the accuracy of a model without them. Only sanity gates apply to them (finite
weights, test accuracy above the majority-class rate); an exact candidate below the reference
band passes with a warning the pipeline turns into an operator-visible audit event.
This is a regression test, not a privacy proof, and the report says so.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from app.ml.ensemble import subject_params_cleared
from app.ml.policy import audited_share
from app.ml.spec import Example, ModelSpec
from app.ml.train import predict_logits
from workers.verify.distributions import loss_histograms
from workers.verify.mia import auc_lower_is_member, logit_confidence, loss_auc, per_sample_rank_test

DISCLAIMER = "Quick gate: a regression test against known attacks, not a proof of privacy."


@dataclass(frozen=True)
class Gates:
    # DESIGN.md asks for 0.02; the reference AUC comes from *comparable* forget sets, not this
    # one, so 0.05 keeps retrain-like candidates passing while a memorised set (toy: AUC ~0.7)
    # still fails. Wider when the bootstrap or the subject-level null spread says so.
    auc_margin: float = 0.05
    # Two sigmas (of the larger of bootstrap and subject-level null): ~5 % false alarms.
    auc_sigmas: float = 2.0
    # Below this many forget samples a set-level AUC has no power (DESIGN.md section 4).
    low_power_n: int = 20
    # Per-sample rank test bound on |z| of the mean held-out percentile (two-sided, ~5 % false
    # alarms): a false alarm only escalates to retrain, a miss serves a remembering model.
    rank_z_max: float = 2.0
    # Accuracy may drop this much below the exact-retrain reference (DESIGN: "within 1-2 points"; the
    # lower end, since the benchmark target is 0.5 points: at 2 points the `finetune` candidates
    # served on the >= 30 s MovieLens configuration cost 1.9 test points each,
    # bench/results/unlearning-epsilon-movielens-30s.md)...
    max_utility_drop: float = 0.01
    # ...or this many binomial standard errors, when the evaluation set is too small for 1 point.
    utility_sigmas: float = 2.0
    # Forget accuracy band around the reference (or held-out) accuracy, widened for small sets.
    forget_acc_margin: float = 0.05
    forget_acc_sigmas: float = 2.0
    # Subsamples that keep the gate to seconds on CPU.
    max_retain: int = 3000
    max_test: int = 5000
    max_holdout: int = 5000
    n_boot: int = 200
    # Pseudo-forget draws from held-out subjects for the subject-level null spread.
    null_draws: int = 100
    # Fewest never-trained samples of the forgotten subjects for the within-subject test.
    within_min: int = 10
    # "Moved like a retrain" (approximate candidates, when the reference has ``retrain_shift``): the
    # candidate's mean |change| of logit-scaled confidence on the forget samples, from the served
    # model, must reach this share of what an exact retrain changes (calibrated at registration).
    # The competition metric compares the spread of unlearned and retrained outputs; a candidate
    # that barely moved from the served model sits outside the retrains' cloud (plain SSD: F 0,
    # passed the other gates 16/16). Off by default: in bench/results/unlearning-epsilon.md every
    # MovieLens method moved the forget outputs more than a retrain does (0.68-1.38 vs 0.49), so it
    # separated nothing there; the audit admission below is what brought false passes to 0/32.
    min_shift_ratio: float = 0.0
    # Approximate methods audited (``app.ml.policy.AUDITED_F_SHARE``, the competition metric at
    # N=16) below this share of the retrain floor are refused for the spec: the issue's "F below
    # half the floor" is a false pass by definition, and one candidate cannot show its own F.
    min_audited_share: float = 0.5
    seed: int = 0


@dataclass
class VerificationReport:
    method: str | None
    exact: bool
    passed: bool
    forget_acc: float
    retain_acc: float
    test_acc: float
    holdout_acc: float
    mia_auc: float
    mia_sigma: float
    mia_null_sd: float
    mia_margin: float
    mia_test: str
    reference_auc: float
    n_forget: int
    n_holdout: int
    n_retain: int
    n_test: int
    low_power: bool
    rank_z: float | None
    subject_params_cleared: bool
    gates: dict[str, dict[str, Any]]
    within_auc: float | None = None
    within_sigma: float | None = None
    shift: float | None = None
    reference_shift: float | None = None
    n_forget_unseen: int = 0
    warnings: list[str] = field(default_factory=list)
    # Per-sample loss histograms before / after unlearning (``distributions.loss_histograms``).
    loss_hist: dict[str, Any] = field(default_factory=dict)
    # The accuracies a model without the subjects reaches (what the utility and forget gates
    # compared with) and where they come from: shown beside the candidate's.
    reference_acc: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    disclaimer: str = DISCLAIMER

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (NaN becomes None)."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _subsample(examples: list[Example], n: int, rng: np.random.Generator) -> list[Example]:
    if len(examples) <= n:
        return list(examples)
    return [examples[i] for i in sorted(rng.choice(len(examples), n, replace=False))]


def match_class_mix(forget: list[Example], holdout: list[Example], cap: int, rng: np.random.Generator) -> list[Example]:
    """Largest subsample of ``holdout`` (at most ``cap``) with the forget set's class proportions."""
    if not forget:
        return _subsample(holdout, cap, rng)
    labels, counts = np.unique([e.label for e in forget], return_counts=True)
    share = counts / counts.sum()
    pools = {int(c): [i for i, e in enumerate(holdout) if e.label == c] for c in labels}
    if any(not pools[int(c)] for c in labels):  # a class no held-out subject has: use all
        return _subsample(holdout, cap, rng)
    total = min(cap, min(len(pools[int(c)]) / s for c, s in zip(labels, share)))
    chosen = []
    for c, s in zip(labels, share):
        k = max(1, int(s * total))
        chosen += list(rng.choice(pools[int(c)], k, replace=False))
    return [holdout[i] for i in sorted(chosen)]


def null_spread(
    holdout: list[Example], sig: dict[str, np.ndarray], k_subjects: int, gates: Gates, rng: np.random.Generator
) -> tuple[float, float]:
    """Spread of (AUC, accuracy) between ``k_subjects`` held-out subjects and the other held-out ones.

    Both sides are non-members, so this is the null the forget set is tested against, including
    subject-to-subject variation that a per-sample bootstrap misses (one MovieLens user can be
    far more predictable than the average one). ``nan`` when there are too few subjects.
    """
    subjects = np.array([e.subject_id for e in holdout])
    names = np.unique(subjects)
    if k_subjects < 1 or len(names) < k_subjects + 2:
        return float("nan"), float("nan")
    aucs, accs = [], []
    for _ in range(gates.null_draws):
        pseudo = np.isin(subjects, rng.choice(names, k_subjects, replace=False))
        aucs.append(auc_lower_is_member(sig["loss"][pseudo], sig["loss"][~pseudo]))
        accs.append(sig["correct"][pseudo].mean() - sig["correct"][~pseudo].mean())
    return float(np.std(aucs)), float(np.std(accs))


def _signals(spec: ModelSpec, model: nn.Module, meta: dict[str, Any], examples: list[Example], device) -> dict[str, np.ndarray]:
    logits = predict_logits(spec, model, meta, [e.features for e in examples], device=device)
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    return {
        "correct": (logits.argmax(-1) == labels).numpy(),
        "loss": spec.loss(logits, labels, reduction="none").double().numpy(),
        "conf": logit_confidence(logits, labels),
        "label": labels.numpy(),
    }


def _acc(sig: dict[str, np.ndarray]) -> float:
    return float(sig["correct"].mean()) if len(sig["correct"]) else float("nan")


def _gate(passed: bool, reason: str) -> dict[str, Any]:
    return {"passed": bool(passed), "reason": reason}


def utility_reference(reference: dict[str, Any], baseline: dict[str, Any], name: str) -> tuple[float | None, float, str]:
    """(center, seed-to-seed sd, source) of the accuracy a model without the subjects reaches.

    The exact-retrain reference when calibrated; else ``baseline`` — the caller's fixed bar (the
    model's first version, never the serving one, so the bar cannot ratchet)."""
    if reference.get(f"{name}_acc") is not None:
        return float(reference[f"{name}_acc"]), float(reference.get(f"{name}_acc_sd") or 0.0), "retrain reference"
    base = baseline.get(f"{name}_acc")
    return (None if base is None else float(base)), 0.0, "first version"


def _utility_gate(name: str, acc: float, ref: tuple[float | None, float, str], n: int, gates: Gates,
                  *, exact: bool) -> dict[str, Any]:
    center, sd, source = ref
    if center is None or math.isnan(acc):
        return _gate(True, f"no reference {name} accuracy or no samples: not checked")
    tol = max(gates.max_utility_drop, gates.utility_sigmas * sd,
              gates.utility_sigmas * math.sqrt(max(center * (1 - center), 1e-12) / max(n, 1)))
    ok = acc >= center - tol
    reason = f"{name} acc {acc:.4f} vs {source} {center:.4f} (allowed drop {tol:.4f})"
    if exact:  # never a reason to reject: the caller reads ``ok`` as a warning
        return {**_gate(True, reason + " (exact: informational)"), "within_band": bool(ok)}
    return _gate(ok, reason)


def finite_weights(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.state_dict().values() if p.is_floating_point())


def majority_rate(examples: list[Example]) -> float:
    """Accuracy of always answering the commonest label: the floor any trained model must beat."""
    if not examples:
        return float("nan")
    _, counts = np.unique([e.label for e in examples], return_counts=True)
    return float(counts.max() / counts.sum())


def verify_candidate(
    *,
    spec: ModelSpec,
    candidate: nn.Module,
    meta: dict[str, Any],
    forget: list[Example],
    retain: list[Example],
    test: list[Example],
    holdout: list[Example],
    forget_subject_ids: list[str],
    baseline: dict[str, float],
    reference: dict[str, float] | None,
    gates: Gates,
    device: torch.device | str,
    exact: bool,
    method: str | None = None,
    forget_unseen: list[Example] | None = None,
    original: tuple[nn.Module, dict[str, Any]] | None = None,
    served_conf: np.ndarray | None = None,
) -> VerificationReport:
    """Measure the candidate and decide each gate; ``passed`` only if every gate passes.

    ``reference``: the model's exact-retrain reference (``calibrate.calibrate_reference``);
    ``baseline``: a fixed utility bar used only where the reference has no accuracy figures (the
    model's first version; never the serving version). ``forget_unseen``: samples of the
    forgotten subjects that were never trained on (optional). ``served_conf``: the served model's
    logit-scaled confidence on ``forget`` (for the shift gate; optional).
    """
    start = time.perf_counter()
    rng = np.random.default_rng(gates.seed)
    retain_s = _subsample(retain, gates.max_retain, rng)
    test_s = _subsample(test, gates.max_test, rng)
    holdout_s = match_class_mix(forget, holdout, gates.max_holdout, rng)
    sf, sr, st, sh = (_signals(spec, candidate, meta, xs, device) for xs in (forget, retain_s, test_s, holdout_s))
    forget_acc, retain_acc, test_acc, holdout_acc = _acc(sf), _acc(sr), _acc(st), _acc(sh)
    n_forget = len(forget)
    reference = reference or {}
    ref_auc = float(reference.get("mia_auc", 0.5))
    auc, sigma = loss_auc(sf["loss"], sh["loss"], n_boot=gates.n_boot, seed=gates.seed)
    k_subjects = len({e.subject_id for e in forget})
    null_auc_sd, null_acc_sd = null_spread(holdout_s, sh, k_subjects, gates, rng)
    low_power = n_forget < gates.low_power_n
    rank_z, warnings = None, []
    result: dict[str, dict[str, Any]] = {}

    spread = max((x for x in (sigma, null_auc_sd) if not math.isnan(x)), default=0.0)
    margin = max(gates.auc_margin, gates.auc_sigmas * spread)
    in_band = not math.isnan(auc) and abs(auc - ref_auc) <= margin
    unseen = list(forget_unseen or [])
    within = len(unseen) >= gates.within_min and not low_power
    within_auc = within_sigma = None
    unseen_acc = float("nan")
    if within:
        su = _signals(spec, candidate, meta, unseen, device)
        unseen_acc = _acc(su)
        within_auc, within_sigma = loss_auc(sf["loss"], su["loss"], n_boot=gates.n_boot, seed=gates.seed)
        within_margin = max(gates.auc_margin, gates.auc_sigmas * within_sigma)
    if n_forget == 0:
        mia_test = "none"
        result["mia"] = _gate(True, "no forget samples: nothing was trained on")
    elif exact:
        mia_test = "exact_guarantee"
        result["mia"] = _gate(True, f"exact method: the forget set was never trained on (set AUC {auc:.3f} reported)")
        if not low_power and not in_band:
            warnings.append(f"exact candidate's AUC {auc:.3f} is outside {ref_auc:.3f} +- {margin:.3f}")
    elif within:
        mia_test = "within_subject_auc"
        result["mia"] = _gate(abs(within_auc - 0.5) <= within_margin,
                              f"|AUC {within_auc:.3f} (trained vs never-trained samples of the same subjects) "
                              f"- 0.5| vs margin {within_margin:.3f} (two-sided)")
        margin = within_margin
    elif not low_power:
        mia_test = "set_auc"
        result["mia"] = _gate(in_band, f"|AUC {auc:.3f} - reference {ref_auc:.3f}| vs margin {margin:.3f} (two-sided)")
    else:
        mia_test = "per_sample_rank"
        rank_z, mean_pct = per_sample_rank_test(sf["conf"], sf["label"], sh["conf"], sh["label"])
        result["mia"] = _gate(
            abs(rank_z) <= gates.rank_z_max,
            f"low power (n={n_forget} < {gates.low_power_n}): mean same-class held-out percentile "
            f"{mean_pct:.3f}, z {rank_z:+.2f} vs |z| <= {gates.rank_z_max}",
        )

    center = float(reference.get("forget_acc", holdout_acc))
    if within and not math.isnan(unseen_acc):
        # Same subjects, never trained on: the accuracy an exact retrain has on the forget set.
        se = math.sqrt(max(unseen_acc * (1 - unseen_acc), 1e-12) * (1 / n_forget + 1 / len(unseen)))
        fmargin = max(gates.forget_acc_margin, gates.forget_acc_sigmas * se)
        ok = forget_acc <= unseen_acc + fmargin
        reason = f"forget acc {forget_acc:.4f} vs same subjects' never-trained {unseen_acc:.4f} + {fmargin:.4f}"
        if exact and not ok:
            warnings.append(reason)
        result["forget_acc"] = _gate(ok or exact, reason + (" (exact: informational)" if exact else ""))
    elif n_forget and not math.isnan(center):
        # Both accuracies are estimates: the band uses the standard error of their difference.
        n_center = max(len(holdout_s), 1) if "forget_acc" not in reference else n_forget
        se = math.sqrt(max(center * (1 - center), 1e-12) * (1 / n_forget + 1 / n_center))
        if not math.isnan(null_acc_sd):
            se = max(se, null_acc_sd)
        fmargin = max(gates.forget_acc_margin, gates.forget_acc_sigmas * se)
        # One-sided: accuracy above the band means remembered; over-forgetting shows in the
        # two-sided MIA gate, and an unlucky hard forget set must not fail a good candidate.
        ok = forget_acc <= center + fmargin
        reason = f"forget acc {forget_acc:.4f} vs {'reference' if 'forget_acc' in reference else 'held-out'} {center:.4f} + {fmargin:.4f}"
        if exact and not ok:
            warnings.append(reason)
        result["forget_acc"] = _gate(ok or exact, reason + (" (exact: informational)" if exact else ""))
    else:
        result["forget_acc"] = _gate(True, "no forget samples or no held-out band: not checked")

    forget_ref = unseen_acc if within and not math.isnan(unseen_acc) else center
    reference_acc: dict[str, Any] = {"forget": forget_ref, "forget_source": (
        "same subjects' never-trained samples" if within and not math.isnan(unseen_acc)
        else "retrain reference" if "forget_acc" in reference else "held-out subjects")}
    for name, acc, n in (("retain", retain_acc, len(retain_s)), ("test", test_acc, len(test_s))):
        ref = utility_reference(reference, baseline, name)
        reference_acc[name], reference_acc[f"{name}_source"] = ref[0], ref[2]
        result[f"{name}_acc"] = gate = _utility_gate(name, acc, ref, n, gates, exact=exact)
        if exact and not gate.get("within_band", True):
            warnings.append(f"exact candidate below the retrain band: {gate['reason']}")
    if exact:
        # Sanity only: an exact candidate that fails these is broken (diverged, collapsed), not
        # "too forgetful"; the engine retries it with a new seed.
        result["finite_weights"] = _gate(finite_weights(candidate), "all weights finite")
        floor = majority_rate(test_s)
        result["sanity_test_acc"] = _gate(
            math.isnan(test_acc) or math.isnan(floor) or test_acc > floor or floor >= 1.0,
            f"test acc {test_acc:.4f} above the majority-class rate {floor:.4f}")
    after = {"forget": sf["loss"], "holdout": sh["loss"], "forget_unseen": su["loss"] if within else np.empty(0)}
    before: dict[str, np.ndarray] = {}
    if original is not None:
        before = {name: _signals(spec, original[0], original[1], xs, device)["loss"] if xs else np.empty(0)
                  for name, xs in (("forget", forget), ("holdout", holdout_s),
                                   ("forget_unseen", unseen if within else []))}
    shift = ref_shift = None
    if served_conf is not None and n_forget and len(served_conf) == n_forget:
        shift = float(np.mean(np.abs(sf["conf"] - np.asarray(served_conf))))
        ref_shift = reference.get("retrain_shift")
        if not exact and ref_shift and gates.min_shift_ratio > 0:
            bar = gates.min_shift_ratio * float(ref_shift)
            result["shift"] = _gate(shift >= bar, f"forget-set outputs moved {shift:.3f} from the served model; "
                                                  f"a retrain moves {float(ref_shift):.3f}, at least {bar:.3f} needed")
    audited = audited_share(spec.name, method or "", n_forget / max(n_forget + len(retain), 1))
    if not exact and audited is not None and gates.min_audited_share > 0:
        result["audited_f"] = _gate(audited >= gates.min_audited_share,
                                    f"{method} audited at F {audited:.2f} x the retrain floor on {spec.name} for a "
                                    f"forget set of this share (competition metric, N=16), "
                                    f"{gates.min_audited_share:.2f} needed")
    cleared = bool(subject_params_cleared(spec, candidate, meta, forget_subject_ids))  # per constituent for SISA
    result["subject_params"] = _gate(cleared, "per-subject parameters removed" if cleared else "per-subject parameters remain")

    return VerificationReport(
        method=method, exact=exact, passed=all(g["passed"] for g in result.values()),
        forget_acc=forget_acc, retain_acc=retain_acc, test_acc=test_acc, holdout_acc=holdout_acc,
        mia_auc=auc, mia_sigma=sigma, mia_null_sd=null_auc_sd, mia_margin=margin, mia_test=mia_test, reference_auc=ref_auc,
        n_forget=n_forget, n_holdout=len(holdout_s), n_retain=len(retain_s), n_test=len(test_s),
        low_power=low_power, rank_z=rank_z, subject_params_cleared=cleared, gates=result,
        within_auc=within_auc, within_sigma=within_sigma, shift=shift, reference_shift=ref_shift,
        n_forget_unseen=len(unseen), warnings=warnings, loss_hist=loss_histograms(before, after),
        reference_acc=reference_acc, seconds=time.perf_counter() - start,
    )
