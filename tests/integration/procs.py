"""The Celery worker processes of a stack, found in ``lethe run``'s process group, ways to freeze
(SIGSTOP) or kill (SIGKILL) them, and the test hook's arming files (``app/core/testhook.py``), so a
drill's scenario happens for sure instead of by timing (issue 23)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path


def worker_pids(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` whose command line runs a Celery worker (main and pool)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != pgid:
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        if "workers.celery_app" in cmd and " worker" in cmd:  # main, pool children, embedded beat (-B)
            out.append(int(proc.name))
    return sorted(out)


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[list[int]]:
    """SIGSTOP ``pids`` for the block, SIGCONT after (also on failure)."""
    assert pids, "no worker process to freeze"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def kill_workers(pgid: int, timeout: float = 30) -> list[int]:
    """SIGKILL every Celery worker process of the stack (main, pool children, beat): what a node loss
    does to the worker. ``lethe run`` notices and starts a fresh worker. Returns the killed PIDs."""
    pids = worker_pids(pgid)
    assert pids, "no worker process to kill"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while set(pids) & set(worker_pids(pgid)):  # reaped by their parent (lethe run, or init)
        assert time.monotonic() < deadline, f"killed workers still alive: {set(pids) & set(worker_pids(pgid))}"
        time.sleep(0.1)
    return pids


def arm(hook_dir: Path, step: str, action: str) -> Path:
    """Arm the worker's named step (``app/core/testhook.py``): ``pause`` or ``fail``."""
    hook_dir.mkdir(parents=True, exist_ok=True)
    path = hook_dir / f"{step}.{action}"
    path.touch()
    return path


def wait_paused(hook_dir: Path, step: str, timeout: float = 120) -> int:
    """PID of the worker process paused at ``step`` (it renamed ``<step>.pause``), once it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        paused = sorted(hook_dir.glob(f"{step}.paused.*"))
        if paused:
            return int(paused[0].name.rsplit(".", 1)[1])
        time.sleep(0.1)
    raise AssertionError(f"no worker reached step {step!r} within {timeout:.0f} s")


def wait_new_workers(pgid: int, killed: list[int], timeout: float = 60) -> list[int]:
    """The PIDs of the worker ``lethe run`` started after ``killed`` died, once there is one."""
    deadline = time.monotonic() + timeout
    while not (fresh := [p for p in worker_pids(pgid) if p not in killed]):
        assert time.monotonic() < deadline, "lethe run did not start a new worker"
        time.sleep(0.2)
    return fresh
