"""Logs (issue 11 section 3): one JSON object per line in production, readable text elsewhere; request
and job IDs when known, never a subject ID (the access log names route templates, not paths)."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from app.core import logging as lethe_logging
from app.core.logging import configure_logging, log_context


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    configure_logging("INFO", json_lines=False)  # back to the default handler on stderr


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_production_writes_one_json_object_per_line(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lethe_logging, "get_settings", lambda: SimpleNamespace(env="production"))
    configure_logging("INFO", stream=stream)
    log = logging.getLogger("lethe.test")
    log.info("job %s started", "j-1", extra={"job_id": "j-1"})
    with log_context(request_id="r-1", job_id="j-2"):
        log.warning("publishing\nversion %d", 4)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
    log.debug("not at INFO")
    records = [json.loads(line) for line in lines(stream)]  # each line parses on its own
    assert len(records) == 3
    first, second, third = records
    assert set(first) == {"ts", "level", "logger", "message", "job_id"}
    assert first["level"] == "INFO" and first["logger"] == "lethe.test" and first["message"] == "job j-1 started"
    assert first["ts"].endswith("Z")
    assert second == {**second, "level": "WARNING", "message": "publishing\nversion 4", "request_id": "r-1",
                      "job_id": "j-2"}
    assert "RuntimeError: boom" in third["exc_info"] and third["request_id"] == "r-1"


def test_elsewhere_logs_are_text(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lethe_logging, "get_settings", lambda: SimpleNamespace(env="development"))
    configure_logging("INFO", stream=stream)
    with log_context(job_id="j-3"):
        logging.getLogger("lethe.test").info("hello")
    (line,) = lines(stream)
    assert " INFO lethe.test hello [job_id=j-3]" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_only_known_context_fields() -> None:
    with pytest.raises(ValueError, match="subject_id"), log_context(subject_id="alice"):
        pass


def test_access_log_names_the_route_not_the_subject(client: TestClient, admin_headers: dict,
                                                    stream: io.StringIO) -> None:
    configure_logging("INFO", json_lines=True, stream=stream)
    assert logging.getLogger("uvicorn.access").getEffectiveLevel() >= logging.WARNING  # raw paths
    secret = "subject-" + uuid.uuid4().hex
    client.get(f"/v1/subjects/{secret}", headers=admin_headers)
    assert secret not in stream.getvalue()
    access = [r for r in map(json.loads, lines(stream)) if r["logger"] == "lethe.http"]
    assert any(r["message"].startswith("GET /v1/subjects/{subject_id} ") for r in access)
