"""The request lifecycle has one source of truth: every status is known to every view."""

from __future__ import annotations

from app.services import callbacks, lifecycle
from app.services.lifecycle import RequestStatus


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
