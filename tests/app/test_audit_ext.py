"""Audit API completion: streamed export, signed checkpoints outside the DB (truncation),
pagination under concurrent appends, GDPR deadline warnings and the deadline gauge."""

from __future__ import annotations

import csv
import io
import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete
from sqlmodel import Session, select

from app.core.db import create_schema, make_engine
from app.db.models import AuditEvent, ErasureRequest, utcnow
from app.services import audit
from app.services.requests import deadlines
from tests.conftest import fresh_pg_database, make_key


@pytest.fixture
def checkpoints(settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: ANN001
    path = tmp_path / "audit-checkpoints.jsonl"
    monkeypatch.setattr(settings, "audit_checkpoint_path", path)
    return path


def add_events(client: TestClient, headers: dict, n: int) -> None:
    for i in range(n):  # each no-data request appends two events
        assert client.post("/v1/erasure-requests", json={"subject_id": f"nobody-{i}"}, headers=headers).status_code \
            == 202


def test_export_jsonl_and_csv_stream_the_filtered_chain(client: TestClient, admin_headers: dict,
                                                        session: Session) -> None:
    add_events(client, admin_headers, 3)
    auditor = {"Authorization": f"Bearer {make_key(session, ['audit:read'], 'auditor')}"}
    r = client.get("/v1/audit/export", params={"format": "jsonl"}, headers=auditor)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert [e["seq"] for e in rows] == list(range(1, len(rows) + 1)) and len(rows) == 6
    assert all(rows[i]["prev_hash"] == rows[i - 1]["hash"] for i in range(1, len(rows)))
    c = client.get("/v1/audit/export", params={"format": "csv", "type": "erasure_completed"}, headers=auditor)
    table = list(csv.DictReader(io.StringIO(c.text)))
    assert c.headers["content-type"].startswith("text/csv") and len(table) == 3
    assert {t["type"] for t in table} == {"erasure_completed"}
    assert json.loads(table[0]["payload"]) == {"status": "no_data"}
    # Small batches stream the same content.
    lines = "".join(audit.export(lambda: session, format="jsonl", batch=2)).splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [e["seq"] for e in rows]
    assert client.get("/v1/audit/export", params={"format": "xml"}, headers=auditor).status_code == 422
    writer = {"Authorization": f"Bearer {make_key(session, ['erasure:write'], 'w')}"}
    assert client.get("/v1/audit/export", headers=writer).status_code == 403


def test_checkpoint_detects_deleted_tail_and_middle(client: TestClient, admin_headers: dict, session: Session,
                                                    settings, checkpoints: Path) -> None:  # noqa: ANN001
    from workers.housekeeping import audit_checkpoint

    add_events(client, admin_headers, 3)
    assert audit_checkpoint() == 6  # the beat task: signed head appended to the file
    assert audit_checkpoint() is None  # head unchanged: nothing appended
    cp = json.loads(checkpoints.read_text().splitlines()[-1])
    assert cp["size"] == 6 and cp["alg"] == "Ed25519" and cp["signature"]
    report = client.get("/v1/audit/verify", headers=admin_headers).json()
    assert report["ok"] is True and report["truncated"] is False and report["checkpoint"]["size"] == 6
    assert report["head"]["size"] == 6
    # Delete the last event: the chain itself is still consistent, only the checkpoint shows the loss.
    session.exec(delete(AuditEvent).where(AuditEvent.seq == 6))
    session.commit()
    assert audit.verify(session)["ok"] is True
    report = client.get("/v1/audit/verify", headers=admin_headers).json()
    assert report["ok"] is False and report["truncated"] is True and "checkpoint" in report["reason"]
    # Deleting a middle event is a broken link even without a checkpoint.
    session.exec(delete(AuditEvent).where(AuditEvent.seq == 3))
    session.commit()
    report = client.get("/v1/audit/verify", headers=admin_headers).json()
    assert report["ok"] is False and report["first_broken_seq"] == 4
    # A forged checkpoint line (no valid signature) is not trusted.
    checkpoints.write_text(json.dumps({**cp, "size": 2}) + "\n")
    report = client.get("/v1/audit/verify", headers=admin_headers).json()
    assert report["ok"] is False and report["checkpoint_valid"] is False


def test_rewritten_chain_fails_the_checkpoint(client: TestClient, admin_headers: dict, session: Session,
                                              settings, checkpoints: Path) -> None:  # noqa: ANN001
    """Rebuild the whole chain with valid hashes (an attacker with DB access): only the checkpoint notices."""
    from app.core.signing import get_keys

    add_events(client, admin_headers, 2)
    audit.sync(session)
    audit.write_checkpoint(session, keys=get_keys(settings), path=checkpoints)
    rows = session.exec(select(AuditEvent).order_by(AuditEvent.seq)).all()
    prev = audit.GENESIS
    for ev in rows:
        if ev.seq == 2:
            ev.payload = {**ev.payload, "models": ["forged"]}
        ev.prev_hash, ev.hash = prev, ""
        ev.hash = audit.chain_hash(prev, ev)
        prev = ev.hash
    session.exec(delete(AuditEvent))
    session.flush()
    for ev in rows:
        session.add(AuditEvent(**ev.model_dump()))
    session.commit()
    assert audit.verify(session)["ok"] is True
    report = client.get("/v1/audit/verify", headers=admin_headers).json()
    assert report["ok"] is False and report["truncated"] is True


def test_pagination_under_concurrent_appends_returns_each_event_once() -> None:
    """Writers append unchained events while two sequencers chain them and a reader pages with the seq cursor."""
    with fresh_pg_database("lethe_pag") as url:
        engine = make_engine(url)
        create_schema(engine)
        writers, per_writer = 4, 40

        def write(w: int) -> None:
            for i in range(per_writer):
                with Session(engine) as s:
                    audit.append(s, type="test_event", actor=f"writer-{w}", payload={"i": i})
                    s.commit()

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        done = threading.Event()

        def sequence() -> None:
            while not done.is_set():
                with Session(engine) as s:
                    audit.sync(s)

        sequencers = [threading.Thread(target=sequence) for _ in range(2)]
        for t in threads + sequencers:
            t.start()
        seen: list[int] = []
        cursor = 0
        while True:
            with Session(engine) as s:
                page = audit.list_events(s, after_seq=cursor, limit=7)
            seen += [e.seq for e in page]
            cursor = page[-1].seq if page else cursor
            if not page and not any(t.is_alive() for t in threads):
                done.set()
                for t in sequencers:
                    t.join()
                with Session(engine) as s:  # one last look after the writers finished
                    audit.sync(s)
                    page = audit.list_events(s, after_seq=cursor, limit=1000)
                    report = audit.verify(s)
                seen += [e.seq for e in page]
                break
        for t in threads:
            t.join()
        engine.dispose()
    assert seen == list(range(1, writers * per_writer + 1))
    assert report["ok"] and report["events"] == writers * per_writer and report["pending"] == 0


def test_deadline_warning_once_at_80_percent_and_gauge(client: TestClient, admin_headers: dict, session: Session,
                                                        toy_model) -> None:  # noqa: ANN001
    rid = client.post("/v1/erasure-requests", json={"subject_id": "toy-02"}, headers=admin_headers).json()["id"]
    req = session.get(ErasureRequest, rid)
    now = utcnow()
    assert deadlines.check(session, now=now) == []  # fresh: nothing to warn about
    req.received_at, req.due_at = now - timedelta(days=25), now + timedelta(days=5)
    session.add(req)
    session.commit()
    assert deadlines.check(session, now=now) == [rid]
    session.commit()
    assert deadlines.check(session, now=now) == []  # audited once, not on every run
    session.commit()
    assert deadlines.open_by_bucket(session, now=now)["3-7"] >= 1
    overdue = client.get("/v1/erasure-requests", params={"overdue": "true"}, headers=admin_headers).json()
    assert rid not in [r["id"] for r in overdue["items"]]
    req.due_at = now - timedelta(days=1)
    session.add(req)
    session.commit()
    overdue = client.get("/v1/erasure-requests", params={"overdue": "true"}, headers=admin_headers).json()
    assert rid in [r["id"] for r in overdue["items"]]
    audit.sync(session)
    assert [e.type for e in audit.list_events(session, request_id=rid, type=deadlines.EVENT)] == [deadlines.EVENT]
