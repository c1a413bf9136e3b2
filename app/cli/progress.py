"""Progress that reads well where it goes: a live bar in a terminal, sparse plain lines in a log.

A bar redrawn into a file (CI logs, ``docker logs``, ``lethe ... 2> file``) leaves every frame in it:
hundreds of ``registering …: 70%|███`` fragments on one line. When the stream is not a terminal,
:class:`LogLines` prints one plain line when the stage changes, every ``step`` points, or every
``every_s`` seconds, and one at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO


class Reporter(Protocol):
    def update(self, percent: float, stage: str = "") -> None: ...

    def close(self) -> None: ...


class Silent:
    def update(self, percent: float, stage: str = "") -> None:
        pass

    def close(self) -> None:
        pass


class LogLines:
    """Plain lines for a log: ``<desc>: <percent>% <stage>`` on a stage change, every ``step`` points,
    or after ``every_s`` seconds when the percent moved less than that; the last state once more on
    close. Nothing while nothing changes: a request ``scheduled`` for a day is one line, not 8,640."""

    def __init__(self, desc: str, *, stream: TextIO, step: float = 10.0, every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.desc, self.stream, self.step, self.every_s, self.clock = desc, stream, step, every_s, clock
        self.printed: tuple[float, str] | None = None
        self.last: tuple[float, str] = (0.0, "")
        self.printed_at = clock()

    def update(self, percent: float, stage: str = "") -> None:
        self.last = (percent, stage)
        if (self.printed is None or stage != self.printed[1] or abs(percent - self.printed[0]) >= self.step
                or (percent != self.printed[0] and self.clock() - self.printed_at >= self.every_s)):
            self._print()

    def _print(self) -> None:
        percent, stage = self.last
        print(f"{self.desc}: {percent:.0f}%" + (f" {stage}" if stage else ""), file=self.stream, flush=True)
        self.printed, self.printed_at = self.last, self.clock()

    def close(self) -> None:
        if self.printed != self.last:
            self._print()


class TqdmBar:
    """A live tqdm bar (terminals only)."""

    def __init__(self, desc: str, *, stream: TextIO) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=100, desc=desc, unit="%", file=stream)

    def update(self, percent: float, stage: str = "") -> None:
        if stage:
            self.bar.set_postfix_str(stage)
        self.bar.update(round(percent) - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def reporter(desc: str, *, quiet: bool = False, stream: TextIO | None = None) -> Reporter:
    """Nothing when ``quiet``; a live bar on a terminal; plain sparse lines anywhere else."""
    stream = stream if stream is not None else sys.stderr
    if quiet:
        return Silent()
    isatty = getattr(stream, "isatty", None)
    return TqdmBar(desc, stream=stream) if isatty is not None and isatty() else LogLines(desc, stream=stream)
