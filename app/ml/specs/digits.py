"""``digits``: a small CNN on scikit-learn's 8x8 handwritten digits (UCI optdigits, 1,797 images).

Subjects: the data set has no writer ids, so subjects are assigned deterministically by row
order: image ``i`` belongs to subject ``digits-{i // 5:04d}`` (5 images each, 360 subjects, the
last one has 2). Splits are by subject, from a hash of the subject id: about 15 % ``holdout``
(never trained on: the MIA population, DESIGN.md section 4), about 15 % ``test``, the rest
``train``. Features are ``{"pixels": [64 numbers in 0..16]}`` (row-major 8x8). No per-subject
parameters. Architecture in the spirit of LeNet (LeCun et al. 1998), sized for 8x8 inputs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from app.ml.spec import Example, ModelSpec, TrainRecipe
from app.ml.specs.common import require_float_vector, require_keys, require_mapping, subject_split

PER_SUBJECT = 5


class DigitsCNN(nn.Module):
    def __init__(self, channels: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * channels * 16, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))


class DigitsSpec(ModelSpec):
    name: ClassVar[str] = "digits"
    description: ClassVar[str] = "scikit-learn 8x8 digits (10 classes), small CNN; 5 images per synthetic subject."
    num_classes: ClassVar[int] = 10
    # 30 epochs reach ~100 % train accuracy (so members are measurably memorised) in a few seconds.
    recipe: ClassVar[TrainRecipe] = TrainRecipe(epochs=30, batch_size=64, lr=2e-3, weight_decay=0.0)
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "pixels": {
                "type": "array", "items": {"type": "number", "minimum": 0, "maximum": 16},
                "minItems": 64, "maxItems": 64,
            }
        },
        "required": ["pixels"],
        "additionalProperties": False,
    }
    input_example: ClassVar[dict[str, Any]] = {
        "pixels": [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0,
                   0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0,
                   0, 0, 6, 13, 10, 0, 0, 0]
    }

    def load_examples(self) -> list[Example]:
        from sklearn.datasets import load_digits  # lazy: sklearn costs ~3 s of import in every API process
        data = load_digits()
        examples = []
        for i, (pixels, label) in enumerate(zip(data.data, data.target)):
            subject = f"digits-{i // PER_SUBJECT:04d}"
            split = subject_split(subject, holdout=0.15, test=0.15, salt="digits")
            examples.append(Example(subject, split, {"pixels": [float(v) for v in pixels]}, int(label)))
        return examples

    def make_meta(self, train_features: list[dict[str, Any]]) -> dict[str, Any]:
        return {"spec": self.name, "channels": 16, "hidden": 64}

    def build(self, meta: dict[str, Any]) -> nn.Module:
        return DigitsCNN(meta["channels"], meta["hidden"], self.num_classes)

    def collate(self, features: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        pixels = torch.tensor([f["pixels"] for f in features], dtype=torch.float32).reshape(-1, 1, 8, 8)
        return {"pixels": pixels / 16.0}

    def validate_input(self, item: dict[str, Any]) -> dict[str, Any]:
        item = require_mapping(item)
        require_keys(item, ("pixels",))
        return {"pixels": require_float_vector(item, "pixels", length=64, low=0.0, high=16.0)}
