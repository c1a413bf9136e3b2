"""Helpers shared by the bundled specs: deterministic subject splits and input checks.

Splits are by *subject* (DESIGN.md section 4: the MIA population is held-out subjects), drawn
from a hash of the subject id so that they never depend on row order or on the random seed.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` (sha256), the same on every machine and run."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def subject_split(subject_id: str, *, holdout: float, test: float, salt: str) -> str:
    """``holdout`` / ``test`` / ``train`` for a subject, by hashing ``salt:subject_id``."""
    u = stable_fraction(f"{salt}:{subject_id}")
    if u < holdout:
        return "holdout"
    if u < holdout + test:
        return "test"
    return "train"


def require_mapping(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ValueError(f"input must be a JSON object, got {type(item).__name__}")
    return item


def require_keys(item: dict[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in item]
    if missing:
        raise ValueError(f"missing key(s): {', '.join(missing)}")
    extra = sorted(set(item) - set(keys))
    if extra:
        raise ValueError(f"unexpected key(s): {', '.join(extra)}")


def require_int(item: dict[str, Any], key: str) -> int:
    value = item[key]
    # bool is an int subclass; a JSON true is not an id.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"'{key}' must be an integer, got {type(value).__name__}")
    return value


def require_float_vector(
    item: dict[str, Any], key: str, *, length: int, low: float | None = None, high: float | None = None
) -> list[float]:
    value = item[key]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"'{key}' must be a list of {length} numbers, got {type(value).__name__}")
    if len(value) != length:
        raise ValueError(f"'{key}' must have length {length}, got {len(value)}")
    out: list[float] = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"'{key}[{i}]' must be a number, got {type(v).__name__}")
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"'{key}[{i}]' must be finite, got {v}")
        if (low is not None and f < low) or (high is not None and f > high):
            raise ValueError(f"'{key}[{i}]' must lie in [{low}, {high}], got {v}")
        out.append(f)
    return out
