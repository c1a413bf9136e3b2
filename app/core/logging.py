"""Logging set-up. Logs carry request and job IDs, never subject IDs (DESIGN.md section 2).

Production (``LETHE_ENV=production``) writes one JSON object per line — ``ts``, ``level``,
``logger``, ``message`` and, when known, ``request_id`` / ``job_id`` / ``model`` — for a log
pipeline to index; elsewhere the same records as readable text. The IDs come from ``extra=``
on the call or from ``log_context`` around a block (a job, a request). Only those named fields
are added, so nothing else in a record's ``__dict__`` (arguments, URLs) leaks into the output.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

from app.core.config import get_settings

CONTEXT_FIELDS = ("request_id", "job_id", "model")
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("lethe_log_context", default={})


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (of ``CONTEXT_FIELDS``) to every record logged inside the block, this thread or task only."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"not a log context field: {sorted(unknown)}")
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(_context.get())
    fields.update({k: getattr(record, k) for k in CONTEXT_FIELDS if getattr(record, k, None) is not None})
    return {k: fields[k] for k in CONTEXT_FIELDS if k in fields}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(), **context_of(record)}
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        context = " ".join(f"{k}={v}" for k, v in context_of(record).items())
        return super().formatMessage(record) + (f" [{context}]" if context else "")


def configure_logging(level: str = "INFO", *, json_lines: bool | None = None, stream: IO[str] | None = None) -> None:
    """Install Lethe's one root handler (replacing the one an earlier call installed, leaving others
    such as pytest's alone). ``json_lines`` defaults to ``LETHE_ENV == production``."""
    if json_lines is None:
        json_lines = get_settings().env == "production"
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "lethe", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.lethe = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own handlers would bypass the format: its records go through the root handler instead.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # Raw URLs may carry subject IDs (/v1/subjects/{id}): httpx logs them, and so does uvicorn's access
    # log; the HTTP metrics middleware logs each request under its route template instead (lethe.http).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
