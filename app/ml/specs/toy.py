"""``toy``: Gaussian blobs and a small MLP that memorises, for fast unlearning and MIA tests.

Data: 40 subjects ``toy-00`` .. ``toy-39`` with 10 samples each, 16-D points drawn around 4
class centres that overlap (a model trained on them generalises to about 70 %), so that an over-parameterised
MLP reaches 100 % train accuracy only by memorising: the loss-threshold membership attack of
Yeom et al., "Privacy Risk in Machine Learning" (CSF 2018) then separates members from held-out
subjects, which is what the unlearning and verification tests need. Every draw comes from a
fixed ``numpy`` seed. Subjects ``i % 5 == 0`` are ``holdout`` (8 subjects), ``i % 5 == 1`` are
``test`` (8 subjects), the other 24 are ``train``. No per-subject parameters.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from app.ml.spec import Example, ModelSpec, TrainRecipe
from app.ml.specs.common import require_float_vector, require_keys, require_mapping

DIM = 16
N_SUBJECTS = 40
PER_SUBJECT = 10
# Centre spread relative to unit noise: chosen so the classes overlap (held-out accuracy about 70 %).
CENTRE_SCALE = 0.4
DATA_SEED = 1234


class ToyMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ToySpec(ModelSpec):
    name: ClassVar[str] = "toy"
    description: ClassVar[str] = "Synthetic 16-D Gaussian blobs (4 classes, 40 subjects) and a 2-layer MLP."
    num_classes: ClassVar[int] = 4
    # Full memorisation of 240 samples in well under a second on one CPU core.
    recipe: ClassVar[TrainRecipe] = TrainRecipe(epochs=40, batch_size=32, lr=3e-3, weight_decay=0.0)
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"x": {"type": "array", "items": {"type": "number"}, "minItems": DIM, "maxItems": DIM}},
        "required": ["x"],
        "additionalProperties": False,
    }
    input_example: ClassVar[dict[str, Any]] = {"x": [0.0] * DIM}

    def load_examples(self) -> list[Example]:
        rng = np.random.default_rng(DATA_SEED)
        centres = rng.normal(0.0, CENTRE_SCALE, size=(self.num_classes, DIM))
        examples = []
        for s in range(N_SUBJECTS):
            split = "holdout" if s % 5 == 0 else "test" if s % 5 == 1 else "train"
            labels = rng.integers(0, self.num_classes, size=PER_SUBJECT)
            points = centres[labels] + rng.normal(0.0, 1.0, size=(PER_SUBJECT, DIM))
            for x, y in zip(points, labels):
                examples.append(Example(f"toy-{s:02d}", split, {"x": [round(float(v), 6) for v in x]}, int(y)))
        return examples

    def example_from_row(self, row: dict[str, Any]) -> Example:
        """A Delta table row ``{x: list of 16 floats, label: int, ...}`` (issue 18); Lethe sets the
        subject and split from the table's columns."""
        return Example("", "train", {"x": [float(v) for v in row["x"]]}, int(row["label"]))

    def make_meta(self, train_features: list[dict[str, Any]]) -> dict[str, Any]:
        return {"spec": self.name, "dim": DIM, "hidden": 128}

    def build(self, meta: dict[str, Any]) -> nn.Module:
        return ToyMLP(meta["dim"], meta["hidden"], self.num_classes)

    def collate(self, features: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = torch.tensor([f["x"] for f in features], dtype=torch.float32).reshape(-1, meta["dim"])
        return {"x": x}

    def validate_input(self, item: dict[str, Any]) -> dict[str, Any]:
        item = require_mapping(item)
        require_keys(item, ("x",))
        return {"x": require_float_vector(item, "x", length=DIM)}
