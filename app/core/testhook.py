"""Named steps where a drill on a running stack can stop or fail a worker (issue 23; tests only).

A crash drill that kills a worker "somewhere in completion" by a timer proves nothing when the
timer fires before or after the step it aims at. Instead the pipeline calls ``step("name")`` at a
few named points (``workers/pipeline.py``), and a test arms one by creating a file in the folder
``LETHE_TEST_HOOK_DIR`` names:

- ``<name>.pause``: the first process to reach the step renames it to ``<name>.paused.<pid>``
  (atomic: exactly one process wins) and sleeps until it is killed. The test waits for that file
  and SIGKILLs the worker; a restarted worker passes the step, since the arming file is gone.
- ``<name>.fail``: every process that reaches the step raises :class:`InjectedFailure`, an
  ``Unavailable`` (what an unreadable data source raises: the pipeline fails the attempt and the
  request stays owed), for as long as the file exists. Removing it removes the failure's cause.

Unset (the default, and always in production: the setting is refused there), ``step`` returns at
once and touches no file.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from app.core.config import get_settings
from app.core.errors import Unavailable

log = logging.getLogger("lethe.testhook")


class InjectedFailure(Unavailable):
    code = "injected_failure"


def step(name: str) -> None:
    """Pause or fail here if a test armed ``name`` (see the module docstring); else nothing."""
    folder = get_settings().test_hook_dir
    if folder is None:
        return
    folder = Path(folder)
    if (folder / f"{name}.fail").exists():
        raise InjectedFailure(f"test hook: injected failure at step {name!r}")
    try:
        os.rename(folder / f"{name}.pause", folder / f"{name}.paused.{os.getpid()}")
    except FileNotFoundError:
        return  # not armed, or another process took it
    log.warning("test hook: pid %d paused at step %r until killed", os.getpid(), name)
    while True:
        time.sleep(3600)
