"""A large lazy view is shuffled window by window, so each segment (a Delta row group, a columnar
part) is read once per epoch instead of once per batch; a view within one window, and a list,
are shuffled exactly as before."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler

from app.data import view as view_mod
from app.data.view import RowsView
from app.ml.data import WindowedSampler, make_loader
from app.ml.spec import Example


class CountingView(RowsView):
    """Segments of ``size`` rows; each read of a segment that is not the one last read counts as
    a decode (what a row-group cache of one window holds, at the smallest)."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__(sizes, "train")
        self.reads: Counter[int] = Counter()

    def _rows(self, k: int, local: np.ndarray) -> list[dict[str, Any]]:
        self.reads[k] += 1
        base = sum(self.counts[:k])
        return [{"i": base + int(j)} for j in local]

    def _example(self, row: dict[str, Any]) -> Example:
        return Example("s", "train", [float(row["i"])], row["i"] % 2)


class Spec:
    def collate(self, features: list, meta: dict) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor(features)}


def _epoch(loader) -> list[list[int]]:  # noqa: ANN001
    return [b["x"][:, 0].long().tolist() for b, _ in loader]


def test_a_large_view_reads_each_segment_in_few_batches_and_still_covers_every_row(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(view_mod, "WINDOW_ROWS", 400)
    v = CountingView([100] * 40)  # 4,000 rows, 40 segments, windows of 4 segments
    loader = make_loader(Spec(), {}, v, batch_size=50, shuffle=True, seed=3)  # type: ignore[arg-type]
    assert isinstance(loader.sampler.sampler, WindowedSampler)
    first = _epoch(loader)
    rows = [i for b in first for i in b]
    assert sorted(rows) == list(range(4000))  # a permutation: every live row once
    # A batch draws from one window (4 segments), never from the whole table.
    segs_per_batch = [len({i // 100 for i in b}) for b in first]
    assert max(segs_per_batch) <= 5 and np.mean(segs_per_batch) < 4.5
    # Whereas a fully random order touches most of the 40 segments in every batch.
    full = list(RandomSampler(range(4000), generator=torch.Generator().manual_seed(3)))
    assert np.mean([len({i // 100 for i in full[k:k + 50]}) for k in range(0, 4000, 50)]) > 20
    # Segments come in a random order and rows within a window are mixed, not sequential.
    assert rows[:100] != sorted(rows[:100])
    # A fresh order every epoch, the same for the same seed.
    second = _epoch(loader)
    assert second != first
    again = make_loader(Spec(), {}, CountingView([100] * 40), batch_size=50, shuffle=True, seed=3)  # type: ignore[arg-type]
    assert _epoch(again) == first


def test_a_view_within_one_window_is_shuffled_exactly_like_a_list(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(view_mod, "WINDOW_ROWS", 10_000)
    v = CountingView([100] * 40)
    loader = make_loader(Spec(), {}, v, batch_size=50, shuffle=True, seed=3)  # type: ignore[arg-type]
    assert isinstance(loader.sampler.sampler, RandomSampler)
    listed = [v[i] for i in range(len(v))]
    as_list = make_loader(Spec(), {}, listed, batch_size=50, shuffle=True, seed=3)  # type: ignore[arg-type]
    assert _epoch(loader) == _epoch(as_list)


@pytest.mark.parametrize("window", [400, 1000])
def test_windowed_order_is_a_permutation_for_uneven_segments(monkeypatch, window: int) -> None:  # noqa: ANN001
    monkeypatch.setattr(view_mod, "WINDOW_ROWS", window)
    v = CountingView([0, 37, 512, 3, 0, 250, 999, 1])
    order = v.shuffled_order(torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(len(v)))
