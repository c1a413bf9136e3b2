"""Training, evaluation and prediction for any ``ModelSpec`` (plain PyTorch, explicit device).

Optimiser: AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) with
the spec's ``TrainRecipe``; cross-entropy on ``num_classes`` logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from app.data.feature_cache import FeatureCache
from app.data.feature_cache import directory as feature_cache_dir
from app.ml import public
from app.ml.data import TensorBatches, make_loader
from app.ml.loop import Progress, train_epochs
from app.ml.policy import sisa_layout, sisa_wins
from app.ml.spec import Example, ModelSpec, TrainRecipe
from app.ml.specs import get_spec

# (examples, compute missing features) -> features [N, d]: a per-sample feature cache (app/data/feature_cache.py).
FeatureLookup = Callable[[Sequence[Example], Callable[[Sequence[Example]], torch.Tensor]], torch.Tensor]
# Inference batch: large enough to amortise Python overhead, small enough for any model here.
EVAL_BATCH = 4096


class _Features(Sequence):
    """``e.features`` of a lazy example view, for ``make_meta``, without a copy of the set."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):  # noqa: ANN001, ANN204
        return self.examples[i].features

    def __iter__(self):  # noqa: ANN204
        return (e.features for e in self.examples)


def train_from_scratch(
    spec: ModelSpec,
    examples: list[Example],
    *,
    device: torch.device | str,
    seed: int = 0,
    recipe: TrainRecipe | None = None,
    progress: Progress | None = None,
    feature_cache: str | Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build meta from the ``train``-split examples, initialise with ``seed`` and train.

    Only examples whose split is ``train`` are used: ``test`` and ``holdout`` are never trained on.
    A spec with public parameters (``app/ml/public.py``) trains only the rest: its public tensors
    are hashed into ``meta["public"]`` as built, frozen, and checked after training; when the spec
    splits into backbone and head, only the head is trained, on backbone features (from
    the per-sample cache in directory ``feature_cache`` where given, recorded in ``meta``).
    """
    recipe = recipe or spec.recipe
    # A columnar store's view of the train split streams: neither filtered nor copied into a list.
    lazy = getattr(examples, "split_only", None) == "train"
    train = examples if lazy else [e for e in examples if e.split == "train"]
    if not len(train):
        raise ValueError("no examples with split 'train' to train on")
    torch.manual_seed(seed)
    meta = spec.make_meta(_Features(train) if lazy else [e.features for e in train])
    model = spec.build(meta).to(device)
    meta = public.declare(spec, model, meta)  # hash of the public part as built from its source
    public.freeze(model, meta)
    if public.is_public(meta) and type(spec).fit is ModelSpec.fit and spec.split_public(model) is not None:
        cache = None
        if feature_cache is not None:
            meta["public"]["cache"] = str(feature_cache)
            cache = FeatureCache(feature_cache, meta["public"]["sha256"])
        train_head(spec, model, meta, train, device=device, seed=seed, recipe=recipe, progress=progress, cache=cache)
        public.check(model, meta, what="training")
        return model.eval(), meta
    custom = spec.fit(model, train, meta, device=device, seed=seed, recipe=recipe, progress=progress)
    if custom is not None:  # the plugin trains its own way (ModelSpec.fit)
        public.check(custom, meta, what="training")
        return custom.eval(), meta
    loader = make_loader(spec, meta, train, batch_size=recipe.batch_size, shuffle=True, seed=seed)
    train_epochs(
        spec, model, meta, loader, epochs=recipe.epochs, lr=recipe.lr, weight_decay=recipe.weight_decay,
        device=device, progress=progress, optimizer=recipe.optimizer, schedule=recipe.schedule,
    )
    public.check(model, meta, what="training")
    model.eval()
    return model, meta


class _Head(nn.Module):
    """The head as a ``model(**batch)`` module over cached backbone features."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


@torch.no_grad()
def backbone_features(spec: ModelSpec, model: nn.Module, meta: dict[str, Any], examples: Sequence[Example], *,
                      device: torch.device | str, batch: int = 4096) -> torch.Tensor:
    """The public backbone's output per example (``[N, d]``, on the CPU), eval mode."""
    backbone, _ = spec.split_public(model)
    was = backbone.training
    backbone.eval()
    out = []
    for start in range(0, len(examples), batch):
        feats = spec.collate([examples[i].features for i in range(start, min(start + batch, len(examples)))], meta)
        out.append(backbone(**{k: v.to(device) for k, v in feats.items()}).float().cpu())
    backbone.train(was)
    return torch.cat(out) if out else torch.zeros(0)


def train_head(spec: ModelSpec, model: nn.Module, meta: dict[str, Any], examples: Sequence[Example], *,
               device: torch.device | str, seed: int, recipe: TrainRecipe, progress: Any = None,
               cache: FeatureLookup | None = None) -> nn.Module:
    """Train only the head of ``model`` (freshly built, public part frozen) with the recipe's loop,
    on backbone features of ``examples`` (from ``cache`` when given: no backbone pass for cached
    samples). Same seed, same retain set -> the same head, whether features came from the cache."""
    _, head = spec.split_public(model)
    compute = lambda exs: backbone_features(spec, model, meta, exs, device=device)  # noqa: E731
    feats = cache(examples, compute) if cache is not None else compute(examples)
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    data = TensorBatches({"features": feats}, labels)
    order = RandomSampler(range(len(data)), generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(data, sampler=BatchSampler(order, recipe.batch_size, drop_last=False), batch_size=None)
    train_epochs(spec, _Head(head), meta, loader, epochs=recipe.epochs, lr=recipe.lr,
                 weight_decay=recipe.weight_decay, device=device, progress=progress, optimizer=recipe.optimizer,
                 schedule=recipe.schedule)
    return model


@torch.no_grad()
def predict_logits(
    spec: ModelSpec, model: nn.Module, meta: dict[str, Any], features: list[dict[str, Any]], *, device: torch.device | str
) -> torch.Tensor:
    """Logits ``[N, num_classes]`` on the CPU, in eval mode, batched."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(features), EVAL_BATCH):
        batch = spec.collate(features[start : start + EVAL_BATCH], meta)
        out.append(model(**{k: v.to(device) for k, v in batch.items()}).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, spec.num_classes)


def evaluate(
    spec: ModelSpec, model: nn.Module, meta: dict[str, Any], examples: list[Example], *, device: torch.device | str
) -> float:
    """Accuracy on ``examples``; ``nan`` when there are none."""
    if not examples:
        return float("nan")
    logits = predict_logits(spec, model, meta, [e.features for e in examples], device=device)
    labels = torch.tensor([e.label for e in examples])
    return int((logits.argmax(-1) == labels).sum()) / len(examples)


def predict(
    spec: ModelSpec, model: nn.Module, meta: dict[str, Any], features: list[dict[str, Any]], *, device: torch.device | str
) -> list[tuple[int, float]]:
    """``(label, probability of that label)`` per (already validated) input."""
    probs = predict_logits(spec, model, meta, features, device=device).softmax(-1)
    p, label = probs.max(-1)
    return [(int(y), float(q)) for y, q in zip(label.tolist(), p.tolist())]


def per_example_loss(
    spec: ModelSpec, model: nn.Module, meta: dict[str, Any], examples: list[Example], *, device: torch.device | str
) -> np.ndarray:
    """Cross-entropy of each example (float64 numpy array, the MIA signal)."""
    logits = predict_logits(spec, model, meta, [e.features for e in examples], device=device)
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    return spec.loss(logits, labels, reduction="none").double().numpy()


def train_for_registration(
    spec: ModelSpec,
    examples: list[Example],
    *,
    training: dict[str, Any] | None,
    workdir: str | Path,
    device: torch.device | str,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train v1 as ``training`` asks; side files (slice checkpoints, update log) go under ``workdir``.

    ``None`` or ``{}``: one network (``train_from_scratch``). ``{"sisa": {"shards": 4, "slices": 3}}``
    (``True`` for those defaults): a SISA ensemble for exact ``sisa`` unlearning (``app/ml/sisa.py``).
    ``{"update_log": True}`` or ``{"update_log": {"optimizer": ..., "batching": ...}}``: one network
    with a per-step update log for ``amnesiac`` (``app/ml/update_log.py``). Not both.
    """
    training = dict(training or {})
    sisa, logged = training.pop("sisa", None), training.pop("update_log", None)
    if training:
        raise ValueError(f"unknown training option(s): {', '.join(sorted(training))}")
    if sisa and logged:
        raise ValueError("a model is either a SISA ensemble or update-logged, not both")
    if sisa:
        from app.ml.sisa import new_run_dir, train_sisa

        opts = sisa if isinstance(sisa, dict) else {}
        return train_sisa(spec, examples, out_dir=new_run_dir(workdir), device=device, seed=seed,
                          progress=progress, **opts)
    if logged:
        from app.ml.update_log import new_log_dir, train_logged

        opts = logged if isinstance(logged, dict) else {}
        return train_logged(spec, examples, out_dir=new_log_dir(workdir), device=device, seed=seed,
                            progress=progress, **opts)
    # A public backbone's per-sample features are cached beside the samples (the data root is the
    # artifacts directory's parent, as in registration.commit), warmed by this first training.
    workdir = Path(workdir)
    cache = feature_cache_dir(workdir.parent.parent, workdir.name) if spec.public_parameters else None
    return train_from_scratch(spec, examples, device=device, seed=seed, progress=progress, feature_cache=cache)


def demo_training(name: str, *, spec: str | None = None, sisa_models: str = "",
                  update_log_models: str = "") -> dict[str, Any] | None:
    """The ``training`` option of demo model ``name`` (of spec ``spec``, default the same name) from
    the settings' comma lists: a SISA ensemble, in the layout measured for the spec and its recipe,
    when listed or measured to win (``app/ml/policy.py``)."""
    listed = lambda value: {n.strip() for n in value.split(",") if n.strip()}  # noqa: E731
    spec_name = spec or name
    recipe = get_spec(spec_name).recipe
    if name in listed(sisa_models) or sisa_wins(spec_name, recipe):
        return {"sisa": sisa_layout(spec_name, recipe)}
    if name in listed(update_log_models):
        return {"update_log": True}
    return None
