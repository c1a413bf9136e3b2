"""Model holder and update listener of one API replica (DESIGN.md section 5).

Each replica holds one immutable ``Loaded`` snapshot per model. A swap loads the new
weights in a background thread, checks the artifact's sha256 and that the version is free
of every completed erasure, then replaces the reference in one assignment: requests that
already took the old snapshot finish on it, new ones get the new one, none fails.

Updates arrive on Redis pub/sub (channel ``lethe:model-updated``) and, as a fallback that
a missed message cannot defeat, by polling the DB every ``poll_interval_s``. The replica
heartbeats ``(replica, model, version, loaded_at)`` to the DB every
``heartbeat_interval_s``; the worker completes an erasure only when every live replica
reports a clean version. The same subscription carries API-key changes for the replica's key
cache (``app.services.access.keycache``), which it acks.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import select

from app.core.config import Settings
from app.core.db import session_scope
from app.core.errors import LetheError
from app.db.models import Model, utcnow
from app.ml.spec import ModelSpec
from app.ml.specs import get_spec
from app.services.access import keycache
from app.services.models import catalog as model_service

log = logging.getLogger("lethe.serving")
CHANNEL = "lethe:model-updated"


@dataclass(frozen=True)
class Loaded:
    name: str
    version: int
    spec: ModelSpec
    model: Any
    meta: dict[str, Any]
    sha256: str
    loaded_at: datetime


def publish_update(redis_url: str, name: str, version: int) -> bool:
    """Tell replicas a new version is serving. Best effort: replicas also poll the DB."""
    import redis

    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=0.5).publish(
            CHANNEL, f"{name}:{version}")
        return True
    except Exception:  # noqa: BLE001
        return False


class ModelHolder:
    def __init__(self) -> None:
        self._loaded: dict[str, Loaded] = {}

    def get(self, name: str) -> Loaded | None:
        return self._loaded.get(name)

    def swap(self, loaded: Loaded) -> None:
        # A dict item assignment is atomic under the GIL: readers see old or new, never half.
        self._loaded[loaded.name] = loaded

    def drop(self, name: str) -> None:
        self._loaded.pop(name, None)

    def versions(self) -> dict[str, int]:
        return {n: ld.version for n, ld in self._loaded.items()}


class UpdateListener:
    """Background threads: DB poll + Redis subscription -> load -> swap; heartbeats."""

    def __init__(self, holder: ModelHolder, settings: Settings, engine: Engine | None = None) -> None:
        self.holder, self.settings, self.engine = holder, settings, engine
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.expected: dict[str, int] = {}  # serving versions seen in the DB at the last sync
        self.last_sync: float | None = None  # time.monotonic() of the last successful sync
        self.keys = keycache.KeyCache(settings.key_cache_ttl_s)  # this replica's API keys, see keycache

    def start(self) -> None:
        for target in (self._run, self._subscribe):
            t = threading.Thread(target=target, name=f"lethe-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def ready(self) -> bool:
        return self.fresh() and all(  # ready with zero models too (production starts empty)
            self.holder.versions().get(n) == v for n, v in self.expected.items())

    def fresh(self) -> bool:
        """False when this replica has not confirmed the serving versions within the replica TTL.

        Such a replica has dropped out of the live set, so an erasure may have completed
        without it: it must not answer predictions until it has synced again.
        """
        import time

        return self.last_sync is not None and time.monotonic() - self.last_sync < self.settings.replica_ttl_s

    def _run(self) -> None:
        next_sync = 0.0
        import time

        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_sync or self._wake.is_set():
                self._wake.clear()
                try:
                    self.sync_once()
                except Exception:  # noqa: BLE001 - a DB blip must not kill the listener
                    log.warning("model sync failed; will retry", exc_info=True)
                next_sync = now + self.settings.poll_interval_s
            try:
                self.heartbeat()
            except Exception:  # noqa: BLE001
                log.warning("heartbeat failed; will retry", exc_info=True)
            self._wake.wait(self.settings.heartbeat_interval_s)

    def _subscribe(self) -> None:
        import redis

        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=1)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL, keycache.CHANNEL)
                self.keys.clear()  # key changes sent while we were not subscribed are lost to us
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=1.0)
                    if msg and msg["channel"] == keycache.CHANNEL.encode():
                        keycache.on_message(self.keys, msg["data"], replica_id=self.replica_id,
                                            publish=client.publish)
                    elif msg:
                        self._wake.set()
            except Exception:  # noqa: BLE001 - Redis absent or restarted: the DB poll covers us
                self.keys.clear()  # and the key cache's TTL: revokers wait it out without our ack
                self._stop.wait(5.0)

    def sync_once(self) -> list[str]:
        """Load every model whose DB serving version differs from ours. Returns swapped names."""
        with session_scope(self.engine) as session:
            rows = [m for m in session.exec(select(Model)).all() if m.serving_version is not None]
            wanted = {m.name: m.serving_version for m in rows}
            specs = {m.name: m.spec for m in rows}
            plans = []
            for name, number in wanted.items():
                current = self.holder.get(name)
                if current is not None and current.version == number:
                    continue
                version = model_service.get_version(session, name, number)
                taint = model_service.taint_of(session, version)
                if taint:
                    log.error("refusing to load %s v%s: it carries %d completed erasure(s)", name, number, len(taint))
                    continue
                plans.append((name, specs[name], number, version.artifact_path, version.sha256))
        self.expected = wanted
        swapped = []
        for name, spec_name, number, path, sha in plans:
            try:
                self.holder.swap(self.load(name, number, path, sha, spec_name=spec_name))
            except LetheError as exc:  # a broken plugin: this model is not served, the others are
                log.error("replica %s cannot load %s v%s: %s", self.replica_id, name, number, exc.detail)
                continue
            swapped.append(name)
            log.info("replica %s now serves %s v%s", self.replica_id, name, number)
        import time

        self.last_sync = time.monotonic()
        if swapped:
            self.heartbeat()
        return swapped

    @staticmethod
    def load(name: str, number: int, path: str, sha: str, *, spec_name: str) -> Loaded:
        from app.ml.checkpoint import load_checkpoint

        spec = get_spec(spec_name)
        model, meta, _info = load_checkpoint(path, spec, expected_sha256=sha, device="cpu")
        model.eval()
        return Loaded(name=name, version=number, spec=spec, model=model, meta=meta, sha256=sha, loaded_at=utcnow())

    def heartbeat(self) -> None:
        with session_scope(self.engine) as session:
            # The replica itself is live even with no model loaded (a new model's registration
            # waits for every live replica to serve it): a row under the reserved name "*".
            model_service.heartbeat(session, replica_id=self.replica_id, model_name=model_service.ANY_MODEL,
                                    version=None, loaded_at=None)
            for name, loaded in list(self.holder._loaded.items()):
                model_service.heartbeat(session, replica_id=self.replica_id, model_name=name,
                                        version=loaded.version, loaded_at=loaded.loaded_at)
            session.commit()
