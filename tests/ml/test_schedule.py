"""The scheduler's decisions, from times and costs only (app/ml/schedule.py; issue 16)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.ml import schedule as sch
from app.ml.schedule import Owed, Schedule

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = 86400.0


def test_margin_covers_every_attempt_and_its_backoffs() -> None:
    # 3 attempts of a 1-hour retrain at 2x, backoffs 30 + 60 s, plus the fixed floor
    assert sch.margin_s(3600, attempts=3, backoff_s=30) == pytest.approx(300 + 3 * 2 * 3600 + 90)
    # no measured cost: the conservative assumption, not zero
    assert sch.margin_s(None, attempts=1, backoff_s=30) == pytest.approx(300 + 2 * sch.UNKNOWN_EXACT_S)


def test_exact_due_is_the_schedule_wait_when_the_deadline_is_far() -> None:
    s = Schedule(exact_within_s=7 * DAY)
    due = sch.exact_due_at(received_at=T0, due_at=T0 + timedelta(days=31), schedule=s, margin=600)
    assert due == T0 + timedelta(days=7)


def test_a_due_at_nearer_than_exact_within_cuts_the_wait_by_the_margin() -> None:
    # an extended clock paused for identity, or a request admitted late: 2 days left
    s = Schedule(exact_within_s=7 * DAY)
    margin = sch.margin_s(3600, attempts=3, backoff_s=30)
    due = sch.exact_due_at(received_at=T0, due_at=T0 + timedelta(days=2), schedule=s, margin=margin)
    assert due == T0 + timedelta(days=2) - timedelta(seconds=margin)


def test_a_fides_token_expiry_shortens_the_wait() -> None:
    s = Schedule(exact_within_s=7 * DAY)
    token = T0 + timedelta(seconds=216000)  # Fides' 3,600-minute privacy_request_delay_timeout
    due = sch.exact_due_at(received_at=T0, due_at=T0 + timedelta(days=31), schedule=s, margin=900,
                           token_expires_at=token)
    assert due == token - timedelta(seconds=900)
    # ...and never before receipt, even when the margin exceeds what is left
    assert sch.exact_due_at(received_at=T0, due_at=T0 + timedelta(days=31), schedule=s, margin=10 * DAY,
                            token_expires_at=T0 + timedelta(hours=1)) == T0


def _decide(now: datetime, owed: list[Owed], s: Schedule, **kw) -> sch.Decision:
    return sch.decide(now=now, owed=owed, schedule=s, expected_exact_s=kw.pop("cost", 60.0),
                      backoff_s=30, **kw)


def test_wakes_at_earliest_exact_due_less_the_lead() -> None:
    s = Schedule(exact_within_s=DAY)
    owed = [Owed("b", T0 + timedelta(hours=20)), Owed("a", T0 + timedelta(hours=5))]
    lead = 2 * 2 * 60 + 30  # (job + one retry) at 2x a 60 s cost + one backoff (no history yet)
    d = _decide(T0, owed, s)
    assert (d.run, d.reason, d.owed) == (False, "waiting", 2)
    assert d.wake_at == T0 + timedelta(hours=5) - timedelta(seconds=lead)
    assert _decide(d.wake_at - timedelta(seconds=1), owed, s).run is False
    late = _decide(d.wake_at, owed, s)
    assert (late.run, late.reason) == (True, "deadline")


def test_max_owed_starts_the_exact_job_early() -> None:
    s = Schedule(exact_within_s=7 * DAY, max_owed=3)
    owed = [Owed(str(i), T0 + timedelta(days=7)) for i in range(2)]
    assert _decide(T0, owed, s).run is False
    d = _decide(T0, [*owed, Owed("x", T0 + timedelta(days=7))], s)
    assert (d.run, d.reason) == (True, "max_owed")


def test_zero_wait_is_todays_behaviour_and_the_operator_can_force() -> None:
    owed = [Owed("a", T0 + timedelta(days=7))]
    assert _decide(T0, owed, Schedule()).reason == "immediate"
    assert _decide(T0, owed, Schedule(exact_within_s=7 * DAY), operator_asked=True).reason == "operator"
    none = _decide(T0, [], Schedule(exact_within_s=DAY))
    assert (none.run, none.wake_at) == (False, None)


def test_at_risk_before_it_is_late() -> None:
    due = T0 + timedelta(hours=1)
    assert not sch.at_risk(now=T0, exact_due=due, expected_exact_s=600)  # 2 x 10 min fits
    assert sch.at_risk(now=due - timedelta(minutes=19), exact_due=due, expected_exact_s=600)
    assert sch.at_risk(now=due + timedelta(seconds=1), exact_due=due, expected_exact_s=1)


@pytest.mark.parametrize(("raw", "fragment"), [
    ({"exact_within_s": -1}, "exact_within_s"),
    ({"exact_within_s": 8 * DAY}, "exact_within_s"),
    ({"exact_within_s": "1d"}, "exact_within_s"),
    ({"max_owed": 0}, "max_owed"),
    ({"max_owed": 2.5}, "max_owed"),
    ({"interim": "magic"}, "interim"),
    ({"exact_within": 10}, "not a schedule field"),
    ([1], "must be an object"),
])
def test_validation_names_the_bad_field(raw, fragment) -> None:
    problems = sch.validate(raw)
    assert problems and any(fragment in p for p in problems)


def test_valid_schedules_and_defaults_from_cost() -> None:
    assert sch.validate({"exact_within_s": 300, "max_owed": 50, "interim": "auto"}) == []
    assert sch.validate(None) == []
    assert sch.default_for(1.5)[0] == Schedule()  # demo movielens: exact at once
    assert sch.default_for(None)[0] == Schedule()
    assert sch.default_for(600)[0].exact_within_s == 6 * 3600
    assert sch.default_for(3600)[0].exact_within_s == DAY
    assert sch.default_for(36000)[0].exact_within_s == 3 * DAY <= sch.MAX_EXACT_WITHIN_S
    assert sch.parse({"exact_within_s": 300, "interim": "none"}, 1.5) == (Schedule(300.0, None, "none"), "model")


def test_the_lead_is_planned_from_the_models_recorded_exact_jobs() -> None:
    s = Schedule(exact_within_s=DAY)
    owed = [Owed("a", T0 + timedelta(hours=5))]
    # no exact job recorded yet: SAFETY x the expected cost
    none = sch.decide(now=T0, owed=owed, schedule=s, expected_exact_s=60.0, backoff_s=30)
    assert none.wake_at == T0 + timedelta(hours=5) - timedelta(seconds=2 * 2 * 60 + 30)
    # little history (two jobs can both be quick by luck): a larger factor on the worst of them
    few = sch.decide(now=T0, owed=owed, schedule=s, expected_exact_s=60.0, backoff_s=30, recent_s=[40.0, 45.0])
    assert few.wake_at == T0 + timedelta(hours=5) - timedelta(seconds=2 * 1.5 * 45 + 30)
    assert sch.attempt_s(60.0, [40.0]) == pytest.approx(1.75 * 40)
    # enough: HISTORY_FACTOR x the worst recorded job, for the job and one retry, plus one backoff
    recent = [40.0, 52.0, 45.0]
    d = sch.decide(now=T0, owed=owed, schedule=s, expected_exact_s=60.0, backoff_s=30, recent_s=recent)
    assert d.wake_at == T0 + timedelta(hours=5) - timedelta(seconds=2 * 1.25 * 52 + 30)
    # a failed attempt that took the worst recorded time, its backoff and a retry as slow still fit
    assert 52 + 30 + 52 <= sch.lead_s(60.0, backoff_s=30, recent_s=recent)
    # the legal margin does not shrink with history: it stays SAFETY x the expected cost per attempt
    assert sch.margin_s(60.0, attempts=3, backoff_s=30) == pytest.approx(300 + 3 * 2 * 60 + 90)


def test_at_risk_uses_the_planned_attempt() -> None:
    due = T0 + timedelta(seconds=100)
    assert sch.at_risk(now=T0, exact_due=due, expected_exact_s=60.0)  # 2 x 60 s > 100 s
    assert not sch.at_risk(now=T0, exact_due=due, expected_exact_s=60.0, recent_s=[50.0, 60.0, 70.0])  # 87.5 s
