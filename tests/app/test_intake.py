"""Group-committed intake: a batch of requests in one transaction and a fixed number of
statements, each item with its own outcome; a failed batch retried item by item."""

from __future__ import annotations

import contextlib

import threading

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from app.core import db
from app.core.errors import Conflict
from app.core.security import subject_key
from app.db.models import AuditEvent, ErasureRequest, ErasureTarget, Suppression
from app.services.requests import erasure, intake


def item(settings, subject: str, **kw) -> erasure.IntakeItem:  # noqa: ANN001
    return erasure.IntakeItem(subject_key=subject_key(settings.subject_key_secret, subject), **kw)


def statements(session: Session, fn) -> list[str]:  # noqa: ANN001
    seen: list[str] = []
    engine = session.get_bind().engine
    listener = lambda *a: seen.append(a[2].lstrip().split(" (")[0].split("\n")[0].strip())  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        fn()
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    return [s for s in seen if not s.upper().startswith(("SAVEPOINT", "RELEASE"))]


def test_a_batch_records_every_item_with_its_own_outcome(session: Session, settings, toy_model) -> None:  # noqa: ANN001
    items = [item(settings, "toy-02", idempotency_key="a"), item(settings, "nobody"),
             item(settings, "toy-02", idempotency_key="a"),  # the same key again: replays the first
             item(settings, "toy-07", idempotency_key="a"),  # the key reused for someone else: refused
             item(settings, "toy-03", identity_verified=False)]
    out = erasure.create_requests(session, items)
    session.commit()
    first, nobody, replay, reused, pending = out
    assert first.created and first.request.status == "queued" and [t.model_name for t in first.targets] == ["toy"]
    assert nobody.created and nobody.request.status == "no_data" and nobody.targets == []
    assert not replay.created and replay.request.id == first.request.id
    assert isinstance(reused, Conflict) and reused.code == "idempotency_key_reused"
    assert pending.request.status == "awaiting_identity"
    assert len(session.exec(select(ErasureRequest)).all()) == 3
    suppressed = {s.subject_key for s in session.exec(select(Suppression)).all()}
    assert suppressed == {items[0].subject_key, items[1].subject_key}  # not the unverified one
    assert [t.request_id for t in session.exec(select(ErasureTarget)).all()] == [first.request.id]
    types = [e.type for e in session.exec(select(AuditEvent).where(AuditEvent.request_id == first.request.id)
                                          .order_by(AuditEvent.id)).all()]
    assert sorted(types) == ["erasure_queued", "erasure_requested"]


def test_statements_per_batch_do_not_grow_with_its_size(session: Session, settings, backend: str,
                                                         toy_model) -> None:  # noqa: ANN001
    def batch(n: int, tag: str) -> list[str]:
        items = [item(settings, f"toy-{i % 10:02d}" if i % 2 else f"{tag}-{i}") for i in range(n)]
        return statements(session, lambda: erasure.create_requests(session, items))

    small, large = batch(2, "small"), batch(40, "large")
    if backend == "postgresql":  # round trips: every table's rows go in one multi-row INSERT
        assert len(small) == len(large) <= 6, large
    else:  # SQLite is in-process (no round trips); its driver inserts autoincrement rows one by one
        assert large.count("INSERT INTO erasurerequest") == 1, large
        assert sum(s.startswith("SELECT sample.subject_key") for s in large) == 1, large


def test_concurrent_submissions_share_transactions(session: Session, settings, toy_model) -> None:  # noqa: ANN001
    n, queued = 12, threading.Event()
    gate = {"first": True}

    def session_factory() -> Session:
        if gate["first"]:  # hold the first transaction until every caller is waiting
            gate["first"] = False
            assert queued.wait(30)
        return db.new_session()

    gc = intake.GroupCommitter(base_url="http://t", max_batch=64, writers=1, session_factory=session_factory)
    answers: list[intake.Accepted] = []
    threads = [threading.Thread(target=lambda i=i: answers.append(gc.submit(item(settings, f"s-{i}"))))
               for i in range(n)]
    threads[0].start()
    while gc._queue.qsize() or gate["first"]:  # the writer took the first item
        threading.Event().wait(0.01)
    for t in threads[1:]:
        t.start()
    while gc._queue.qsize() < n - 1:
        threading.Event().wait(0.01)
    queued.set()
    for t in threads:
        t.join(30)
    assert len(answers) == n and all(a.created and a.view["status"] == "no_data" for a in answers)
    assert (gc.batches, gc.largest_batch) == (2, n - 1)
    assert len(session.exec(select(ErasureRequest)).all()) == n


def test_a_failed_batch_is_retried_item_by_item(session: Session, settings, toy_model,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    real = erasure.create_requests

    def flaky(s: Session, items: list) -> list:  # noqa: ANN001
        if len(items) > 1:
            raise IntegrityError("INSERT", {}, Exception("a concurrent insert won"))
        return real(s, items)

    monkeypatch.setattr(erasure, "create_requests", flaky)
    gc = intake.GroupCommitter(base_url="http://t", max_batch=64, writers=1)
    batch = [(item(settings, "toy-02", idempotency_key="k"), intake.Future()),
             (item(settings, "toy-07", idempotency_key="k"), intake.Future())]
    gc._commit(batch)
    ok, refused = (f for _, f in batch)
    assert ok.result().created and ok.result().enqueue == ["toy"]
    with pytest.raises(Conflict):
        refused.result()
    assert len(session.exec(select(ErasureRequest)).all()) == 1


@pytest.fixture
def own_engine(backend: str, tmp_path):  # noqa: ANN001, ANN201
    """A database of this test only, with real concurrent connections (not the rolled-back one)."""
    from app.core.db import create_schema, make_engine
    from tests.conftest import fresh_pg_database

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_pg_database()) if backend == "postgresql" else f"sqlite:///{tmp_path / 'i.db'}"
        engine = make_engine(url)
        stack.callback(engine.dispose)
        create_schema(engine)
        yield engine


@pytest.mark.parametrize("writers", [1, 2])
def test_one_idempotency_key_sent_at_once_is_one_request(own_engine, settings, writers: int) -> None:  # noqa: ANN001
    """Issue 8: the same key within one batch, across writer threads and across replicas (two
    committers on one database): one request, replayed to every caller, never an error."""
    committers = [intake.GroupCommitter(base_url="http://t", max_batch=64, writers=writers,
                                        session_factory=lambda: Session(own_engine)) for _ in range(2)]
    n, answers, errors = 24, [], []
    start = threading.Barrier(n)

    def send(i: int) -> None:
        start.wait()
        try:
            answers.append(committers[i % 2].submit(item(settings, "someone", idempotency_key="same-key")))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(answers) == n
    assert len({a.view["id"] for a in answers}) == 1 and sum(a.created for a in answers) == 1
    with Session(own_engine) as s:
        assert len(s.exec(select(ErasureRequest)).all()) == 1
