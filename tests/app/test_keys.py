"""Admin key API: list, revoke, rotate; a revoked or rotated-away secret is refused at once."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.core import db
from app.db.models import ApiKey
from app.services.access import keys
from tests.conftest import make_key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_list_shows_keys_without_secrets(client: TestClient, admin_headers: dict[str, str], session: Session) -> None:
    reader = make_key(session, ["erasure:read"], name="reader")
    body = client.get("/v1/keys", headers=admin_headers).json()
    by_name = {k["name"]: k for k in body["items"]}
    assert by_name["reader"]["scopes"] == ["erasure:read"] and by_name["reader"]["revoked"] is False
    assert reader not in str(body) and all("key" not in k and "key_hash" not in k for k in body["items"])
    assert client.get("/v1/keys", headers=bearer(reader)).status_code == 403


def test_revoked_key_is_refused_at_once(client: TestClient, admin_headers: dict[str, str]) -> None:
    created = client.post("/v1/keys", headers=admin_headers, json={"name": "ops", "scopes": ["erasure:read"]}).json()
    assert client.get("/v1/erasure-requests", headers=bearer(created["key"])).status_code == 200
    revoked = client.delete(f"/v1/keys/{created['id']}", headers=admin_headers)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    refused = client.get("/v1/erasure-requests", headers=bearer(created["key"]))
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_api_key"
    again = client.delete(f"/v1/keys/{created['id']}", headers=admin_headers)
    assert again.status_code == 409 and again.json()["code"] == "key_revoked"
    assert client.delete("/v1/keys/nope", headers=admin_headers).status_code == 404
    events = client.get("/v1/audit/events", headers=admin_headers, params={"type": "api_key_revoked"}).json()
    assert [e["payload"]["key_id"] for e in events["items"]] == [created["id"]]


def test_revocation_is_seen_by_another_process_state(client: TestClient, admin_headers: dict[str, str],
                                                     session: Session) -> None:
    """No per-process cache: a key authenticated here, then revoked through the DB by someone
    else (another replica), is refused on the very next request."""
    reader = make_key(session, ["erasure:read"], name="elsewhere")
    assert client.get("/v1/erasure-requests", headers=bearer(reader)).status_code == 200
    with db.session_scope() as other:
        row = next(k for k in keys.list_keys(other) if k.name == "elsewhere")
        row.revoked = True
        other.add(row)
        other.commit()
    assert client.get("/v1/erasure-requests", headers=bearer(reader)).status_code == 401


def test_rotate_gives_a_new_secret_and_refuses_the_old(client: TestClient, admin_headers: dict[str, str],
                                                       session: Session) -> None:
    old = make_key(session, ["erasure:read", "predict"], name="svc")
    key_id = next(k["id"] for k in client.get("/v1/keys", headers=admin_headers).json()["items"] if k["name"] == "svc")
    rotated = client.post(f"/v1/keys/{key_id}/rotate", headers=admin_headers)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["id"] == key_id and new["scopes"] == ["erasure:read", "predict"] and new["key"] != old
    assert client.get("/v1/erasure-requests", headers=bearer(old)).status_code == 401
    assert client.get("/v1/erasure-requests", headers=bearer(new["key"])).status_code == 200
    assert client.post("/v1/keys/nope/rotate", headers=admin_headers).status_code == 404


def test_the_last_admin_key_cannot_be_revoked(client: TestClient, session: Session) -> None:
    for row in keys.list_keys(session):  # the DB is shared by the module's tests: only ours counts
        if "admin" in row.scopes.split():
            row.revoked = True
            session.add(row)
    session.commit()
    admin = make_key(session, ["admin"], name="only-admin")
    own_id = session.exec(select(ApiKey).where(ApiKey.name == "only-admin")).one().id
    refused = client.delete(f"/v1/keys/{own_id}", headers=bearer(admin))
    assert refused.status_code == 409 and refused.json()["code"] == "last_admin_key"
    second = make_key(session, ["admin"], name="second-admin")
    assert client.delete(f"/v1/keys/{own_id}", headers=bearer(second)).status_code == 200
    assert client.get("/v1/keys", headers=bearer(admin)).status_code == 401

