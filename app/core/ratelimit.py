"""Per-API-key token bucket for intake endpoints (DESIGN.md section 6: 429 with ``Retry-After``).

Each replica keeps its own buckets (in memory, no round trip on the hot path), so a caller's
effective limit is ``replicas x LETHE_INTAKE_RATE_PER_S``; that is the usual trade for a limiter
that protects a replica rather than meters a customer. ``LETHE_INTAKE_RATE_PER_S=0`` turns it off.
A refused request was not recorded: the caller retries it after ``Retry-After`` seconds, and an
``Idempotency-Key`` (native) or ``subject_request_id`` (OpenDSR) makes that retry safe.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from app.core.errors import LetheError


class TooManyRequests(LetheError):
    status, code, title = 429, "rate_limited", "Too many requests"


class TokenBuckets:
    """``rate`` tokens a second per key, up to ``burst``; one token per request."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, max(1, burst), clock
        self._state: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0.0 when the request may go ahead, else the seconds until a token is free."""
        now = self.clock()
        with self._lock:
            tokens, at = self._state.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._state[key] = (tokens - 1.0, now)
                return 0.0
            self._state[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


_buckets: dict[tuple[float, int], TokenBuckets] = {}


def check_intake(key_id: str, *, rate: float, burst: int) -> None:
    """Raise 429 (with ``Retry-After``) when ``key_id`` is over its intake rate; no-op when rate <= 0."""
    if rate <= 0:
        return
    buckets = _buckets.setdefault((rate, burst), TokenBuckets(rate, burst))
    wait = buckets.take(key_id)
    if wait > 0:
        raise TooManyRequests(f"More than {rate:g} requests/s (burst {burst}) from this API key; retry later.",
                              headers={"Retry-After": str(max(1, math.ceil(wait)))})
