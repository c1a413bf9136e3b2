"""Progress in a log is sparse plain lines, never a bar redrawn frame by frame (issue 22)."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest

from app.cli import erasure as cli_erasure
from app.cli import models as cli_models
from app.cli.progress import LogLines, Silent, TqdmBar, reporter


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_print_on_stage_change_every_ten_points_and_at_the_end() -> None:
    out, now = io.StringIO(), [0.0]
    lines = LogLines("job", stream=out, clock=lambda: now[0])
    for percent in range(0, 96):
        lines.update(percent, "training" if percent < 50 else "verifying")
    lines.update(97, "verifying")
    lines.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text  # no redraws, no terminal codes
    assert text.splitlines() == [
        "job: 0% training", "job: 10% training", "job: 20% training", "job: 30% training", "job: 40% training",
        "job: 50% verifying", "job: 60% verifying", "job: 70% verifying", "job: 80% verifying",
        "job: 90% verifying", "job: 97% verifying"]


def test_log_lines_print_slow_progress_every_ten_seconds_and_nothing_while_nothing_moves() -> None:
    out, now = io.StringIO(), [0.0]
    lines = LogLines("job", stream=out, clock=lambda: now[0])
    for second in range(0, 35):  # creeping: 0.1 points a second
        now[0] = float(second)
        lines.update(second / 10, "training")
    assert out.getvalue().splitlines() == ["job: 0% training", "job: 1% training", "job: 2% training",
                                           "job: 3% training"]  # at 0, 10, 20 and 30 s
    out.truncate(0), out.seek(0)
    for second in range(35, 86_400, 5):  # a request scheduled for a day: nothing moves
        now[0] = float(second)
        lines.update(50, "scheduled")
    assert out.getvalue().splitlines() == ["job: 50% scheduled"]  # the stage change, then silence


def test_the_reporter_fits_the_stream() -> None:
    assert isinstance(reporter("x", stream=io.StringIO()), LogLines)
    assert isinstance(reporter("x", stream=Tty()), TqdmBar)
    assert isinstance(reporter("x", quiet=True, stream=Tty()), Silent)


def registrations(steps: int) -> httpx.Client:
    """A stack whose registration job climbs one percent a poll, then completes."""
    polls = iter([("running", "training", p) for p in range(steps)] + [("completed", "serving", 100)])

    def handler(request: httpx.Request) -> httpx.Response:
        status, stage, percent = next(polls)
        return httpx.Response(200, json={"id": "reg-1", "name": "m", "status": status, "stage": stage,
                                         "percent": percent})

    return httpx.Client(base_url="http://stack", transport=httpx.MockTransport(handler))


def test_register_progress_written_to_a_file_is_a_few_plain_lines(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_models.time, "sleep", lambda s: None)
    view: dict[str, Any] = cli_models.follow_registration(registrations(100), {"id": "reg-1", "name": "m"},
                                                          quiet=False)
    err = capsys.readouterr().err  # pytest's capture is not a terminal, as a log file is not
    assert view["status"] == "completed"
    assert "\r" not in err and "|" not in err
    assert err.splitlines()[0] == "registering m: 0% training"
    assert err.splitlines()[-1] == "registering m: 100% serving"
    assert len(err.splitlines()) <= 12  # 100 polls, ~11 lines


def test_erase_follow_into_a_log_prints_plain_lines(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    polls = iter([("running", 20.0), ("running", 25.0), ("verifying", 80.0), ("completed", 100.0)])

    def handler(request: httpx.Request) -> httpx.Response:
        status, percent = (("queued", 0.0) if request.method == "POST" else next(polls))
        return httpx.Response(202 if request.method == "POST" else 200,
                              json={"id": "req-1", "status": status, "stage": status, "percent": percent,
                                    "models": []})

    client = httpx.Client(base_url="http://stack", transport=httpx.MockTransport(handler))
    monkeypatch.setattr(cli_models, "client", lambda args: client)
    monkeypatch.setattr(cli_erasure, "POLL_S", 0.0)
    import app.cli as cli

    assert cli.main(["erase", "15", "--follow"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == ["erasure req-1: 0% queued", "erasure req-1: 20% running",
                                "erasure req-1: 80% verifying", "erasure req-1: 100% completed"]


def test_erase_follow_of_a_scheduled_erasure_reads_forward_in_a_log(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    due = "2026-12-07T10:00:00Z"
    interim = {"toy": {"version": 3, "method": "params"}}
    polls = iter([
        {"status": "running", "stage": "unlearning", "percent": 20.0},
        {"status": "scheduled", "stage": "scheduled", "percent": 50.0, "exact_due_at": due,
         "forgotten_at": "2026-12-06T10:00:03Z", "result": {"interim": interim}},
        # a server from before monotonic percents restarted the bar for the exact job
        {"status": "running", "stage": "collecting", "percent": 0.0, "exact_due_at": due,
         "result": {"interim": interim}},
        {"status": "running", "stage": "unlearning", "percent": 75.0, "exact_due_at": due,
         "result": {"interim": interim}},
        {"status": "completed", "stage": "completed", "percent": 100.0, "exact_due_at": due,
         "completed_at": "2026-12-06T10:05:00Z",
         "result": {"interim": interim, "models": {"toy": {"version_after": 4, "method": "retrain"}}}},
    ])

    def handler(request: httpx.Request) -> httpx.Response:
        body = {"status": "queued", "stage": "queued", "percent": 0.0} if request.method == "POST" else next(polls)
        return httpx.Response(202 if request.method == "POST" else 200, json={"id": "req-1", "models": [], **body})

    client = httpx.Client(base_url="http://stack", transport=httpx.MockTransport(handler))
    monkeypatch.setattr(cli_models, "client", lambda args: client)
    monkeypatch.setattr(cli_erasure, "POLL_S", 0.0)
    import app.cli as cli

    assert cli.main(["erase", "15", "--follow"]) == 0
    lines = capsys.readouterr().err.splitlines()
    progress = [line for line in lines if line.startswith("erasure req-1: ")]
    assert progress == ["erasure req-1: 0% queued", "erasure req-1: 20% running / unlearning",
                        "erasure req-1: 50% scheduled", "erasure req-1: 50% exact: running / collecting",
                        "erasure req-1: 75% exact: running / unlearning", "erasure req-1: 100% completed"]
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 2 and steps[0].startswith("step 1/2 interim forget: toy v3 (params)")
    assert steps[1].startswith("step 2/2 exact erasure: toy v4 (retrain)")
