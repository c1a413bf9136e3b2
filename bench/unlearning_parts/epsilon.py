"""Epsilon mode (``--epsilon N``): the NeurIPS 2023 competition's forgetting score per method.

Triantafillou et al. 2024 (arXiv 2406.09073) and ``workers/verify/epsilon.py``. For each
person-level forget set (1 heavy user, 10 random users, 10 % of users) of one original model:
two independent sets of N retrains (seeds 1..N and 1001..1000+N: the second gives the noise
floor, the best F any method can expect at this N), N unlearned runs per method (seeds 1..N, the
same original), and N runs of ``auto`` (seeds 2001..2000+N) (``engine.forget`` with its gate and escalations, as a job
runs it). Per forget example, each model's output is the logit-scaled confidence of the true
label; F compares the N unlearned outputs with the N retrained ones. Each method candidate also
goes through the quick gate (``workers/verify/report.py``), which gives the gate's false-pass
rate: the share of passed candidates whose method scores F below half the floor (issue 10 section 5).
Outputs: ``epsilon_report.write`` (``unlearning-epsilon[-CONFIG].{md,csv,json,png}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.ml.spec import Example, ModelSpec
from app.ml.train import predict_logits
from bench.unlearning_parts.configs import CONFIGS, ForgetSet
from bench.unlearning_parts.measure import Stage
from workers.verify.epsilon import forget_quality, logit_scaled_confidence
from workers.verify.report import Gates

EPSILON_SETS = ("1 heavy user", "10 random users", "10% of users")
EPSILON_METHODS = ("finetune", "neggrad_plus", "reinit_repair", "ssd", "scrub", "salun")
FLOOR_SEED = 1000  # the second, independent set of retrains starts here
# auto's seeds: when it serves an exact retrain, that retrain must not be one of the reference
# retrains (seeds 1..N), or auto would be scored against itself.
AUTO_SEED = 2000
MAX_RETAIN_EVAL = 3000  # retain accuracy on a fixed subsample, as the gate does


def person_set(spec: ModelSpec, examples: list[Example], label: str, seed: int = 0) -> ForgetSet:
    """Every training sample of the heaviest subject, of 10 random subjects, or of 10 % of them."""
    train = [e for e in examples if e.split == "train"]
    counts: dict[str, int] = {}
    for e in train:
        counts[e.subject_id] = counts.get(e.subject_id, 0) + 1
    subjects = sorted(counts)
    rng = np.random.default_rng([seed, len(label)])
    if label == "1 heavy user":
        chosen = {max(subjects, key=lambda s: (counts[s], s))}
    elif label == "10 random users":
        chosen = set(rng.choice(subjects, 10, replace=False).tolist())
    elif label == "10% of users":
        chosen = set(rng.choice(subjects, max(1, round(0.1 * len(subjects))), replace=False).tolist())
    else:
        raise ValueError(f"unknown epsilon forget set {label!r}; known: {', '.join(EPSILON_SETS)}")
    forget = [e for e in train if e.subject_id in chosen]
    return ForgetSet(label, sorted(chosen), forget, [e for e in train if e.subject_id not in chosen],
                     [e for e in examples if e.split == "test" and e.subject_id in chosen],
                     sorted({sid for e in forget if (sid := spec.subject_id_of(e.features))}))


@dataclass
class Sample:
    """N runs of one method on one forget set: per run its time, outputs and accuracies."""

    method: str
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # process CPU time: robust to shared cores
    outputs: list[np.ndarray] = field(default_factory=list)
    retain_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    forget_acc: list[float] = field(default_factory=list)  # accuracy on every forget example
    gate: list[bool | None] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    shift: list[float | None] = field(default_factory=list)  # the gate's shift from the served model
    gate_quick: list[bool] = field(default_factory=list)  # passed every gate but the audit admission
    cleared: list[bool] = field(default_factory=list)  # interim rows: subjects' own parameters cleared
    stranger_gap: list[float] = field(default_factory=list)  # interim rows: |subject - stranger| logits
    quality: dict | None = None  # forget_quality against the retrains, once the sample is complete

    def quality_against(self, retrained: "Sample") -> dict:
        """``forget_quality`` of these runs against ``retrained``'s, computed once (outputs are
        rewritten after every method, and scoring 1,000 examples takes seconds)."""
        if self.quality is None:
            self.quality = forget_quality(np.stack(self.outputs), np.stack(retrained.outputs))
        return self.quality

    def record(self, run: dict[str, Any]) -> None:
        """Append one run as ``epsilon_tasks`` returns it."""
        self.seconds.append(run["seconds"])
        self.cpu_seconds.append(run.get("cpu_seconds", float("nan")))
        self.outputs.append(run["outputs"])
        self.retain_acc.append(run["retain_acc"])
        self.test_acc.append(run["test_acc"])
        self.forget_acc.append(run.get("forget_acc", float("nan")))
        self.gate.append(run.get("gate"))
        self.served.append(run.get("served") or self.method)
        self.decisions.append(run.get("decision", ""))
        if "shift" in run:
            self.shift.append(run["shift"])
        if "gate_quick" in run:
            self.gate_quick.append(run["gate_quick"])
        if "cleared" in run:
            self.cleared.append(run["cleared"])
        if run.get("stranger_gap") is not None:
            self.stranger_gap.append(run["stranger_gap"])


@dataclass
class Evaluator:
    """The fixed samples every model of one forget set is measured on."""

    spec: ModelSpec
    device: Any
    scored: list[Example]  # forget examples scored by the metric (all, or a fixed subsample)
    retain: list[Example]
    test: list[Example]
    forget: list[Example]  # every forget example (forget accuracy)

    def outputs(self, model, meta) -> np.ndarray:
        logits = predict_logits(self.spec, model, meta, [e.features for e in self.scored], device=self.device)
        return logit_scaled_confidence(logits.numpy(), np.array([e.label for e in self.scored]))


def evaluator(st: Stage, max_examples: int) -> Evaluator:
    """Forget examples scored (a fixed subsample of at most ``max_examples``), retain and test."""
    return Evaluator(st.spec, st.device, _subsample(st.fs.forget, max_examples, 1),
                     _subsample(st.fs.retain, MAX_RETAIN_EVAL, 2), st.test, st.fs.forget)


def _subsample(xs: list[Example], n: int, seed: int) -> list[Example]:
    if len(xs) <= n:
        return list(xs)
    idx = np.random.default_rng(seed).choice(len(xs), n, replace=False)
    return [xs[i] for i in sorted(idx)]


def stage_for(key: str, spec: ModelSpec, examples: list[Example], label: str, device, reference,
              seed: int = 0) -> Stage:
    fs = person_set(spec, examples, label, seed)
    return Stage(spec, fs, [e for e in examples if e.split == "test"], [e for e in examples if e.split == "holdout"],
                 device, 0, reference, Gates(), CONFIGS[key].method_config)
