"""OpenAPI declares bearer auth (issue 11 section 3): /docs gets an Authorize button, protected
operations list the scheme, open ones do not, and a missing key is still a problem+json 401."""

from __future__ import annotations

from fastapi.testclient import TestClient

OPEN = {("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get")}


def test_bearer_scheme_is_declared_and_listed_by_protected_operations(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http" and schemes["bearerAuth"]["scheme"].lower() == "bearer"
    operations = {(path, method): op for path, item in spec["paths"].items() for method, op in item.items()}
    secured = {key for key, op in operations.items() if {"bearerAuth": []} in op.get("security", [])}
    assert ("/v1/erasure-requests", "post") in secured and ("/v1/models/{name}/predict", "post") in secured
    assert not OPEN & secured
    assert len(secured) > len(operations) / 2
    # The header is read by the scheme, not declared again as a parameter of each operation.
    assert not [key for key, op in operations.items()
                if any(p["name"].lower() == "authorization" for p in op.get("parameters", []))]


def test_missing_or_malformed_key_is_still_a_problem_401(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Basic Zm9vOmJhcg=="}, {"Authorization": "Bearer nope"}):
        response = client.get("/v1/erasure-requests", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["content-type"].startswith("application/problem+json")
