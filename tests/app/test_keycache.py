"""The replicas' API-key cache: a revoked or rotated key is refused by every replica once the revoke
answered — confirmed over Redis pub/sub at once, or after the cache TTL without Redis."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.core.errors import Unauthorized
from app.db.models import ApiKey
from app.serving.holder import ModelHolder, UpdateListener
from app.services.access import keycache, keys
from app.services.models import catalog as models
from tests.conftest import make_key, redis_available

NO_REDIS = "redis://127.0.0.1:1/0"  # nothing listens there


def bearer(clear: str) -> str:
    return f"Bearer {clear}"


def test_cache_entries_expire_drop_by_key_and_skip_lookups_that_raced_a_drop() -> None:
    cache = keycache.KeyCache(ttl_s=60)
    a, b = ApiKey(id="a", name="a", key_hash="ha", scopes="predict"), ApiKey(id="b", name="b", key_hash="hb",
                                                                                scopes="predict")
    now = time.monotonic()
    cache.put("ha", a, generation=cache.generation, looked_up_at=now)
    cache.put("hb", b, generation=cache.generation, looked_up_at=now - 61)  # looked up over a TTL ago
    assert cache.get("ha") is a and cache.get("hb") is None
    cache.drop("a")
    assert cache.get("ha") is None
    before = cache.generation  # a lookup starts, a revoke's drop lands, then the lookup's result
    cache.drop("z")
    cache.put("ha", a, generation=before, looked_up_at=time.monotonic())
    assert cache.get("ha") is None
    off = keycache.KeyCache(ttl_s=0)
    off.put("ha", a, generation=off.generation, looked_up_at=time.monotonic())
    assert len(off) == 0


def cached_on(replica: UpdateListener, clear: str) -> ApiKey:
    key = keys.authenticate(authorization=bearer(clear), cache=replica.keys)
    assert len(replica.keys) == 1
    return key


def test_with_redis_a_revoke_answers_once_every_replica_dropped_the_key(
        client: TestClient, session: Session, settings, admin_headers: dict,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch) -> None:
    if not redis_available():
        pytest.fail("Redis must be reachable for this test (127.0.0.1:6379)")
    monkeypatch.setattr(settings, "key_cache_ttl_s", 30.0)  # an answer well inside it came from the acks
    other = UpdateListener(ModelHolder(), settings)
    models.heartbeat(session, replica_id=other.replica_id, model_name=models.ANY_MODEL, version=None,
                     loaded_at=None)
    session.commit()
    threading.Thread(target=other._subscribe, daemon=True).start()
    try:
        deadline = time.monotonic() + 10
        while not keycache.await_dropped(key_id="probe", redis_url=settings.redis_url, live=[other.replica_id],
                                         ttl_s=0.5, committed_at=time.monotonic()):
            assert time.monotonic() < deadline, "the replica never subscribed"
        target = make_key(session, ["predict"], "to-revoke")
        key_id = cached_on(other, target).id
        started = time.monotonic()
        assert client.delete(f"/v1/keys/{key_id}", headers=admin_headers).status_code == 200
        assert time.monotonic() - started < 10
        with pytest.raises(Unauthorized):
            keys.authenticate(authorization=bearer(target), cache=other.keys)
        rotated = make_key(session, ["predict"], "to-rotate")
        key_id = cached_on(other, rotated).id
        started = time.monotonic()
        fresh = client.post(f"/v1/keys/{key_id}/rotate", headers=admin_headers).json()["key"]
        assert time.monotonic() - started < 10
        with pytest.raises(Unauthorized):
            keys.authenticate(authorization=bearer(rotated), cache=other.keys)
        assert keys.authenticate(authorization=bearer(fresh), cache=other.keys).id == key_id
    finally:
        other.stop()


def test_without_redis_a_revoke_answers_after_the_cache_ttl(
        client: TestClient, session: Session, settings, admin_headers: dict,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "redis_url", NO_REDIS)
    monkeypatch.setattr(settings, "key_cache_ttl_s", 0.8)
    other = UpdateListener(ModelHolder(), settings)  # the embedded default: no subscriber, TTL only
    target = make_key(session, ["predict"], "to-revoke")
    key_id = cached_on(other, target).id
    models.heartbeat(session, replica_id=other.replica_id, model_name=models.ANY_MODEL, version=None,
                     loaded_at=None)
    session.commit()
    started = time.monotonic()
    assert client.delete(f"/v1/keys/{key_id}", headers=admin_headers).status_code == 200
    assert time.monotonic() - started >= 0.8 * 0.9
    with pytest.raises(Unauthorized):
        keys.authenticate(authorization=bearer(target), cache=other.keys)


def test_a_revoke_with_no_live_replica_answers_at_once(
        client: TestClient, session: Session, settings, admin_headers: dict,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "redis_url", NO_REDIS)
    monkeypatch.setattr(settings, "key_cache_ttl_s", 30.0)
    key_id = keys.authenticate(authorization=bearer(make_key(session, ["predict"], "x"))).id
    started = time.monotonic()
    assert client.delete(f"/v1/keys/{key_id}", headers=admin_headers).status_code == 200
    assert time.monotonic() - started < 5
