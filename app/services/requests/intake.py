"""Group commit for erasure intake: many concurrent requests, one transaction.

Each intake must be durable before its 202 (nothing acknowledged is ever lost), and on
PostgreSQL most of an intake's time is round trips and the commit's WAL flush, not work. So a
replica funnels its native intake through a few writer threads (``LETHE_INTAKE_WRITERS``, so
one batch is written while another waits for its commit): a writer takes every request
that is waiting (up to ``LETHE_INTAKE_BATCH_MAX``), records them all with
:func:`app.services.requests.erasure.create_requests` in a fixed number of statements, commits once,
and only then releases each caller. Under no load a batch is one request and nothing waits; under
load the batch grows by itself while the previous commit is in flight (no timer, no added
latency), the same trick databases use for their own log.

A batch that fails in the database before its commit (say a concurrent insert of the same
Idempotency-Key by another replica) is rolled back and its items are retried one by one, each in
its own transaction, so one bad request never fails its neighbours. A failed COMMIT is not
retried: its outcome is unknown, and only the caller's retry with its Idempotency-Key is safe.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from app.core import db
from app.core.errors import LetheError, Unavailable
from app.services.requests import erasure

log = logging.getLogger("lethe.intake")


@dataclass
class Accepted:
    """What the route answers with, built before the commit (no reload after it)."""

    view: dict[str, Any]
    created: bool
    enqueue: list[str]  # models to send to the queue, after the commit


def _describe(session: Any, result: erasure.Intake, base_url: str) -> Accepted:
    targets = result.targets if result.targets is not None else erasure.targets_of(session, result.request.id)
    view = erasure.public_view(result.request, targets, base_url)
    enqueue = sorted({t.model_name for t in targets if t.status == "queued"}) if result.created else []
    return Accepted(view, result.created, enqueue)


class GroupCommitter:
    """``writers`` writer threads per process, started on first use: while one waits on the
    database for its commit, the next gathers and writes the following batch."""

    def __init__(self, *, base_url: str, max_batch: int, writers: int = 2,
                 session_factory: Callable[[], Any] | None = None) -> None:
        self.base_url, self.max_batch = base_url, max(1, max_batch)
        self._session = session_factory or (lambda: db.new_session())
        self._queue: queue.Queue[tuple[erasure.IntakeItem, Future[Accepted]]] = queue.Queue()
        self.writers = max(1, writers)
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self.batches = 0  # for tests and metrics: how many transactions carried intake
        self.largest_batch = 0

    def submit(self, item: erasure.IntakeItem, timeout: float = 60.0) -> Accepted:
        """Record ``item``; returns once its transaction has committed (or raises its error)."""
        self._ensure_started()
        fut: Future[Accepted] = Future()
        self._queue.put((item, fut))
        try:
            return fut.result(timeout=timeout)
        except FutureTimeout:
            raise Unavailable("Intake is overloaded; retry with the same Idempotency-Key (a retry never "
                              "creates a second request).", code="intake_overloaded",
                              headers={"Retry-After": "5"}) from None

    def _ensure_started(self) -> None:
        if len(self._threads) == self.writers and all(t.is_alive() for t in self._threads):
            return
        with self._start_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            while len(self._threads) < self.writers:
                t = threading.Thread(target=self._run, name=f"lethe-intake-{len(self._threads)}", daemon=True)
                t.start()
                self._threads.append(t)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._commit(batch)
            except BaseException:  # noqa: BLE001 - never let the writer die with callers waiting
                log.exception("intake writer failed")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(RuntimeError("intake writer failed"))

    @contextlib.contextmanager
    def _scope(self) -> Iterator[Any]:
        """A session whose close never raises: after a commit, a connection that died must not
        turn recorded requests into errors (the ROLLBACK on close has nothing left to undo)."""
        s = self._session()
        try:
            yield s
        finally:
            with contextlib.suppress(Exception):
                s.close()

    def _commit(self, batch: list[tuple[erasure.IntakeItem, Future[Accepted]]]) -> None:
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        with self._scope() as s:
            try:
                results = erasure.create_requests(s, [item for item, _ in batch])
                answers = [r if isinstance(r, LetheError) else _describe(s, r, self.base_url) for r in results]
            except Exception:  # noqa: BLE001 - nothing committed: retry one by one, each with its own outcome
                with contextlib.suppress(Exception):  # a dead connection has nothing to roll back
                    s.rollback()
                if len(batch) > 1:
                    log.info("intake batch of %d failed; retrying its items one by one", len(batch))
                for item, fut in batch:
                    try:
                        fut.set_result(self._one(item))
                    except Exception as exc:  # noqa: BLE001
                        fut.set_exception(exc)
                return
            try:
                s.commit()
            except Exception as exc:  # noqa: BLE001
                # The COMMIT's outcome is unknown (the connection may have died after the server
                # committed): never replay the batch here, or a request without an
                # Idempotency-Key could be recorded twice. Each caller gets the error (a 503);
                # its retry with the same key replays the request if it was recorded.
                for _, fut in batch:
                    fut.set_exception(exc)
                return
        for (_, fut), answer in zip(batch, answers, strict=True):
            if isinstance(answer, LetheError):
                fut.set_exception(answer)
            else:
                fut.set_result(answer)

    def _one(self, item: erasure.IntakeItem) -> Accepted:
        with self._scope() as s:
            req, created = erasure.create_request(s, **vars(item))
            answer = _describe(s, erasure.Intake(req, created, None), self.base_url)
            s.commit()
            return answer


_committers: dict[tuple[str, int, int], GroupCommitter] = {}
_lock = threading.Lock()


def committer(*, base_url: str, max_batch: int, writers: int) -> GroupCommitter:
    with _lock:
        key = (base_url, max_batch, writers)
        if key not in _committers:
            _committers[key] = GroupCommitter(base_url=base_url, max_batch=max_batch, writers=writers)
        return _committers[key]
