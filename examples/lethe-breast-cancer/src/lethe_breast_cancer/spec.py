"""``breast_cancer``: a small MLP on the Wisconsin Diagnostic Breast Cancer data (WDBC, 569 patients).

Data: scikit-learn's bundled copy of WDBC (Street, Wolberg & Mangasarian, "Nuclear feature
extraction for breast tumor diagnosis", 1993; UCI ML repository), read by
``sklearn.datasets.load_breast_cancer`` from the scikit-learn wheel itself: no download. Each
row is the fine-needle aspirate of one patient's breast mass, described by 30 measurements of
its cell nuclei (mean, standard error and "worst" of 10 quantities such as radius, texture and
concave points). Label ``0`` = malignant (212 patients), ``1`` = benign (357).

Subjects: one row is one patient, so a row is one data subject. scikit-learn drops the
original WDBC ID column, so subjects are named by row order, 1-based: row ``i`` belongs to
``patient-{i + 1:04d}`` (``patient-0001`` .. ``patient-0569``), the same on every machine.
Splits are by subject, from a hash of the subject id, in the proportions the bundled specs use
(``app/ml/specs/digits.py``): about 15 % ``holdout`` (never trained on: the membership-inference
population, DESIGN.md section 4), about 15 % ``test``, the rest ``train``.

Features are stored and predicted as a flat object of 30 named numbers (``mean_radius``, ...,
``worst_fractal_dimension``); the network sees them standardised with the mean and standard
deviation of the *training* rows, computed in ``make_meta`` and kept in the checkpoint's meta,
so that no statistic of a test or held-out patient leaks into the model. No per-subject
parameters: forgetting a patient needs no surgery on the weights, only unlearning.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from app.ml.spec import Example, ModelSpec, TrainRecipe
from app.ml.specs.common import require_keys, require_mapping, subject_split

# The 10 quantities measured on each nucleus; each comes as mean, standard error and "worst".
QUANTITIES = ("radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
              "concave_points", "symmetry", "fractal_dimension")
# scikit-learn's ``feature_names`` order ("mean radius" .. "radius error" .. "worst radius" ..),
# as JSON-friendly keys.
FEATURES: tuple[str, ...] = (tuple(f"mean_{q}" for q in QUANTITIES) + tuple(f"{q}_error" for q in QUANTITIES)
                             + tuple(f"worst_{q}" for q in QUANTITIES))
# A standard deviation below this is treated as 1 (a constant column carries no signal).
MIN_STD = 1e-8


def subject_of_row(row: int) -> str:
    """The subject id of 0-based data row ``row``."""
    return f"patient-{row + 1:04d}"


class BreastCancerMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BreastCancerSpec(ModelSpec):
    name: ClassVar[str] = "breast_cancer"
    description: ClassVar[str] = (
        "Wisconsin Diagnostic Breast Cancer (569 patients, 30 nucleus measurements): malignant (0) or "
        "benign (1), 2-layer MLP; one patient per subject (patient-0001 ..)."
    )
    num_classes: ClassVar[int] = 2
    # 411 training rows: 60 epochs of batch 32 take under 1 s on one CPU core and fit the
    # training rows almost perfectly (so members are measurably remembered) while test accuracy
    # stays about 98 % (majority class: 63 %).
    recipe: ClassVar[TrainRecipe] = TrainRecipe(epochs=60, batch_size=32, lr=1e-3, weight_decay=1e-4)
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {name: {"type": "number", "minimum": 0} for name in FEATURES},
        "required": list(FEATURES),
        "additionalProperties": False,
    }
    # Row 0 of the data set (patient-0001, malignant).
    input_example: ClassVar[dict[str, Any]] = dict(zip(FEATURES, (
        17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871,
        1.095, 0.9053, 8.589, 153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193,
        25.38, 17.33, 184.6, 2019.0, 0.1622, 0.6656, 0.7119, 0.2654, 0.4601, 0.1189,
    )))

    def load_examples(self) -> list[Example]:
        from sklearn.datasets import load_breast_cancer  # lazy: sklearn costs seconds of import in every API process

        data = load_breast_cancer()
        examples = []
        for row, (values, label) in enumerate(zip(data.data, data.target)):
            subject = subject_of_row(row)
            split = subject_split(subject, holdout=0.15, test=0.15, salt="breast_cancer")
            features = {name: float(v) for name, v in zip(FEATURES, values)}
            examples.append(Example(subject, split, features, int(label)))
        return examples

    def example_from_row(self, row: dict[str, Any]) -> Example:
        """One row of a Delta table (``store: delta``; ``lethe_breast_cancer.delta_table`` writes one):
        the 30 measurement columns and ``label``. Lethe sets the subject and split from the table."""
        return Example("", "train", {name: float(row[name]) for name in FEATURES}, int(row["label"]))

    def make_meta(self, train_features: list[dict[str, Any]]) -> dict[str, Any]:
        if not train_features:
            raise ValueError("no training features to compute the standardisation from")
        x = torch.tensor([[f[name] for name in FEATURES] for f in train_features], dtype=torch.float64)
        mean = x.mean(0)
        std = x.std(0, unbiased=False)
        std = torch.where(std < MIN_STD, torch.ones_like(std), std)
        return {"spec": self.name, "features": list(FEATURES), "hidden": 64,
                "mean": [float(v) for v in mean], "std": [float(v) for v in std]}

    def build(self, meta: dict[str, Any]) -> nn.Module:
        return BreastCancerMLP(len(meta["features"]), meta["hidden"], self.num_classes)

    def collate(self, features: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        names = meta["features"]
        x = torch.tensor([[f[name] for name in names] for f in features], dtype=torch.float32).reshape(-1, len(names))
        # Standardised here, not in the network: the statistics stay in meta (JSON, beside the
        # weights) and no unlearning method can move them as if they were parameters.
        mean = torch.tensor(meta["mean"], dtype=torch.float32)
        std = torch.tensor(meta["std"], dtype=torch.float32)
        return {"x": (x - mean) / std}

    def validate_input(self, item: dict[str, Any]) -> dict[str, Any]:
        item = require_mapping(item)
        require_keys(item, FEATURES)
        return {name: _require_measurement(item, name) for name in FEATURES}


def _require_measurement(item: dict[str, Any], key: str) -> float:
    value = item[key]
    # bool is an int subclass; a JSON true is not a measurement.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"'{key}' must be a number, got {type(value).__name__}")
    # The messages name the field, never its value: a patient's measurements are health data
    # (GDPR Art. 9), and the message is sent back in the 422 body.
    f = float(value)
    if not math.isfinite(f):
        raise ValueError(f"'{key}' must be finite")
    if f < 0:
        raise ValueError(f"'{key}' must be >= 0 (every measurement is a size, count or ratio)")
    return f
