"""What the unlearning benchmark measures on: bundled configurations, targets, forget sets.

A configuration is a model spec (possibly scaled up) trained from scratch by the benchmark; a
model registered in a Lethe database is measured the same way by ``registered.py``. Forget
sets are person-level: every training sample of the drawn subjects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from app.ml.spec import Example, ModelSpec, TrainRecipe
from app.ml.specs import get_spec
from app.ml.specs.mnist import MnistSpec
from app.ml.specs.movielens import MovieLensSpec

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "bench" / "results"
NAME = "unlearning"
# DESIGN.md section 8, judged on the auto policy's chosen candidate against retrain.
TARGETS = {"speedup": 20.0, "mia_auc": 0.03, "test_acc": 0.01, "forget_acc": 0.02}
SIZES = {"1 subject": None, "1%": 0.01, "10%": 0.10}
# Training options (``train_for_registration``) and support module of the methods that need them.
SPECIAL_TRAINING = {
    "sisa": ("app.ml.sisa", {"sisa": {"shards": 4, "slices": 3}}),
    "amnesiac": ("app.ml.update_log", {"update_log": True}),
}
COLUMNS = [
    "config", "spec", "forget_set", "n_subjects", "n_forget", "seed", "method", "exact", "status", "seconds",
    "cpu_seconds", "verify_seconds", "speedup", "cpu_speedup", "forget_acc", "retain_acc", "test_acc", "mia_auc",
    "within_auc", "mia_test", "gate_passed", "param_change", "d_forget_acc", "d_retain_acc", "d_test_acc",
    "d_mia_auc", "audit_auc", "audit_tpr1", "audit_tpr5", "rmia_tpr1", "rmia_tpr5", "note",
]


class MovieLensLarge(MovieLensSpec):
    """The demo MovieLens model scaled up (4x embeddings and hidden, 24 epochs at batch 256) so a
    full retrain takes >= 1 minute on one CPU core. Same name: the engine applies the movielens
    chain and configs to it, as it would to a bigger deployment of the demo model."""

    recipe: ClassVar[TrainRecipe] = TrainRecipe(epochs=24, batch_size=256, lr=3e-4, weight_decay=1e-4)

    def make_meta(self, train_features: list[dict[str, Any]]) -> dict[str, Any]:
        return {**super().make_meta(train_features), "dim": 128, "hidden": 256}


class MovieLens30s(MovieLensLarge):
    """``movielens-large`` trained 13 epochs instead of 24: a retrain takes >= 30 s on one CPU core
    (16 epochs took 41 s on a quiet core here, so 13 take ~34 s), issue 10's ">= 30 s configuration",
    no larger, so that the competition metric's 2 N retrains per forget set fit an afternoon on
    2 cores (``--jobs 2``)."""

    recipe: ClassVar[TrainRecipe] = TrainRecipe(epochs=13, batch_size=256, lr=3e-4, weight_decay=1e-4)


class MnistMemo(MnistSpec):
    """A CNN that memorises, for the competition metric (issue 10): the MNIST spec on its first 400
    subjects (2,000 images, ~1,400 trained), 20 % of the labels replaced by fixed random wrong ones,
    twice as wide and trained 30 epochs without weight decay, so members separate from never-seen
    subjects as the competition's CIFAR-10 ResNet's did (clean labels alone gave a loss AUC of only
    0.53: MNIST is too easy to memorise). Same name: the engine applies the mnist chain and configs."""

    recipe: ClassVar[TrainRecipe] = TrainRecipe(epochs=30, batch_size=64, lr=2e-3, weight_decay=0.0)
    SUBJECTS: ClassVar[int] = 400

    NOISE: ClassVar[float] = 0.2  # share of images given a fixed random wrong label, in every split

    def load_examples(self) -> list[Example]:
        keep = {f"mnist-{i:04d}" for i in range(self.SUBJECTS)}
        rng = np.random.default_rng(7)
        out = []
        for e in super().load_examples():
            if e.subject_id not in keep:
                continue
            # An image with a wrong label can only be fitted by memorising it (Feldman 2020), so
            # members carry a per-example trace a never-trained model does not have.
            if rng.random() < self.NOISE:
                e = Example(e.subject_id, e.split, e.features, int((e.label + rng.integers(1, 10)) % 10))
            out.append(e)
        return out

    def make_meta(self, train_features: list[dict[str, Any]]) -> dict[str, Any]:
        return {**super().make_meta(train_features), "channels": 16, "hidden": 128}


@dataclass(frozen=True)
class BenchConfig:
    key: str
    make_spec: Callable[[], ModelSpec]
    model: str
    large: bool = False  # >= 1 minute retrain: targets judged here, no audit (reference models too costly)
    # Forget sets of a full run when --sizes is not given (the large config drops "1%" to keep the run
    # near 20 minutes on 2 shared cores: each of its forget sets costs a >= 1 minute retrain).
    sizes: tuple[str, ...] = tuple(SIZES)
    # Method overrides recorded with this model (as ``Model.config["methods"]`` is in production),
    # on top of ``engine.DEFAULT_CONFIGS`` for the spec.
    method_config: dict[str, dict[str, Any]] = field(default_factory=dict)


CONFIGS = {c.key: c for c in (
    BenchConfig("toy", lambda: get_spec("toy"), "MLP 16-128-128-4 (smoke tests)"),
    BenchConfig("digits", lambda: get_spec("digits"), "small CNN, 8x8 digits"),
    BenchConfig("mnist", lambda: get_spec("mnist"), "small CNN, MNIST-5000"),
    BenchConfig("mnist-memo", MnistMemo, "CNN 16/128 on 1,400 MNIST images, 30 epochs (memorises)"),
    BenchConfig("movielens", lambda: get_spec("movielens"), "embeddings + MLP (demo model, dim 32)"),
    # Its recipe rate is 1/10 of the demo model's: measured on a 10 % forget set (12-epoch variant),
    # finetune at the default 1x rate left AUC 0.56 vs retrain 0.49 and failed the gate; 150 steps
    # at 5x passed (on the demo model 3-5x costs 1-2 points of test accuracy, so it stays here).
    BenchConfig("movielens-30s", MovieLens30s, "embeddings + MLP, dim 128 / hidden 256, 13 epochs (retrain >= 30 s)",
                large=True, sizes=("1 subject", "10%"), method_config={"finetune": {"steps": 150, "lr_scale": 5.0}}),
    BenchConfig("movielens-large", MovieLensLarge, "embeddings + MLP, dim 128 / hidden 256, 24 epochs", large=True,
                sizes=("1 subject", "10%"), method_config={"finetune": {"steps": 150, "lr_scale": 5.0}}),
)}
# The large config first: the targets are judged there, and a run cut short still has them.
FULL_CONFIGS = ("movielens-large", "movielens", "digits", "mnist")
QUICK_CONFIGS = ("toy", "digits")


def info_large(info: dict[str, Any]) -> bool:
    """Whether a configuration's row (``infos``) is a >= 1-minute one; older saved JSON lacks the key."""
    if "large" in info:
        return bool(info["large"])
    cfg = CONFIGS.get(info["config"])
    return bool(cfg and cfg.large)


def info_sizes(info: dict[str, Any]) -> tuple[str, ...]:
    """A configuration's own forget sets (``infos``), for runs without ``--sizes``."""
    if info.get("sizes"):
        return tuple(info["sizes"])
    cfg = CONFIGS.get(info["config"])
    return cfg.sizes if cfg else tuple(SIZES)


@dataclass
class ForgetSet:
    label: str
    subjects: list[str]
    forget: list[Example]
    retain: list[Example]
    unseen: list[Example]  # never-trained samples of the same subjects (MovieLens test ratings)
    subject_ids: list[str]  # raw ids for per-subject parameters (spec.subject_id_of)


def draw_forget_set(spec: ModelSpec, examples: list[Example], label: str, seed: int) -> ForgetSet:
    train = [e for e in examples if e.split == "train"]
    subjects = sorted({e.subject_id for e in train})
    share = SIZES[label]
    k = 1 if share is None else max(1, round(share * len(subjects)))
    rng = np.random.default_rng([seed, k])
    chosen = set(rng.choice(subjects, k, replace=False).tolist())
    forget = [e for e in train if e.subject_id in chosen]
    return ForgetSet(
        label, sorted(chosen), forget, [e for e in train if e.subject_id not in chosen],
        [e for e in examples if e.split == "test" and e.subject_id in chosen],
        sorted({sid for e in forget if (sid := spec.subject_id_of(e.features))}),
    )
