"""``interactions``: synthetic user-item interactions at any size, for data-at-scale benchmarks.

Generated, not downloaded: ``n_users`` users rate items of ``n_items`` with a latent taste
(fixed seed), label 1 = likes. The model hashes user and item ids into embedding buckets
(the hashing trick), so its meta does not depend on the training set and a model can be
registered from a small sample while the registry holds tens of millions of rows (bulk ingest
into the columnar store; ``bench/data_scale.py``). Hashed buckets are shared between users,
so there are no per-subject parameters to clear. Splits by subject: 10 % holdout, 10 % test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from app.ml.spec import Example, ModelSpec, TrainRecipe
from app.ml.specs.common import require_int, require_keys, require_mapping

BUCKETS = 1 << 16
DIM = 16


def generate(n: int, *, n_users: int, n_items: int = 2000, seed: int = 0, start: int = 0) -> Iterator[dict[str, Any]]:
    """``n`` interactions as bulk-ingest lines (``subject_id``, ``features``, ``label``, ``split``)."""
    rng = np.random.default_rng(seed)
    taste_u = np.random.default_rng(99).normal(size=(n_users, 4))
    taste_i = np.random.default_rng(98).normal(size=(n_items, 4))
    # Item popularity dominates (learnable for unseen users too); taste adds per-user signal.
    pop = np.random.default_rng(97).normal(0, 1.5, size=n_items)
    chunk = 100_000
    for lo in range(start, start + n, chunk):
        k = min(chunk, start + n - lo)
        users = rng.integers(0, n_users, size=k)
        items = rng.integers(0, n_items, size=k)
        score = pop[items] + 0.5 * np.einsum("ij,ij->i", taste_u[users], taste_i[items])
        likes = (score + rng.normal(0, 0.5, size=k)) > 0
        for u, i, y in zip(users.tolist(), items.tolist(), likes.tolist()):
            split = "holdout" if u % 10 == 0 else "test" if u % 10 == 1 else "train"
            yield {"subject_id": f"user-{u}", "features": {"user_id": u, "item_id": i}, "label": int(y),
                   "split": split}


class HashedMF(nn.Module):
    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        self.user = nn.Embedding(buckets, dim)
        self.item = nn.Embedding(buckets, dim)
        self.head = nn.Sequential(nn.Linear(2 * dim, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.user(user), self.item(item)], dim=-1))


class InteractionsSpec(ModelSpec):
    name: ClassVar[str] = "interactions"
    description: ClassVar[str] = "Synthetic user-item interactions (any size) and a hashed-embedding model."
    num_classes: ClassVar[int] = 2
    recipe: ClassVar[TrainRecipe] = TrainRecipe(epochs=4, batch_size=256, lr=1e-2, weight_decay=0.0)
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"user_id": {"type": "integer"}, "item_id": {"type": "integer"}},
        "required": ["user_id", "item_id"],
    }
    input_example: ClassVar[dict[str, Any]] = {"user_id": 1, "item_id": 2}
    # Size of the registration sample; the registry can then grow by bulk ingest.
    n_examples: ClassVar[int] = 20_000
    n_users: ClassVar[int] = 2_000

    def load_examples(self) -> list[Example]:
        # LETHE_INTERACTIONS_EXAMPLES shrinks the registration sample (the benchmark's smoke run).
        n = int(os.environ.get("LETHE_INTERACTIONS_EXAMPLES", self.n_examples))
        return [Example(r["subject_id"], r["split"], r["features"], r["label"])
                for r in generate(n, n_users=min(self.n_users, max(100, n // 10)))]

    def example_from_row(self, row: dict[str, Any]) -> Example:
        """A Delta table row ``{user_id, item_id, label, ...}`` (issue 18; ``bench/delta_scale.py``)."""
        return Example("", "train", {"user_id": int(row["user_id"]), "item_id": int(row["item_id"])}, int(row["label"]))

    def make_meta(self, train_features: list[dict[str, Any]]) -> dict[str, Any]:
        return {"spec": self.name, "buckets": BUCKETS, "dim": DIM}

    def build(self, meta: dict[str, Any]) -> nn.Module:
        return HashedMF(meta["buckets"], meta["dim"])

    def collate(self, features: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        b = meta["buckets"]
        return {"user": torch.tensor([f["user_id"] * 2654435761 % b for f in features], dtype=torch.long),
                "item": torch.tensor([f["item_id"] * 40503 % b for f in features], dtype=torch.long)}

    def validate_input(self, item: dict[str, Any]) -> dict[str, Any]:
        item = require_mapping(item)
        require_keys(item, ("user_id", "item_id"))
        return {"user_id": require_int(item, "user_id"), "item_id": require_int(item, "item_id")}
