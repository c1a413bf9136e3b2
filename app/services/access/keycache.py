"""A replica's short-lived cache of API keys, dropped on revoke/rotate by Redis pub/sub, with acks.

Authenticating every request against the DB costs a session and a SELECT per request (predict
included). Each serving replica (``UpdateListener``) keeps the keys it authenticated for at most
``key_cache_ttl_s``. The promise stays what it was without a cache: once ``DELETE /v1/keys/{id}``
or ``POST .../rotate`` has answered, no replica accepts the old secret. It holds because the
revoking request does not answer before every replica dropped the key or the TTL ran out:

1. after its commit, it publishes ``<nonce> <key id>`` on ``lethe:api-keys-changed``;
2. each replica's listener, subscribed with the model-update channel (same thread, same
   reconnect loop), drops the key and publishes ``<nonce> <replica id>`` on ``lethe:api-keys-ack``;
3. the revoker waits for an ack from every live replica (heartbeat table); without all of them
   (Redis absent, as in the embedded default, a replica's subscription down, a lost message) it
   waits until ``key_cache_ttl_s`` has passed since the commit, when every cached copy has expired.

A replica clears its whole cache whenever its subscription (re)starts or fails, and a lookup that
raced a drop is not cached (``generation``), so an entry never outlives a revocation it missed.
Only valid keys are cached: an unknown or revoked key still costs a DB lookup every time.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable

from app.db.models import ApiKey

log = logging.getLogger("lethe.keys")
CHANNEL = "lethe:api-keys-changed"
ACK_CHANNEL = "lethe:api-keys-ack"


class KeyCache:
    """key digest -> (detached ``ApiKey``, expiry on the monotonic clock). Thread-safe."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[ApiKey, float]] = {}
        self._lock = threading.Lock()
        self.generation = 0  # bumped by every drop and clear: a lookup older than that is not cached

    def get(self, digest: str) -> ApiKey | None:
        hit = self._entries.get(digest)
        if hit is None:
            return None
        if hit[1] <= time.monotonic():
            with self._lock:
                self._entries.pop(digest, None)
            return None
        return hit[0]

    def put(self, digest: str, key: ApiKey, *, generation: int, looked_up_at: float) -> None:
        """Cache ``key`` unless a drop or clear happened since ``generation`` was read; both it and
        ``looked_up_at`` (monotonic) are taken before the DB lookup, so the entry expires no later than
        ``ttl_s`` after any revoke that lookup did not see had committed."""
        if self.ttl_s <= 0:
            return
        with self._lock:
            if generation == self.generation:
                self._entries[digest] = (key, looked_up_at + self.ttl_s)

    def drop(self, key_id: str) -> None:
        with self._lock:
            self.generation += 1
            for digest in [d for d, (k, _) in self._entries.items() if k.id == key_id]:
                del self._entries[digest]

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def on_message(cache: KeyCache, data: bytes | str, *, replica_id: str, publish) -> None:  # noqa: ANN001
    """A replica's listener got a key change: drop the key, then ack with the nonce."""
    text = data.decode() if isinstance(data, bytes) else data
    nonce, _, key_id = text.partition(" ")
    cache.drop(key_id)
    publish(ACK_CHANNEL, f"{nonce} {replica_id}")


def await_dropped(*, key_id: str, redis_url: str, live: Iterable[str], ttl_s: float, committed_at: float) -> bool:
    """Return once every live replica dropped ``key_id`` (True), or once ``ttl_s`` has passed since
    ``committed_at`` (monotonic) so every cached copy has expired (False). Call after the commit."""
    deadline = committed_at + ttl_s
    waiting = set(live)
    if waiting and time.monotonic() < deadline:
        try:
            waiting = _collect_acks(key_id=key_id, redis_url=redis_url, waiting=waiting, deadline=deadline)
        except Exception:  # noqa: BLE001 - Redis absent or failing: the TTL bounds every cache
            log.info("key change of %s not confirmed over Redis; waiting out the key cache TTL", key_id)
    if not waiting:
        return True
    time.sleep(max(0.0, deadline - time.monotonic()))
    return False


def _collect_acks(*, key_id: str, redis_url: str, waiting: set[str], deadline: float) -> set[str]:
    import redis

    nonce = uuid.uuid4().hex
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(ACK_CHANNEL)
        # Publish only once Redis confirmed the subscription (another connection): no ack is lost.
        while (msg := pubsub.get_message(timeout=0.5)) is None or msg["type"] != "subscribe":
            if msg is None:
                raise TimeoutError("no subscribe confirmation")
        client.publish(CHANNEL, f"{nonce} {key_id}")
        while waiting and (left := deadline - time.monotonic()) > 0:
            msg = pubsub.get_message(timeout=min(left, 0.25))
            if msg and msg["type"] == "message":
                got, _, replica_id = msg["data"].decode().partition(" ")
                if got == nonce:
                    waiting.discard(replica_id)
    finally:
        pubsub.close()
        client.close()
    return waiting
