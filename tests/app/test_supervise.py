"""``lethe run`` keeps its children alive: a child that dies is restarted with backoff while the
others keep serving; one that keeps dying makes ``lethe run`` fail loudly (exit 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.cli.supervise import Child, Stopping, stop_children, supervise


def child(name: str, code: str) -> Child:
    c = Child(name, lambda: subprocess.Popen([sys.executable, "-c", code]))
    c.start()
    return c


def test_a_child_that_dies_is_restarted_and_the_others_keep_running(tmp_path: Path) -> None:
    flag = str(tmp_path / "started-once")
    # Dies at once the first time, then stays up: a worker killed by a broker failure, restarted.
    worker = child("worker", f"import os,sys,time\nif not os.path.exists({flag!r}):\n"
                             f"    open({flag!r}, 'w').close(); sys.exit(3)\ntime.sleep(60)")
    api = child("api", "import time; time.sleep(60)")
    first_api = api.proc
    worker.proc.wait(10)
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        if len(worker.restarts) == 1 and worker.proc.poll() is None and len(slept) > 3:
            raise Stopping("test")

    try:
        with pytest.raises(Stopping):
            supervise([worker, api], sleep=sleep)
        assert len(worker.restarts) == 1 and worker.proc.poll() is None
        assert api.proc is first_api and api.proc.poll() is None  # the API was never touched
        assert 1.0 in slept  # the first restart waited 2**0 s
    finally:
        stop_children([worker, api])


def test_a_child_that_keeps_dying_fails_lethe_run() -> None:
    crashing = child("worker", "import sys; sys.exit(1)")
    delays: list[float] = []
    assert supervise([crashing], max_restarts=3, sleep=delays.append) == 1
    assert len(crashing.restarts) == 3
    assert sorted({d for d in delays if d > 1}) == [2.0, 4.0]  # exponential backoff between restarts
    stop_children([crashing])
