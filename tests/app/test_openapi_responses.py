"""Every route documents its response (issue 11 section 3): each 2xx of each operation has a content
type with a schema that says something, JSON bodies are named models that forbid keys they do not
declare, and the few non-JSON routes keep their own content types."""

from __future__ import annotations

import typing
from typing import Any

import jsonschema
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel

from app.api.routes import (audit, certificates, erasure_requests, fides, health, keys, model_admin, models,
                            subjects)
from app.api.schemas._base import _no_default

from tests.app.test_opendsr import DIALECTS, controller, held, new_request  # noqa: F401 - fixtures

# The routes whose success is not JSON, and what they send instead.
NON_JSON = {("/metrics", "get"): {"text/plain"},
            ("/v1/audit/export", "get"): {"application/x-ndjson", "text/csv"},
            ("/opendsr/cert.pem", "get"): {"application/x-pem-file"}}


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def successes(spec: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    return [(path, method, code, response) for path, item in spec["paths"].items() for method, op in item.items()
            for code, response in op["responses"].items() if code.startswith("2")]


def test_every_success_response_has_a_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    found = successes(spec)
    assert len({(path, method) for path, method, _, _ in found}) >= 55  # every operation has a 2xx
    problems = []
    for path, method, code, response in found:
        content = response.get("content") or {}
        expected = NON_JSON.get((path, method), {"application/json"})
        if set(content) != expected:
            problems.append(f"{method.upper()} {path} {code}: content types {sorted(content)} != {sorted(expected)}")
            continue
        for media, body in content.items():
            schema = _resolve(spec, body.get("schema") or {})
            if not schema:
                problems.append(f"{method.upper()} {path} {code} {media}: empty schema")
            elif media == "application/json" and not (schema.get("properties")
                                                      and schema.get("additionalProperties") is False):
                problems.append(f"{method.upper()} {path} {code}: not a closed object schema: {schema}")
    assert not problems, "\n".join(problems)


def test_opendsr_bodies_keep_the_spec_field_names(client: TestClient) -> None:
    """The spec's names (sections 7.3, 8.3, 9.2), per dialect: v0.1 has no results_count and echoes
    encoded_request on cancel."""
    spec = client.get("/openapi.json").json()

    def fields(path: str, method: str, code: str) -> tuple[set[str], set[str]]:
        schema = _resolve(spec, spec["paths"][path][method]["responses"][code]["content"]["application/json"]
                          ["schema"])
        return set(schema["properties"]), set(schema.get("required", []))

    create = fields("/opendsr/v2/requests", "post", "201")
    assert create == ({"controller_id", "expected_completion_time", "received_time", "encoded_request",
                       "subject_request_id", "processor_signature"},) * 2
    status_v2 = fields("/opendsr/v2/requests/{subject_request_id}", "get", "200")
    status_v01 = fields("/opendsr/v1/opengdpr_requests/{subject_request_id}", "get", "200")
    assert status_v2[1] == status_v01[1] == {"controller_id", "expected_completion_time", "subject_request_id",
                                             "request_status", "api_version"}
    assert status_v2[0] - status_v01[0] == {"results_count"} and "results_url" in status_v01[0]
    cancel_v2 = fields("/opendsr/v2/requests/{subject_request_id}", "delete", "202")
    cancel_v01 = fields("/opendsr/v1/opengdpr_requests/{subject_request_id}", "delete", "202")
    assert cancel_v01[1] - cancel_v2[1] == {"encoded_request"}


def conforms(spec: dict[str, Any], response: Any, path: str, method: str) -> None:  # noqa: ANN401
    """The body sent validates against the schema OpenAPI documents for that operation and status."""
    documented = spec["paths"][path][method]["responses"][str(response.status_code)]
    schema = {**documented["content"]["application/json"]["schema"], "components": spec["components"]}
    jsonschema.validate(response.json(), schema, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_signed_opendsr_bodies_match_their_documented_schema(client: TestClient, held: str, controller: dict,
                                                             dialect: str) -> None:
    """The OpenDSR routes send pre-signed bytes, which FastAPI does not validate: check every body
    of a request's life (create, status pending and completed, cancel, access results) here."""
    spec = client.get("/openapi.json").json()
    path, base, _, _ = DIALECTS[dialect]
    item = f"{path}/{{subject_request_id}}"
    conforms(spec, client.get(f"{base}/discovery"), f"{base}/discovery", "get")
    conforms(spec, client.get(f"{base}/status"), f"{base}/status", "get")
    erasure = new_request()
    created = client.post(path, json=erasure, headers=controller)
    assert created.status_code == 201
    conforms(spec, created, path, "post")
    pending = client.get(f"{path}/{erasure['subject_request_id']}", headers=controller)
    assert pending.json()["request_status"] == "pending"
    conforms(spec, pending, item, "get")
    cancelled = client.delete(f"{path}/{erasure['subject_request_id']}", headers=controller)
    assert cancelled.status_code == 202
    conforms(spec, cancelled, item, "delete")
    access = new_request("access")
    assert client.post(path, json=access, headers=controller).status_code == 201
    done = client.get(f"{path}/{access['subject_request_id']}", headers=controller)
    assert done.json()["request_status"] == "completed" and "results_url" in done.json()
    conforms(spec, done, item, "get")
    results = client.get(f"{path}/{access['subject_request_id']}/results", headers=controller)
    assert results.status_code == 200
    conforms(spec, results, f"{item}/results", "get")


def test_keys_a_route_leaves_out_stay_out(client: TestClient, admin_headers: dict[str, str]) -> None:
    """Response models with fields that are sometimes absent must not turn them into nulls."""
    report = client.get("/v1/audit/verify", headers=admin_headers).json()
    assert report["checkpoint"] is None and "checkpoint_valid" not in report
    answer = client.post("/integrations/fides/webhook", headers=admin_headers,
                         json={"privacy_request_id": "pri-post", "direction": "one_way", "callback_type": "post"})
    assert answer.status_code == 200 and answer.json() == {}


def _absent_fields(model: type[BaseModel], seen: set[type] | None = None) -> list[str]:
    """Fields declared with ``absent()`` in ``model`` and the models nested in it."""
    seen = seen if seen is not None else set()
    if model in seen:
        return []
    seen.add(model)
    found = []
    for name, field in model.model_fields.items():
        if field.json_schema_extra is _no_default:
            found.append(f"{model.__name__}.{name}")
        for arg in typing.get_args(field.annotation) or (field.annotation,):
            for inner in typing.get_args(arg) or (arg,):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    found += _absent_fields(inner, seen)
    return found


def test_routes_whose_schema_has_absent_fields_exclude_unset_ones() -> None:
    """Else FastAPI would send a key the service left out as null (a signed certificate would break).
    The OpenDSR routes are left out: they send pre-signed Responses, never serialised by FastAPI."""
    routes = [r for module in (audit, certificates, erasure_requests, fides, health, keys, model_admin, models,
                               subjects) for r in module.router.routes if isinstance(r, APIRoute)]
    assert len(routes) >= 30
    with_absent = {r.path: r for r in routes if isinstance(r.response_model, type)
                   and _absent_fields(r.response_model)}
    assert {"/v1/audit/verify", "/v1/erasure-requests/{request_id}/certificate",
            "/integrations/fides/webhook"} <= set(with_absent)
    assert not [path for path, route in with_absent.items() if not route.response_model_exclude_unset]
