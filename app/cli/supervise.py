"""``lethe run``'s supervision of its children (the Celery worker and uvicorn): restart one that
exits on its own, with backoff, and give up with exit code 1 when restarts do not help."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class Child:
    """One supervised process of ``lethe run``; ``spawn`` (re)starts it."""

    name: str
    spawn: Callable[[], subprocess.Popen]
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times of recent restarts

    def start(self) -> None:
        self.proc = self.spawn()


class Stopping(Exception):
    """SIGTERM / SIGINT reached ``lethe run``: stop the children, do not restart them."""


def supervise(children: list[Child], *, max_restarts: int = 5, window_s: float = 300.0,
              sleep: Callable[[float], None] = time.sleep) -> int:
    """Keep every child running until a signal stops ``lethe run``.

    A child that exits on its own (e.g. the Celery worker after a broker failure it cannot
    recover from) is restarted with exponential backoff, and the others keep serving: work it
    held is in the DB and the reconciler re-sends it. More than ``max_restarts`` of one child
    within ``window_s`` means something is wrong that restarts will not fix: give up with exit
    code 1, so a process supervisor (systemd, compose) sees a failure, not a clean exit.
    """
    while True:
        for child in children:
            rc = child.proc.poll() if child.proc is not None else 0
            if rc is None:
                continue
            now = time.monotonic()
            child.restarts = [t for t in child.restarts if now - t < window_s]
            if len(child.restarts) >= max_restarts:
                print(f"lethe: {child.name} exited (code {rc}) {len(child.restarts) + 1} times in "
                      f"{window_s:.0f} s; giving up", file=sys.stderr, flush=True)
                return 1
            delay = min(30.0, 2.0 ** len(child.restarts))
            print(f"lethe: {child.name} exited unexpectedly (code {rc}); restarting it in {delay:.0f} s",
                  file=sys.stderr, flush=True)
            sleep(delay)
            child.restarts.append(time.monotonic())
            child.start()
        sleep(1.0)


def stop_children(children: list[Child]) -> None:
    procs = [c.proc for c in children if c.proc is not None]
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_ready(url: str, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def log_tail(paths: list[Path], lines: int = 15) -> str:
    return "".join(f"--- {p} (last {lines} lines)\n" + "".join(p.read_text(errors="replace").splitlines(True)[-lines:])
                   for p in paths if p.exists())
