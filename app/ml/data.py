"""Examples -> a deterministic ``DataLoader`` of ``(batch_kwargs, labels)``.

Features are collated once into tensors and batches are tensor slices, so an epoch costs no
per-sample Python work; order comes from a ``torch.Generator`` seeded by the caller.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from app.ml.spec import Example, ModelSpec


class TensorBatches(Dataset):
    """Indexed by a list of positions; returns the batch directly (no per-item collation)."""

    def __init__(self, tensors: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        self.tensors, self.labels = tensors, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        return {k: v[index] for k, v in self.tensors.items()}, self.labels[index]


class LazyBatches(Dataset):
    """For a lazy ``Sequence[Example]`` (a columnar store's view): each batch reads and collates
    only its own examples, so an epoch-free method (finetune: a few hundred steps) touches a few
    hundred batches, not the whole set. A view with ``take(indices)`` is read in one call."""

    def __init__(self, spec: ModelSpec, meta: dict[str, Any], examples: Sequence[Example]) -> None:
        self.spec, self.meta, self.examples = spec, meta, examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, idx: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        take = getattr(self.examples, "take", None)
        batch = take(list(idx)) if take is not None else [self.examples[i] for i in idx]
        return (self.spec.collate([e.features for e in batch], self.meta),
                torch.tensor([e.label for e in batch], dtype=torch.long))


class WindowedSampler(Sampler[int]):
    """A fresh windowed order every epoch (as ``RandomSampler`` draws a fresh permutation), from
    the view's ``shuffled_order`` and the loader's seeded generator."""

    def __init__(self, shuffled_order: Any, n: int, generator: torch.Generator) -> None:
        self.shuffled_order, self.n, self.generator = shuffled_order, n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(self.shuffled_order(self.generator).tolist())


def collate_examples(spec: ModelSpec, meta: dict[str, Any], examples: list[Example]) -> TensorBatches:
    tensors = spec.collate([e.features for e in examples], meta)
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    return TensorBatches(tensors, labels)


def make_loader(
    spec: ModelSpec, meta: dict[str, Any], examples: list[Example], *, batch_size: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    # A list is collated once (no per-sample work per epoch); a lazy view batch by batch.
    data = collate_examples(spec, meta, examples) if isinstance(examples, (list, tuple)) else \
        LazyBatches(spec, meta, examples)
    positions = range(len(data))
    generator = torch.Generator().manual_seed(seed)
    # A large lazy view (a store's segments) shuffles window by window, reading each segment once
    # per epoch (``RowsView.shuffled_order``); a list, or a view that fits one window, whole.
    windowed = getattr(examples, "shuffled_order", None)
    if shuffle and windowed is not None and windowed(None, probe=True):
        order: Any = WindowedSampler(windowed, len(data), generator)
    elif shuffle:
        order = RandomSampler(positions, generator=generator)
    else:
        order = SequentialSampler(positions)
    return DataLoader(data, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None)
