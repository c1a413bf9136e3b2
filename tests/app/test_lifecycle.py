"""The request lifecycle has one source of truth: every status is known to every view."""

from __future__ import annotations

import pytest

from app.services.integrations import callbacks
from app.services.requests import lifecycle
from app.services.requests.lifecycle import RequestStatus


def test_every_status_has_an_opendsr_status_and_erased_means_completed() -> None:
    assert set(callbacks.REQUEST_STATUS) == {s.value for s in RequestStatus}
    for status in RequestStatus:
        opendsr = callbacks.REQUEST_STATUS[status]
        # OpenDSR "completed" only where Lethe says the person is erased; a failed erasure is still owed.
        assert (opendsr == "completed") == (status in lifecycle.ERASED), status
    assert RequestStatus.FAILED in lifecycle.OPEN and not (lifecycle.OPEN & lifecycle.ERASED)


def test_the_lifecycle_is_the_only_writer_of_request_status() -> None:
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    writes = re.compile(r"\breq(uest)?\.status\s*(,[^=\n]*)?=[^=]")
    offenders = [str(p.relative_to(root)) for d in ("app", "workers") for p in (root / d).rglob("*.py")
                 if p.name != "lifecycle.py" and writes.search(p.read_text())]
    assert offenders == []


def test_a_transition_with_no_subscribers_installed_is_refused(session, monkeypatch) -> None:  # noqa: ANN001
    from app.services.requests import erasure

    monkeypatch.setattr(lifecycle, "_subscribers", [])
    with pytest.raises(RuntimeError, match="install_subscribers"):
        erasure.create_request(session, subject_key="a" * 64)


def test_the_api_and_the_worker_each_install_the_subscribers(monkeypatch) -> None:  # noqa: ANN001
    import subprocess
    import sys
    from pathlib import Path

    from app.main import create_app
    from app.services.requests.subscribers import SUBSCRIBERS

    monkeypatch.setattr(lifecycle, "_subscribers", [])
    create_app(serve_models=False)
    assert lifecycle._subscribers == list(SUBSCRIBERS)
    check = ("import workers.celery_app; from app.services.requests import lifecycle, subscribers; "
             "assert lifecycle._subscribers == list(subscribers.SUBSCRIBERS), lifecycle._subscribers")
    done = subprocess.run([sys.executable, "-c", check], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
