"""The Celery worker processes of a stack, found in ``lethe run``'s process group, and a way to
freeze them (SIGSTOP) so a drill's scenario happens for sure instead of by timing (issue 23)."""

from __future__ import annotations

import contextlib
import os
import signal
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
