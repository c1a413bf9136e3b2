"""A lazy ``Sequence[Example]`` over the live rows of a store: the columnar store's Arrow parts and
the Delta table's Parquet row groups share it (issues 9 and 18).

A view is a list of *segments* (a part, a row group), each with the count of its live rows; it
holds no rows itself. Training draws a batch through :meth:`RowsView.take` (one read per segment
it touches), ``__iter__`` streams segment by segment in chunks, so what a job keeps in memory is
the per-segment bookkeeping, not the set. A store says how to read the live rows ``local`` of one
segment (``_rows``) and how a row becomes an :class:`Example` (``_example``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from app.ml.spec import Example

CHUNK = 65536  # rows per read when iterating
# A shuffled epoch over a large view draws its batches from a window of this many rows (whole
# segments, chosen at random) before moving on: each segment is read once per epoch instead of once
# per batch (a random 256-row batch of a 10M-row Delta table touched ~100 row groups: 7.6 s a batch).
WINDOW_ROWS = 262_144


class RowsView(Sequence[Example]):
    """The live rows of one split (``split_only``: every row is of that split, so training need not
    filter), segment by segment."""

    def __init__(self, counts: list[int], split: str) -> None:
        self.segments = [k for k, n in enumerate(counts) if n]
        self.starts: list[int] = []
        total = 0
        for k in self.segments:
            self.starts.append(total)
            total += counts[k]
        self.counts = counts
        self.total = total
        self.split_only = split

    def _rows(self, k: int, local: np.ndarray) -> list[dict[str, Any]]:
        """The rows at live positions ``local`` (0-based among segment ``k``'s live rows), in order."""
        raise NotImplementedError

    def _example(self, row: dict[str, Any]) -> Example:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int) -> Example:  # type: ignore[override]
        if isinstance(i, slice):
            return self.take(list(range(*i.indices(self.total))))  # type: ignore[return-value]
        if i < 0:
            i += self.total
        if not 0 <= i < self.total:
            raise IndexError(i)
        return self.take([i])[0]

    def take(self, indices: list[int]) -> list[Example]:
        """Many rows in one read per segment (a training batch), in the order asked."""
        by_segment: dict[int, list[tuple[int, int]]] = {}
        for pos, i in enumerate(indices):
            s = bisect.bisect_right(self.starts, i) - 1
            by_segment.setdefault(s, []).append((pos, i - self.starts[s]))
        out: list[Example | None] = [None] * len(indices)
        for s, items in by_segment.items():
            rows = self._rows(self.segments[s], np.array([j for _, j in items], np.int64))
            for (pos, _), row in zip(items, rows, strict=True):
                out[pos] = self._example(row)
        return out  # type: ignore[return-value]

    def shuffled_order(self, generator: Any, *, probe: bool = False, window_rows: int | None = None) -> Any:
        """A seeded epoch order that reads each segment once: segments in random order, grouped
        into windows of about ``window_rows`` rows, every window's rows shuffled together.
        ``probe``: only whether the view needs it (more than one window; a smaller view is
        shuffled whole by the caller, exactly as a list is)."""
        window_rows = window_rows or WINDOW_ROWS
        if probe:
            return self.total > window_rows
        import torch  # the training side's generator; this module stays importable without it

        order: list[np.ndarray] = []
        window: list[np.ndarray] = []
        size = 0
        for s in torch.randperm(len(self.segments), generator=generator).tolist():
            n = self.counts[self.segments[s]]
            window.append(np.arange(self.starts[s], self.starts[s] + n, dtype=np.int64))
            size += n
            if size >= window_rows:
                rows = np.concatenate(window)
                order.append(rows[torch.randperm(len(rows), generator=generator).numpy()])
                window, size = [], 0
        if window:
            rows = np.concatenate(window)
            order.append(rows[torch.randperm(len(rows), generator=generator).numpy()])
        return np.concatenate(order)

    def __iter__(self) -> Iterator[Example]:
        for k in self.segments:
            for start in range(0, self.counts[k], CHUNK):
                for row in self._rows(k, np.arange(start, min(start + CHUNK, self.counts[k]), dtype=np.int64)):
                    yield self._example(row)
