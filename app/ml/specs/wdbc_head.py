"""``wdbc_head``: a small head trained on real patients over a frozen public backbone (issue 20).

Data: scikit-learn's bundled Wisconsin Diagnostic Breast Cancer set (WDBC, 569 patients, 30
nucleus measurements; read from the scikit-learn wheel, no download), one subject per patient
(``patient-0001`` ..), splits by subject as in the ``breast_cancer`` example plugin. Real people.

Network: a fixed public backbone -- three 1024-wide ReLU layers whose weights are drawn from a
published seed (``BACKBONE_SEED``, He-normal, zero biases), the same on every machine and never
trained -- and a small head (1024 -> 32 -> 2) trained on the patients. The input transform is
public too (``log1p`` of each measurement: no statistic of any patient enters the backbone), so
a patient's backbone features depend on nothing but their own row, and the per-sample feature
cache stays valid when other patients are erased.

The spec declares the backbone public (``public_parameters``) and splits into backbone and head
(``split_public``): training and every method keep the backbone frozen, each checkpoint records its
hash, and exact erasure retrains only the head on cached features (``app/ml/public.py``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from app.ml.spec import Example, ModelSpec, PublicParameters, TrainRecipe
from app.ml.specs.common import require_keys, require_mapping, subject_split

QUANTITIES = ("radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
              "concave_points", "symmetry", "fractal_dimension")
FEATURES: tuple[str, ...] = (tuple(f"mean_{q}" for q in QUANTITIES) + tuple(f"{q}_error" for q in QUANTITIES)
                             + tuple(f"worst_{q}" for q in QUANTITIES))
# The published seed of the public backbone: its weights are a pure function of it.
BACKBONE_SEED = 20261206
WIDTH, DEPTH, HIDDEN = 1024, 3, 32


class Backbone(nn.Module):
    def __init__(self, dim: int, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(dim if i == 0 else width, width), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        gen = torch.Generator().manual_seed(BACKBONE_SEED)  # independent of the global seed
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / m.in_features))
                    m.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PublicBackboneNet(nn.Module):
    def __init__(self, dim: int, width: int, depth: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = Backbone(dim, width, depth)
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class WdbcHeadSpec(ModelSpec):
    name: ClassVar[str] = "wdbc_head"
    description: ClassVar[str] = (
        "Wisconsin breast cancer (569 real patients, one subject each): a 1024->32->2 head on a frozen "
        "public backbone (3 x 1024 ReLU layers from published seed 20261206); exact erasure retrains the head.")
    num_classes: ClassVar[int] = 2
    recipe: ClassVar[TrainRecipe] = TrainRecipe(epochs=60, batch_size=32, lr=1e-3, weight_decay=1e-4)
    public_parameters: ClassVar[PublicParameters | None] = PublicParameters(
        prefixes=("backbone.",),
        source=f"3 x {WIDTH} ReLU layers, He-normal from torch.Generator seed {BACKBONE_SEED} (app.ml.specs.wdbc_head)")
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {name: {"type": "number", "minimum": 0} for name in FEATURES},
        "required": list(FEATURES),
        "additionalProperties": False,
    }
    input_example: ClassVar[dict[str, Any]] = dict(zip(FEATURES, (
        17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871,
        1.095, 0.9053, 8.589, 153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193,
        25.38, 17.33, 184.6, 2019.0, 0.1622, 0.6656, 0.7119, 0.2654, 0.4601, 0.1189,
    )))

    def load_examples(self) -> list[Example]:
        from sklearn.datasets import load_breast_cancer  # lazy: sklearn costs seconds of import

        data = load_breast_cancer()
        examples = []
        for row, (values, label) in enumerate(zip(data.data, data.target)):
            subject = f"patient-{row + 1:04d}"
            split = subject_split(subject, holdout=0.15, test=0.15, salt="breast_cancer")
            examples.append(Example(subject, split, {n: float(v) for n, v in zip(FEATURES, values)}, int(label)))
        return examples

    def make_meta(self, train_features: list[dict[str, Any]]) -> dict[str, Any]:
        # Nothing computed from the patients: sizes only (the input transform is public).
        return {"spec": self.name, "features": list(FEATURES), "width": WIDTH, "depth": DEPTH, "hidden": HIDDEN}

    def build(self, meta: dict[str, Any]) -> nn.Module:
        return PublicBackboneNet(len(meta["features"]), meta["width"], meta["depth"], meta["hidden"],
                                 self.num_classes)

    def split_public(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        return model.backbone, model.head

    def collate(self, features: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        names = meta["features"]
        x = torch.tensor([[f[n] for n in names] for f in features], dtype=torch.float32).reshape(-1, len(names))
        return {"x": torch.log1p(x.clamp_min(0))}

    def validate_input(self, item: dict[str, Any]) -> dict[str, Any]:
        item = require_mapping(item)
        require_keys(item, FEATURES)
        out = {}
        for name in FEATURES:
            value = item[name]
            # The messages name the field, never its value (health data, GDPR Art. 9).
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"'{name}' must be a number, got {type(value).__name__}")
            if not math.isfinite(float(value)) or float(value) < 0:
                raise ValueError(f"'{name}' must be a finite number >= 0")
            out[name] = float(value)
        return out
