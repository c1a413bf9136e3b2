"""Scheduled erasures vs today's policy (issue 16): compute per completed erasure, deadlines.

Part 1, by simulation: a discrete-event simulation that drives the scheduler's own decisions
(``app.ml.schedule``: ``margin_s``, ``exact_due_at``, ``decide``) with a fake clock -- nothing is
re-implemented here but the event loop: arrivals (uniform over the months, seeded), one worker per
model (one job at a time, as the model lease enforces), a beat tick every ``--tick`` seconds, an
interim job per batch of new requests, exact jobs of ``exact_s`` each and, optionally, a share of
exact jobs that fail at their end and are retried after a backoff. Today's policy is the same loop
with ``exact_within_s = 0`` (``decide`` answers ``immediate``: one exact job per cluster of requests
that arrived while the previous job ran). For 100 / 300 / 1,000 requests a month, exact jobs of
1 minute / 1 hour / 10 hours and ``exact_within_s`` of 1 day / 7 days it prints exact jobs per
month, compute per erasure (interim work included) today vs scheduled and their ratio, the worst
time to completion, misses of ``exact_due_at`` and of the legal ``due_at`` (both must be 0).

Part 2, ``--real`` (a compressed month on a real stack): not implemented in this round; see README
"Scheduling erasures" for what was measured on the running stack instead.

    python bench/schedule.py [--quick] [--months 3] [--fail-rate 0.1]   (or: lethe bench schedule)
"""

from __future__ import annotations

import math
import random
import statistics
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import arg_parser, md_table, write_results  # noqa: E402

from app.ml import schedule as sch  # noqa: E402

MONTH_S = 30 * 86400.0
LEGAL_S = 30 * 86400.0  # due_at = received + one month (GDPR Art. 12(3))
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Req:
    rid: int
    received: float
    exact_due: float = math.inf
    forgotten: float | None = None
    completed: float | None = None


@dataclass
class Outcome:
    exact_jobs: int = 0
    interim_jobs: int = 0
    failed_jobs: int = 0
    compute_s: float = 0.0
    reqs: list[Req] = field(default_factory=list)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _s(dt: datetime) -> float:
    return (dt - T0).total_seconds()


def simulate(*, per_month: int, exact_s: float, exact_within_s: float, interim_s: float, months: int = 3,
             tick_s: float = 60.0, backoff_s: float = 30.0, attempts: int = 3, fail_rate: float = 0.0,
             seed: int = 0) -> Outcome:
    """One model, ``months`` of uniform arrivals at ``per_month``; every request ends completed."""
    rng = random.Random(seed)
    arrivals = sorted(rng.uniform(0, months * MONTH_S) for _ in range(per_month * months))
    schedule = sch.Schedule(exact_within_s=exact_within_s, interim="params" if exact_within_s else "none")
    margin = sch.margin_s(exact_s, attempts=attempts, backoff_s=backoff_s)
    out = Outcome()
    new: list[Req] = []  # arrived, interim not yet run
    job: list[Any]
    owed: list[Req] = []  # waiting for the exact job
    busy_until, job_kind, i, now = 0.0, "", 0, 0.0
    job = []
    while True:
        while i < len(arrivals) and arrivals[i] <= now:
            r = Req(i, arrivals[i])
            r.exact_due = _s(sch.exact_due_at(received_at=_at(r.received), due_at=_at(r.received + LEGAL_S),
                                              schedule=schedule, margin=margin))
            out.reqs.append(r)
            (new if schedule.deferred else owed).append(r)
            i += 1
        wake = None
        if now >= busy_until:
            if job:  # the running job ends now
                if job_kind == "interim":
                    for r in job:
                        r.forgotten = busy_until
                    owed.extend(job)
                elif job_kind == "backoff":
                    pass
                elif rng.random() < fail_rate:
                    out.failed_jobs += 1
                    owed.extend(job)  # still owed; retried after the backoff
                    busy_until, job, job_kind = now + backoff_s, [None], "backoff"
                    continue
                else:
                    for r in job:
                        r.completed = busy_until
                job = []
            if new:  # the interim step runs at once for every new request
                job, job_kind, new = new, "interim", []
                busy_until = now + interim_s
                out.interim_jobs += 1
                out.compute_s += interim_s
                continue
            d = sch.decide(now=_at(now), owed=[sch.Owed(str(r.rid), _at(r.exact_due)) for r in owed],
                           schedule=schedule, expected_exact_s=exact_s, tick_s=tick_s, backoff_s=backoff_s)
            if d.run:
                job, job_kind, owed = owed, "exact", []
                busy_until = now + exact_s
                out.exact_jobs += 1
                out.compute_s += exact_s
                continue
            if d.wake_at is not None:  # the first beat tick at or after the wake time
                wake = math.ceil(_s(d.wake_at) / tick_s) * tick_s
        nexts = [t for t in (arrivals[i] if i < len(arrivals) else None, busy_until if job else None, wake)
                 if t is not None and t > now]
        if not nexts:
            if job:
                now = busy_until
                continue
            break
        now = min(nexts)
    assert all(r.completed is not None for r in out.reqs), "a request never completed"
    return out


def summarise(o: Outcome, months: int) -> dict[str, Any]:
    waits = [r.completed - r.received for r in o.reqs]
    interim = [r.forgotten - r.received for r in o.reqs if r.forgotten is not None]
    return {"exact_jobs_per_month": o.exact_jobs / months, "compute_per_erasure_s": o.compute_s / len(o.reqs),
            "worst_completion_h": max(waits) / 3600, "p50_completion_h": statistics.median(waits) / 3600,
            "time_to_interim_p50_s": statistics.median(interim) if interim else None,
            "misses_exact_due": sum(1 for r in o.reqs if r.completed > r.exact_due + 1e-6),
            "misses_due_at": sum(1 for r in o.reqs if r.completed > r.received + LEGAL_S),
            "failed_jobs": o.failed_jobs}


def main() -> int:
    p = arg_parser("Scheduled erasures vs one exact job per request cluster (simulation)")
    p.add_argument("--months", type=int, default=3, help="simulated months (per-month figures are averages)")
    p.add_argument("--interim-s", type=float, default=2.0, help="cost of one interim (params) job, seconds")
    p.add_argument("--tick", type=float, default=60.0, help="scheduler beat interval, seconds")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of exact jobs that fail at their end")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rates, costs, withins = ((100, 300, 1000), (60.0, 3600.0, 36000.0), (86400.0, 7 * 86400.0))
    if a.quick:
        rates, costs, withins = ((300,), (3600.0,), (7 * 86400.0,))
    rows, data = [], []
    for rate in rates:
        for cost in costs:
            today = summarise(simulate(per_month=rate, exact_s=cost, exact_within_s=0, interim_s=a.interim_s,
                                       months=a.months, tick_s=a.tick, fail_rate=a.fail_rate, seed=a.seed), a.months)
            for within in withins:
                o = simulate(per_month=rate, exact_s=cost, exact_within_s=within, interim_s=a.interim_s,
                             months=a.months, tick_s=a.tick, fail_rate=a.fail_rate, seed=a.seed)
                s = summarise(o, a.months)
                gain = today["compute_per_erasure_s"] / s["compute_per_erasure_s"]
                rows.append([rate, f"{cost / 60:g} min" if cost < 3600 else f"{cost / 3600:g} h", f"{within / 86400:g} d", round(today["exact_jobs_per_month"], 1),
                             round(s["exact_jobs_per_month"], 1), round(today["compute_per_erasure_s"], 1),
                             round(s["compute_per_erasure_s"], 1), f"{gain:.1f}x",
                             round(s["worst_completion_h"], 1), s["misses_exact_due"], s["misses_due_at"],
                             today["misses_due_at"]])
                data.append({"per_month": rate, "exact_s": cost, "exact_within_s": within, "today": today,
                             "scheduled": s, "compute_ratio": round(gain, 2)})
    table = md_table(["requests/month", "exact job", "exact_within", "today jobs/month", "scheduled jobs/month",
                      "today s/erasure", "scheduled s/erasure", "less compute", "worst completion h",
                      "misses exact_due_at", "misses due_at", "today misses due_at"], rows)
    notes = [f"{a.months} simulated month(s), uniform arrivals (seed {a.seed}), beat tick {a.tick:g} s, interim job "
             f"{a.interim_s:g} s, exact-job failure rate {a.fail_rate:g} (retried after a 30 s backoff).",
             "Decisions by app.ml.schedule (margin_s, exact_due_at, decide) on a fake clock; compute counts interim "
             "and exact jobs (failed ones included).",
             "Today = exact_within_s 0: one exact job per cluster of requests that arrived while the previous ran."]
    write_results(a.out, "schedule-sim" + ("-quick" if a.quick else ""), title="Scheduled erasures: simulation",
                  table=table, notes=notes, data={"rows": data, "args": {k: str(v) for k, v in vars(a).items()}})
    misses = sum(r["scheduled"]["misses_exact_due"] + r["scheduled"]["misses_due_at"] for r in data)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
