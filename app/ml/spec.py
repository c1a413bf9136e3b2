"""The contract between Lethe and a servable model.

A ``ModelSpec`` says how to get a model's data (as per-subject samples), how to build
the network from a JSON-able ``meta`` dict, how to turn stored sample features (or
predict inputs) into tensors, and the training recipe. Everything here is plain
PyTorch: the API (serving) and the workers (training, unlearning) both use it; neither
the DB nor Celery is imported here.

Samples are ``Example(subject_id, split, features, label)``; ``features`` is a small
JSON-able dict (what the data registry stores). Splits:
  - ``train``: trained on;
  - ``test``: never trained on, used for test accuracy (may belong to training subjects);
  - ``holdout``: samples of held-out *subjects*, never trained on: the MIA population
    (DESIGN.md section 4: a model that forgot a person treats them like one it never saw).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

SPLITS = ("train", "test", "holdout")


@dataclass(frozen=True)
class Example:
    subject_id: str
    split: str
    features: dict[str, Any]
    label: int


@dataclass(frozen=True)
class TrainRecipe:
    """How the model is trained from scratch; ``retrain`` uses exactly this."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # Optional (issue 9): the optimiser and learning-rate schedule of the training loop.
    optimizer: str = "adamw"  # adamw, sgd (momentum 0.9)
    schedule: str = "constant"  # constant, cosine (to 0 over the run)


@dataclass(frozen=True)
class PublicParameters:
    """Parameters that were never trained on subject data (issue 20; ``app/ml/public.py``).

    ``prefixes``: parameter-name prefixes (``"backbone."``); ``source``: where their weights come
    from (a published seed, a wheel and version, a URL). ``build`` must load them from that source
    whatever the global seed, so every build yields the same public tensors; Lethe keeps them frozen
    and refuses a version whose public tensors hash differently from the registered ones.
    """

    prefixes: tuple[str, ...]
    source: str


class ModelSpec:
    """Base class; one subclass per model in ``app/ml/specs``."""

    name: ClassVar[str]
    description: ClassVar[str]
    num_classes: ClassVar[int]
    recipe: ClassVar[TrainRecipe]
    # JSON schema of one predict input and an example, shown by GET /v1/models/{name}.
    input_schema: ClassVar[dict[str, Any]]
    input_example: ClassVar[dict[str, Any]]
    # Feature that carries the subject's own ID when the network has per-subject
    # parameters (MovieLens: "user_id" -> a user embedding row); None otherwise.
    subject_feature: ClassVar[str | None] = None
    # The ``collate`` output that carries the row of those per-subject parameters (MovieLens:
    # "user", 0 for an unknown subject). Declaring it lets a user-sharded SISA ensemble route a
    # subject's prediction to the one constituent that holds their row (``app/ml/sisa.py``).
    subject_input: ClassVar[str | None] = None
    # Parameters never trained on subjects (a public pretrained backbone); None: every parameter
    # is trained. Exact erasure then retrains only the rest (``app/ml/public.py``).
    public_parameters: ClassVar[PublicParameters | None] = None

    def load_examples(self) -> list[Example]:
        """All examples of the bundled data set, deterministic (no downloads)."""
        raise NotImplementedError

    def example_from_row(self, row: dict[str, Any]) -> Example:
        """One row of the organisation's Delta table -> an ``Example`` (only for ``store: delta``,
        issue 18). Lethe replaces ``subject_id`` and ``split`` with the pseudonymised subject column
        and the split column (or its own holdout draw), so a spec sets features and label."""
        raise NotImplementedError(f"spec {self.name!r} does not implement example_from_row (store 'delta')")

    def make_meta(self, train_features: list[dict[str, Any]]) -> dict[str, Any]:
        """JSON-able description the network is built from (sizes, id -> row maps)."""
        raise NotImplementedError

    def build(self, meta: dict[str, Any]) -> nn.Module:
        """A freshly initialised network for ``meta`` (seed set by the caller)."""
        raise NotImplementedError

    def collate(self, features: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Features -> keyword tensors for ``model(**batch)`` -> logits [B, num_classes]."""
        raise NotImplementedError

    def validate_input(self, item: dict[str, Any]) -> dict[str, Any]:
        """Check one predict input; return its features dict or raise ValueError(message)."""
        raise NotImplementedError

    def subject_id_of(self, features: dict[str, Any]) -> str | None:
        """The raw subject ID a stored sample carries (for ``forget_subjects``), if any."""
        key = self.subject_feature
        return str(features[key]) if key and key in features else None

    def forget_subjects(self, model: nn.Module, meta: dict[str, Any], subject_ids: list[str]) -> dict[str, Any]:
        """Remove per-subject parameters (e.g. a user embedding row) in place; return new meta.

        Models without per-subject parameters return ``meta`` unchanged.
        """
        return meta

    def subject_params_cleared(self, model: nn.Module, meta: dict[str, Any], subject_ids: list[str]) -> bool:
        """True when no per-subject parameter of these subjects remains (checked by the gate)."""
        return True

    def restrict(self, meta: dict[str, Any], features: list[dict[str, Any]], model: nn.Module | None = None) -> dict[str, Any]:
        """The meta of only the ids (subjects, items) that ``features`` mention, shapes unchanged;
        with ``model``, every row the returned meta does not map is zeroed in place, so the network
        holds parameters only for what those samples contain. A SISA constituent is restricted to
        its shard's data. Models without per-id parameters return ``meta`` unchanged (default).
        """
        return meta

    # ---- optional hooks with defaults (issue 9); a plugin overrides only what it needs

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
        """The training objective, also the membership signal the gates measure (per example with
        ``reduction="none"``). Default: cross-entropy over ``num_classes`` logits."""
        return F.cross_entropy(logits, labels, reduction=reduction)

    def split_public(self, model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
        """``(backbone, head)`` when the public parameters form a prefix of the network:
        ``head(backbone(**batch)) == model(**batch)`` and the backbone holds exactly the public
        parameters. Then a head retrain runs on cached backbone features (personal data, kept in
        the store beside the samples). ``None`` (default): frozen-parameter training without a cache."""
        return None

    def fit(self, model: nn.Module, examples: list[Example], meta: dict[str, Any], *, device: Any, seed: int,
            recipe: TrainRecipe, progress: Any = None) -> nn.Module | None:
        """A custom training loop for models whose training is not Lethe's plain loop (``recipe``
        epochs of minibatches): train ``model`` (freshly built and seeded) on ``examples`` and
        return it. ``None`` (the default) means: use Lethe's loop. ``retrain`` calls this too, so an
        exact erasure trains exactly as the model was trained."""
        return None
