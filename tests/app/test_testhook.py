"""The worker's named test steps (``app/core/testhook.py``) and the test-only legal window."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from app.core import testhook
from app.core.config import Settings
from app.core.errors import Unavailable
from app.services.requests import erasure


class Paused(Exception):
    pass


def _hook(monkeypatch: pytest.MonkeyPatch, folder: Path | None) -> None:
    monkeypatch.setattr(testhook, "get_settings", lambda: Settings(test_hook_dir=folder))


def test_unset_hook_does_nothing_even_where_files_would_arm_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _hook(monkeypatch, None)
    (tmp_path / "collect.fail").touch()
    (tmp_path / "collect.pause").touch()
    testhook.step("collect")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["collect.fail", "collect.pause"]


def test_fail_raises_unavailable_while_armed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _hook(monkeypatch, tmp_path)
    testhook.step("collect")  # not armed
    (tmp_path / "collect.fail").touch()
    for _ in range(2):  # every attempt, while the file exists
        with pytest.raises(Unavailable, match="injected failure at step 'collect'"):
            testhook.step("collect")
    testhook.step("unlearn")  # another step is not armed
    (tmp_path / "collect.fail").unlink()
    testhook.step("collect")


def test_pause_is_taken_by_one_process_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _hook(monkeypatch, tmp_path)

    def sleep(_s: float) -> None:
        raise Paused

    monkeypatch.setattr(testhook.time, "sleep", sleep)
    (tmp_path / "complete.pause").touch()
    with pytest.raises(Paused):
        testhook.step("complete")
    assert [p.name for p in tmp_path.iterdir()] == [f"complete.paused.{os.getpid()}"]
    testhook.step("complete")  # the arming file is gone: a restarted worker passes


def test_legal_deadline_is_one_month_unless_a_test_shortens_it(monkeypatch: pytest.MonkeyPatch) -> None:
    received = datetime(2026, 1, 31, 12, tzinfo=timezone.utc)
    monkeypatch.setattr(erasure, "get_settings", lambda: Settings())
    assert erasure.legal_due_at(received) == datetime(2026, 2, 28, 12, tzinfo=timezone.utc)
    monkeypatch.setattr(erasure, "get_settings", lambda: Settings(deadline_override_s=30))
    assert erasure.legal_due_at(received) == received + timedelta(seconds=30)
