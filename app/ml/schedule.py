"""Erasure scheduling as pure arithmetic: forget at once, exact by the deadline (DESIGN.md 4d, issue 16).

Exactness is bought by retraining, and one exact retrain without every owed subject is exact for
all of them at once. A per-model ``Schedule`` says how long an acknowledged erasure may wait for
its exact version (``exact_within_s``), how many owed subjects start the exact job early
(``max_owed``) and what runs at once (``interim``). This module decides, from times and costs
only -- no database, no clock of its own -- so the worker (``app/services/models/schedule.py``) and the
discrete-event simulation (``bench/schedule.py``, with a fake clock) run the same decisions.

Deadline arithmetic (all times aware UTC)::

    margin        = floor_s + attempts x safety x expected_exact_s + sum of retry backoffs
    exact_due_at  = min(received_at + exact_within_s, due_at - margin, token_expires_at - margin)
    attempt       = history_factor x max(recent exact jobs)   (1.25; 1.5 / 1.75 with 2 / 1 recorded)
                    safety x expected_exact_s                  (no exact job recorded yet)
    lead          = (1 + reserve_retries) x attempt + backoff_s
    wake_at       = earliest exact_due_at of the owed subjects - lead

``margin`` covers the model's measured exact cost and every automatic retry, so even a request
that waited until ``due_at - margin`` can fail ``attempts - 1`` times and still finish before the
legal deadline (and before a halted Fides request's reply-to-token dies): it is the legal promise
and stays conservative (``SAFETY`` on the mean). ``lead`` starts the exact job early enough that
one failed attempt can be retried before ``exact_due_at`` itself; it is planned from the model's
own recorded exact jobs (their worst wall time, collect to deploy, with a modest factor) rather
than twice a mean, because a lead that is too long is paid in retrains: on the compressed real run
(movielens-30s, exact_within_s 300) the old lead (a beat tick + 2 x 2 x mean + a backoff, 176 s for
a 42 s retrain) left 124 s between exact jobs. The worker wakes the exact job at ``wake_at``
itself (a delayed message), the beat tick being only the backstop, so a tick of lateness is not
part of the lead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

INTERIMS = ("none", "params", "auto")
# The longest wait a schedule may ask for: the GDPR month (Art. 12(3)) bounds it anyway, and an
# erasure acknowledged for longer than a week with only an interim serving is hard to defend.
MAX_EXACT_WITHIN_S = 7 * 86400
MAX_OWED_LIMIT = 100_000
# A recorded exact cost is a mean; a slow node, a bigger retain set or contention can double it.
SAFETY = 2.0
# Fixed slack on the legal deadline whatever the cost: deploy to every replica, callback delivery.
FLOOR_S = 300.0
# Cost assumed for a model with no measured exact cost (no reference yet): conservative.
UNKNOWN_EXACT_S = 3600.0
# Failed exact attempts the wake time leaves room for before ``exact_due_at``.
RESERVE_RETRIES = 1
# Recorded exact-job wall times a model keeps (Model.config.job_costs.exact_recent_s).
RECENT_EXACT = 8
# On the worst recorded exact job: a job in the recent window already ran under the machine's
# real load; 25 % covers a somewhat bigger retain set or a noisier neighbour than the worst seen.
# With fewer than MIN_HISTORY jobs the factor is larger (one or two jobs can both be quick by luck):
# +0.25 per missing job, so 1.75 after one job, 1.5 after two; none: SAFETY x the expected cost.
HISTORY_FACTOR = 1.25
MIN_HISTORY = 3


@dataclass(frozen=True)
class Schedule:
    exact_within_s: float = 0.0  # 0: today's behaviour, an exact (or audited) version at once
    max_owed: int | None = None  # start the exact job early once this many subjects are owed
    interim: str = "params"  # none | params | auto

    @property
    def deferred(self) -> bool:
        return self.exact_within_s > 0

    def to_dict(self) -> dict[str, Any]:
        return {"exact_within_s": self.exact_within_s, "max_owed": self.max_owed, "interim": self.interim}


def validate(raw: Any) -> list[str]:
    """Problems with a ``schedule`` object (empty list: valid); ``None`` resets to the default."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        return ["schedule must be an object {exact_within_s, max_owed, interim}"]
    problems = [f"schedule.{k} is not a schedule field (exact_within_s, max_owed, interim)"
                for k in raw if k not in ("exact_within_s", "max_owed", "interim")]
    w = raw.get("exact_within_s", 0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 <= w <= MAX_EXACT_WITHIN_S:
        problems.append(f"schedule.exact_within_s must be a number of seconds from 0 to {MAX_EXACT_WITHIN_S} (7 days)")
    m = raw.get("max_owed")
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_OWED_LIMIT):
        problems.append(f"schedule.max_owed must be null or an integer from 1 to {MAX_OWED_LIMIT}")
    if raw.get("interim", "params") not in INTERIMS:
        problems.append(f"schedule.interim must be one of {', '.join(INTERIMS)}")
    return problems


def default_for(expected_exact_s: float | None) -> tuple[Schedule, str]:
    """The schedule a model gets when its policy names none, from its recorded exact cost.

    A retrain that costs under a minute is its own fastest path (the batch window already groups
    bursts): erasures stay exact at once. Dearer models wait, but conservatively -- never past
    a week, and the wait grows with the cost so that a 10-hour retrain runs at most every 3 days
    (about 10 a month instead of one per request cluster) while a 1-minute one runs every 6 hours.
    """
    if expected_exact_s is None or not math.isfinite(expected_exact_s) or expected_exact_s <= 0:
        return Schedule(), "no recorded exact cost: exact at once (as before scheduling)"
    if expected_exact_s < 60:
        return Schedule(), f"exact erasure costs {expected_exact_s:.1f} s (< 60 s): exact at once"
    if expected_exact_s < 3600:
        return Schedule(6 * 3600, None, "params"), f"exact erasure costs {expected_exact_s:.0f} s (< 1 h): within 6 h"
    if expected_exact_s < 10 * 3600:
        return Schedule(86400, None, "params"), f"exact erasure costs {expected_exact_s / 3600:.1f} h (< 10 h): within 1 day"
    return Schedule(3 * 86400, None, "params"), f"exact erasure costs {expected_exact_s / 3600:.1f} h: within 3 days"


def parse(raw: dict[str, Any] | None, expected_exact_s: float | None) -> tuple[Schedule, str]:
    """(schedule, source): the model's own (``Model.config["schedule"]``) or the cost-derived default."""
    if not raw:
        sched, why = default_for(expected_exact_s)
        return sched, f"default ({why})"
    return Schedule(float(raw.get("exact_within_s", 0)), raw.get("max_owed"), raw.get("interim", "params")), "model"


def margin_s(expected_exact_s: float | None, *, attempts: int, backoff_s: float) -> float:
    """Slack kept before the legal deadline: every automatic attempt at ``SAFETY`` x the measured
    exact cost, the backoffs between them, and ``FLOOR_S``."""
    cost = expected_exact_s if expected_exact_s and expected_exact_s > 0 else UNKNOWN_EXACT_S
    attempts = max(1, attempts)
    backoffs = sum(backoff_s * 2 ** i for i in range(attempts - 1))
    return FLOOR_S + attempts * SAFETY * cost + backoffs


def exact_due_at(*, received_at: datetime, due_at: datetime, schedule: Schedule, margin: float,
                 token_expires_at: datetime | None = None) -> datetime:
    """When the exact version must serve everywhere: the schedule's wait, cut by the legal
    deadline and a Fides reply-to-token's expiry (each less ``margin``); never before receipt."""
    candidates = [received_at + timedelta(seconds=schedule.exact_within_s), due_at - timedelta(seconds=margin)]
    if token_expires_at is not None:
        candidates.append(token_expires_at - timedelta(seconds=margin))
    return max(received_at, min(candidates))


def attempt_s(expected_exact_s: float | None, recent_s: Sequence[float] = ()) -> float:
    """One exact attempt, planned: ``HISTORY_FACTOR`` x the worst of the model's recent exact jobs
    (a larger factor while fewer than ``MIN_HISTORY`` are recorded), else ``SAFETY`` x the expected
    cost (``UNKNOWN_EXACT_S`` when there is none)."""
    recent = [x for x in recent_s if x and x > 0]
    if recent:
        return (HISTORY_FACTOR + 0.25 * max(0, MIN_HISTORY - len(recent))) * max(recent)
    cost = expected_exact_s if expected_exact_s and expected_exact_s > 0 else UNKNOWN_EXACT_S
    return SAFETY * cost


def lead_s(expected_exact_s: float | None, *, backoff_s: float, recent_s: Sequence[float] = ()) -> float:
    """How long before the earliest ``exact_due_at`` the exact job starts: the attempt and
    ``RESERVE_RETRIES`` retries (``attempt_s`` each) with one backoff between."""
    return (1 + RESERVE_RETRIES) * attempt_s(expected_exact_s, recent_s) + backoff_s


@dataclass(frozen=True)
class Owed:
    """One owed subject of a model, as the scheduler sees it."""

    request_id: str
    exact_due_at: datetime


@dataclass(frozen=True)
class Decision:
    run: bool  # start the exact job now
    reason: str  # nothing_owed | immediate | operator | max_owed | deadline | waiting
    wake_at: datetime | None  # when to decide again (None: nothing owed)
    owed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "reason": self.reason, "owed": self.owed,
                "wake_at": self.wake_at.isoformat() if self.wake_at else None}


def decide(*, now: datetime, owed: Sequence[Owed], schedule: Schedule, expected_exact_s: float | None,
           backoff_s: float, recent_s: Sequence[float] = (), operator_asked: bool = False) -> Decision:
    """Whether the exact job for every owed subject of a model starts now, and if not, when to look again."""
    if not owed:
        return Decision(False, "nothing_owed", None, 0)
    n = len(owed)
    if not schedule.deferred:
        return Decision(True, "immediate", now, n)
    if operator_asked:
        return Decision(True, "operator", now, n)
    if schedule.max_owed is not None and n >= schedule.max_owed:
        return Decision(True, "max_owed", now, n)
    lead = lead_s(expected_exact_s, backoff_s=backoff_s, recent_s=recent_s)
    wake = min(o.exact_due_at for o in owed) - timedelta(seconds=lead)
    if now >= wake:
        return Decision(True, "deadline", now, n)
    return Decision(False, "waiting", wake, n)


def at_risk(*, now: datetime, exact_due: datetime, expected_exact_s: float | None,
            recent_s: Sequence[float] = ()) -> bool:
    """An owed exact erasure that one more attempt (``attempt_s``), started now, would finish
    after ``exact_due`` (or that is already past it): visible before it is late."""
    return now + timedelta(seconds=attempt_s(expected_exact_s, recent_s)) > exact_due
