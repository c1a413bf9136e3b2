"""Property-based fuzzing of the whole API against its own OpenAPI schema (schemathesis 4).

Every operation of ``/openapi.json`` gets generated requests (valid and invalid), sent in process
to the ASGI app over the real SQLite test database (rolled back afterwards), with an admin key
that holds every scope so requests get past auth into the handlers. Checks: no 5xx; responses
conform to the schema where it documents them (status, content type, body); and every 4xx is an
RFC 9457 problem+json, except under ``/opendsr`` where the OpenDSR spec's own error object
(section 7.6) is the contract.

Bounded so it stays a unit test (about 1,650 cases, ~20 s on two shared cores): a few examples per
operation and generation mode, a fixed seed and deterministic generation, no example database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlmodel import Session

from app.core import db
from app.core.config import get_settings
from app.core.errors import PROBLEM
from app.core.security import SCOPES
from app.main import create_app
from app.serving.holder import UpdateListener
from app.services.models import registration
from tests.conftest import engine_for, make_key

MAX_EXAMPLES = 8  # per operation and generation mode
@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx: Any, value: Any) -> bytes:
    """Bulk ingest takes JSON Lines: generated bodies go as they are (bytes/str) or one JSON line."""
    import json

    if isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else (json.dumps(value) + "\n").encode()


CONFIG = schemathesis.Config.from_dict({
    "seed": 20260101,
    # The admin key is sent on every call; generated (or omitted) bearer tokens would only test the 401s.
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none",
                   "with-security-parameters": False},
})
SPEC_ERROR_PREFIX = "/opendsr"  # app/api/routes/opendsr.py: SpecErrorRoute
app = create_app(serve_models=False)


async def app_without_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The app as conftest's ``TestClient`` (never entered) sees it: no lifespan. schemathesis would
    start it once and keep it for the whole pytest process, and its audit-sequencer thread would then
    share the test's one connection across threads (savepoints interleave: spurious 503s here, and in
    whichever test runs next). A lifespan scope refused before any message reads as unsupported."""
    if scope["type"] == "lifespan":
        raise RuntimeError("no lifespan in tests")
    await app(scope, receive, send)


schema = schemathesis.openapi.from_asgi("/openapi.json", app_without_lifespan, config=CONFIG)


@pytest.fixture(scope="module")
def admin_headers() -> Iterator[dict[str, str]]:
    """One rolled-back SQLite transaction for the whole module (as conftest's ``session``, module
    scoped so the toy model is trained once, not once per operation), the toy model serving, and
    an admin key holding every scope."""
    conn = engine_for("sqlite").connect()
    trans = conn.begin()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(db, "new_session", lambda: Session(bind=conn, join_transaction_mode="create_savepoint"))
        settings = get_settings()
        with db.new_session() as session:
            registration.register_demo_model(session, name="toy", secret=settings.subject_key_secret,
                                             artifacts_dir=settings.artifacts_dir, device="cpu")
            headers = {"Authorization": f"Bearer {make_key(session, list(SCOPES), 'fuzz-admin')}"}
        # Serving on, so predict reaches the model instead of answering 503 serving_disabled.
        app.state.listener = UpdateListener(app.state.holder, settings)
        app.state.listener.sync_once()
        try:
            yield headers
        finally:
            app.state.listener = None
            trans.rollback()
            conn.close()


def _json(response: schemathesis.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


@schemathesis.check
def admin_key_gets_past_auth(ctx, response: schemathesis.Response, case: schemathesis.Case) -> bool:  # noqa: ANN001
    """The key holds every scope: a 401 or 403 means the fuzz never reached the handler."""
    assert response.status_code not in (401, 403), f"admin key refused: {response.text[:200]}"
    return True


@schemathesis.check
def errors_have_the_documented_shape(ctx, response: schemathesis.Response, case: schemathesis.Case) -> bool:  # noqa: ANN001
    """Every 4xx is problem+json; OpenDSR routes answer the spec's ``{error: {code, message, errors}}``."""
    if not 400 <= response.status_code < 500:
        return True
    body = _json(response)
    if case.operation.path.startswith(SPEC_ERROR_PREFIX):
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(error, dict), f"OpenDSR {response.status_code} without an error object: {body!r}"
        assert error.get("code") == response.status_code, f"error.code {error.get('code')!r} != status"
        assert isinstance(error.get("message"), str) and isinstance(error.get("errors"), list), body
        return True
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith(PROBLEM), f"{response.status_code} with content-type {content_type!r}"
    assert isinstance(body, dict), f"problem body is not an object: {body!r}"
    missing = {"type", "title", "status", "detail"} - body.keys()
    assert not missing, f"problem+json without {sorted(missing)}"
    assert body["status"] == response.status_code, f"problem status {body['status']!r} != {response.status_code}"
    return True


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          admin_key_gets_past_auth, errors_have_the_documented_shape]


@schema.parametrize()
@hypothesis.settings(deadline=None)
def test_api_conforms_to_its_schema(case: schemathesis.Case, admin_headers: dict[str, str]) -> None:
    app.state.listener.sync_once()  # the listener's DB poll, inline: serving stays fresh past replica_ttl_s
    response = case.call(headers=admin_headers)
    case.validate_response(response, checks=CHECKS, headers=admin_headers)


def test_a_blank_idempotency_key_is_not_a_server_error(admin_headers: dict[str, str]) -> None:
    """Found by this fuzz: a blank key was stored as "" and the second request hit the unique
    index (500). Now a blank header is a 422 and the service treats a blank key as none."""
    client = TestClient(app, raise_server_exceptions=False)
    blank = {**admin_headers, "Idempotency-Key": ""}
    answers = [client.post("/v1/erasure-requests", json={"subject_id": "nobody-blank-key"}, headers=blank)
               for _ in range(2)]
    assert [r.status_code for r in answers] == [422, 422], [r.json() for r in answers]
    assert answers[0].headers["content-type"].startswith("application/problem+json")
    from app.services.requests import erasure

    assert erasure.IntakeItem(subject_key="k", idempotency_key=" ").idempotency_key is None
