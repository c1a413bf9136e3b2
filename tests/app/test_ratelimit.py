"""Intake rate limit: a token bucket per API key; over it, 429 + Retry-After, and nothing recorded."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.core.config import get_settings
from app.core.ratelimit import TokenBuckets
from app.db.models import ErasureRequest


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    b = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [b.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("k") == 0.5  # empty: the next token is half a second away at 2/s
    assert b.take("other") == 0.0  # keys are independent
    now[0] += 0.5
    assert b.take("k") == 0.0 and b.take("k") > 0
    now[0] += 100
    assert [b.take("k") for _ in range(4)].count(0.0) == 3  # refills only up to the burst


def limited(app, rate: float, burst: int) -> None:  # noqa: ANN001
    app.dependency_overrides[get_settings] = lambda: get_settings().model_copy(
        update={"intake_rate_per_s": rate, "intake_burst": burst})


def test_native_intake_over_the_rate_is_429_with_retry_after_and_records_nothing(
        app, client: TestClient, admin_headers: dict, session: Session) -> None:  # noqa: ANN001
    limited(app, rate=0.01, burst=2)
    codes = [client.post("/v1/erasure-requests", json={"subject_id": f"rl-{i}"}, headers=admin_headers)
             for i in range(3)]
    assert [r.status_code for r in codes] == [202, 202, 429]
    refused = codes[-1]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1
    assert len(session.exec(select(ErasureRequest)).all()) == 2
    app.dependency_overrides.clear()
    assert client.post("/v1/erasure-requests", json={"subject_id": "rl-2"}, headers=admin_headers).status_code == 202


def test_opendsr_intake_over_the_rate_is_429_in_the_spec_error_shape(
        app, client: TestClient, admin_headers: dict) -> None:  # noqa: ANN001
    limited(app, rate=0.01, burst=1)

    def create() -> object:
        body = {"regulation": "gdpr", "subject_request_id": str(uuid.uuid4()), "subject_request_type": "erasure",
                "submitted_time": "2024-05-01T10:00:00Z", "api_version": "1.0",
                "subject_identities": [{"identity_type": "controller_customer_id", "identity_value": "nobody",
                                        "identity_format": "raw"}]}
        return client.post("/opendsr/opencompliance_requests", json=body, headers=admin_headers)

    assert create().status_code == 201
    r = create()
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == 429 and "nobody" not in r.text
