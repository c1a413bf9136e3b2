"""The ``delta`` store (issue 18) on real Delta tables written by the tests in temporary directories:
registration pins a version, an erasure reaches the table (DELETE, then the physical purge), and
after the purge no table version and no file holds the person."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake
from sqlalchemy import delete
from sqlmodel import Session, select

from app.core.errors import Unprocessable
from app.core.security import subject_key
from app.data import delta, registry
from app.db.models import ErasureRequest, Model, ModelVersion, SourceErasure, SubjectRows, utcnow
from app.ml.specs import get_spec
from app.core.signing import get_keys
from app.services import audit
from app.services.integrations import source_erasure
from app.services.models import registration
from app.services.requests import certificates, erasure
from app.core import db
from workers import pipeline

SUBJECT = "toy-02"  # a train subject of the toy set
# The scenarios beyond registration and the main erasure run on SQLite only: the store's SQL is the
# same on both, and the suite's time is shared (both backends run the two main tests).
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def _rows(subjects: set[str] | None = None) -> pa.Table:
    ex = [e for e in get_spec("toy").load_examples() if subjects is None or e.subject_id in subjects]
    return pa.table({"user": [e.subject_id for e in ex], "x": [e.features["x"] for e in ex],
                     "label": [e.label for e in ex], "split": [e.split for e in ex]})


@pytest.fixture
def table(tmp_path: Path) -> str:
    uri = str(tmp_path / "interactions")
    write_deltalake(uri, _rows())
    return uri


def _register(session: Session, settings, uri: str, purge_after_s: float = 0.0) -> ModelVersion:  # noqa: ANN001
    config = {"store": "delta", "purge_after_s": purge_after_s,
              "source": {"uri": uri, "subject_column": "user", "split_column": "split"}}
    v = registration.register(session, name="toyd", spec="toy", secret=settings.subject_key_secret,
                              artifacts_dir=settings.artifacts_dir, device="cpu", config=config)
    session.commit()
    return v


@pytest.fixture
def worker(settings):  # noqa: ANN001, ANN201
    import torch

    return pipeline.Worker(settings=settings.model_copy(update={"job_lease_s": 3600, "deploy_timeout_s": 2}),
                           engine=None, device=torch.device("cpu"), owner="test-worker", sleep=lambda s: None)


def _erase(session: Session, settings, worker, subject: str = SUBJECT) -> ErasureRequest:  # noqa: ANN001
    req, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, subject),
                                    policy="retrain")
    session.commit()
    assert len(pipeline.drain(worker, "toyd")) == 1
    session.refresh(req)
    return req


def _rows_of(uri: str, subject: str, version: int | None = None) -> int:
    t = DeltaTable(uri, version=version).to_pyarrow_table()
    return sum(1 for u in t.column("user").to_pylist() if u == subject)


def _assert_gone_everywhere(uri: str, subject: str) -> None:
    """Every version either fails to load or holds none of their rows; no Parquet file holds a row
    of theirs (read directly); no file under the table holds their id at all (log statistics too)."""
    current = DeltaTable(uri).version()
    assert _rows_of(uri, subject) == 0
    for v in range(current):
        try:
            n = _rows_of(uri, subject, v)
        except Exception:  # noqa: BLE001 - vacuumed or cut from the log: cannot be read back
            continue
        assert n == 0, f"version {v} still holds {n} rows"
    files = [Path(r) / f for r, _, fs in os.walk(uri) for f in fs]
    parquet = [f for f in files if f.suffix == ".parquet" and "_delta_log" not in f.parts]
    assert parquet
    for f in parquet:
        assert subject not in pq.read_table(f, columns=["user"]).column("user").to_pylist()
    for f in files:
        assert subject.encode() not in f.read_bytes(), f"{f} holds the subject id"


def test_registration_pins_the_version_and_indexes_subjects_without_copying_rows(
        session: Session, settings, table: str) -> None:  # noqa: ANN001
    v1 = _register(session, settings, table)
    model = session.get(Model, "toyd")
    assert model.config["source"] == {"uri": table, "subject_column": "user", "split_column": "split", "version": 0}
    m = v1.manifest
    assert m["store"] == "delta" and m["uri"] == table and m["version"] == 0 and len(m["sha256"]) == 64
    assert m["rows"] == 240  # the toy set's train split
    key = subject_key(settings.subject_key_secret, SUBJECT)
    index = session.exec(select(SubjectRows).where(SubjectRows.model_name == "toyd")).all()
    assert len(index) == 40 and {r.subject_key for r in index if r.count == 10} >= {key}
    assert registry.holding(session, [key]) == {key: ["toyd"]}
    # An upstream append does not move what jobs read until a new version is pinned.
    write_deltalake(table, _rows({"toy-05"}), mode="append")
    live = registry.live(session, model, "train", set(), settings.data_dir)
    assert len(live) == 240 and all(len(e.features["x"]) == 16 for e in live.take([0, 239]))


@sqlite_only
def test_samples_sent_through_the_api_for_a_delta_model_are_a_409_and_change_nothing(
        session: Session, settings, table: str, client, admin_headers) -> None:  # noqa: ANN001
    _register(session, settings, table)
    before = sorted((r.subject_key, r.part, r.count) for r in session.exec(
        select(SubjectRows).where(SubjectRows.model_name == "toyd")).all())
    sample = {"features": {"x": [0.0] * 16}, "label": 1, "split": "train"}
    # a subject already indexed (would have doubled their count) and a new one (indexed, stored nowhere)
    for subject in (SUBJECT, "toy-new"):
        r = client.post(f"/v1/subjects/{subject}/samples", json={"model": "toyd", "samples": [sample]},
                        headers=admin_headers)
        assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "external_store" and "Delta table" in r.json()["detail"]
    line = b'{"subject_id": "toy-new", "features": {"x": [' + b",".join([b"0.0"] * 16) + b'], "label": 1}\n'
    r = client.post("/v1/models/toyd/samples", content=line,
                    headers={**admin_headers, "Content-Type": "application/x-ndjson"})
    assert r.status_code == 409 and r.json()["code"] == "external_store"
    session.expire_all()
    after = sorted((r.subject_key, r.part, r.count) for r in session.exec(
        select(SubjectRows).where(SubjectRows.model_name == "toyd")).all())
    assert after == before and len(after) == 40
    assert client.get("/v1/subjects/toy-new", headers=admin_headers).status_code == 404


def _drained(session: Session, settings, key: str) -> SourceErasure:  # noqa: ANN001
    """Drain the owed source erasures, then the subject's row as the database now has it."""
    source_erasure.drain(db.new_session, secret=settings.subject_key_secret)
    row = session.exec(select(SourceErasure).where(SourceErasure.subject_key == key)).one()
    session.refresh(row)
    return row


@sqlite_only
def test_a_source_without_the_subject_column_is_a_422_naming_it(
        session: Session, table: str, client, admin_headers) -> None:  # noqa: ANN001
    config = {"store": "delta", "source": {"uri": table, "subject_column": "customer", "split_column": None}}
    with pytest.raises(Unprocessable, match="'customer'"):
        registration.open_registration(session, name="toyd", spec="toy", config=config, weights=None,
                                       uploads_dir=Path("/nonexistent"), actor="test")
    r = client.post("/v1/models", json={"name": "toyd", "spec": "toy", "config": config}, headers=admin_headers)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert "'customer'" in r.json()["detail"] and "'user'" in r.json()["detail"]  # names it, lists the columns


def test_erasure_deletes_and_purges_every_version_and_file(
        session: Session, settings, table: str, worker, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    _register(session, settings, table)
    key = subject_key(settings.subject_key_secret, SUBJECT)
    real = delta.forget_examples

    def while_the_job_reads(*a, **k):  # noqa: ANN002, ANN003, ANN202 - an upstream writer appends mid-job
        rows = real(*a, **k)
        write_deltalake(table, _rows({"toy-05"}), mode="append")
        return rows

    monkeypatch.setattr(delta, "forget_examples", while_the_job_reads)
    assert _rows_of(table, SUBJECT, 0) == 10
    req = _erase(session, settings, worker)
    assert req.status == "completed"
    _assert_gone_everywhere(table, SUBJECT)
    assert _rows_of(table, "toy-05") == 20  # other people's rows, appended concurrently, are kept
    row = session.exec(select(SourceErasure).where(SourceErasure.subject_key == key)).one()
    assert row.status == "purged" and row.delete_version == 2
    assert row.files_removed == 1  # only the file that held them was rewritten (the appended one was not)
    assert req.result["source"]["deleted"]["table_version"] == 2 and req.result["source"]["purged"]["at"]
    cert = certificates.build(session, request_id=req.id, keys=get_keys(settings), issuer="test")["certificate"]
    [entry] = cert["data_sources"]
    assert entry["status"] == "purged" and entry["absent_after_version"] == 2 and entry["purged_at"]
    audit.sync(session)
    events = {e.type: e for e in audit.list_events(session, request_id=req.id, limit=100)}
    assert events["source_rows_deleted"].payload["table_version"] == 2
    assert events["source_purged"].payload["absent_after_version"] == 2
    for e in events.values():  # the clear subject id never enters the audit trail
        assert SUBJECT not in str(e.payload)
    # Re-pinned to what remains; the next version's data is read there (the appended rows included).
    model = session.get(Model, "toyd")
    session.refresh(model)
    assert model.config["source"]["version"] == DeltaTable(table).version()
    assert session.exec(select(SubjectRows).where(SubjectRows.subject_key == key)).all() == []
    assert session.exec(select(SubjectRows).where(SubjectRows.model_name == "toyd",
                                                  SubjectRows.subject_key == subject_key(
                                                      settings.subject_key_secret, "toy-05"))).one().count == 20
    assert audit.verify(session)["ok"]


@sqlite_only
def test_the_certificate_of_a_delta_erasure_is_served_over_http(
        session: Session, settings, table: str, worker, client, admin_headers) -> None:  # noqa: ANN001
    # QA: the response schema had no data_sources (nor models[].registries), so GET .../certificate
    # of every erasure of a delta (or published) model answered 500 (ResponseValidationError).
    _register(session, settings, table)
    req = _erase(session, settings, worker)
    assert req.status == "completed"
    r = client.get(f"/v1/erasure-requests/{req.id}/certificate", headers=admin_headers)
    assert r.status_code == 200, r.text
    doc = r.json()
    [entry] = doc["certificate"]["data_sources"]
    assert entry["model"] == "toyd" and entry["status"] == "purged" and entry["absent_after_version"]
    assert certificates.verify_certificate(doc, get_keys(settings).ed25519_public_pem)[0]


@sqlite_only
def test_a_crash_between_delete_and_purge_is_finished_by_the_next_drain(
        session: Session, settings, table: str, worker, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    _register(session, settings, table, purge_after_s=3600)
    real_repin, calls = source_erasure.repin, []

    def crash(*a, **k):  # noqa: ANN002, ANN003, ANN202 - the worker dies after the table's DELETE commit
        calls.append(1)
        raise RuntimeError("worker killed")

    monkeypatch.setattr(source_erasure, "repin", crash)
    assert _erase(session, settings, worker).status == "completed"  # the model's part is done either way
    assert calls and _rows_of(table, SUBJECT) == 0  # the table's DELETE committed, the DB did not record it
    key = subject_key(settings.subject_key_secret, SUBJECT)
    row = session.exec(select(SourceErasure).where(SourceErasure.subject_key == key)).one()
    assert row.status == "pending"
    monkeypatch.setattr(source_erasure, "repin", real_repin)
    source_erasure.drain(db.new_session, secret=settings.subject_key_secret)
    session.refresh(row)
    assert row.status == "pending"  # the dead drain's claim holds until its lease ends
    later = utcnow() + source_erasure.CLAIM_LEASE + timedelta(seconds=1)
    source_erasure.drain(db.new_session, secret=settings.subject_key_secret, now=later)
    session.refresh(row)
    assert row.status == "deleted"  # purge_after_s not over: the old versions still hold them
    assert _rows_of(table, SUBJECT, 0) == 10
    source_erasure.drain(db.new_session, secret=settings.subject_key_secret, now=utcnow() + timedelta(hours=2))
    session.refresh(row)
    assert row.status == "purged"
    _assert_gone_everywhere(table, SUBJECT)


@sqlite_only
def test_the_purge_is_capped_before_the_legal_deadline(session: Session, settings, table: str) -> None:  # noqa: ANN001
    _register(session, settings, table, purge_after_s=90 * 86400)
    key = subject_key(settings.subject_key_secret, SUBJECT)
    req, _ = erasure.create_request(session, subject_key=key)
    delta.schedule(session, session.get(Model, "toyd"), [key])
    row = session.exec(select(SourceErasure).where(SourceErasure.subject_key == key)).one()
    assert row.purge_not_before <= req.due_at - delta.PURGE_MARGIN
    session.rollback()


@sqlite_only
def test_an_index_row_a_concurrent_repin_brought_back_does_not_hold_the_delete_forever(
        session: Session, settings, table: str) -> None:  # noqa: ANN001
    # QA (PostgreSQL, a burst of 10 while earlier DELETEs repinned): a repin that read the index before
    # the completing job dropped the subjects wrote their rows back (deleted flag kept); _still_held
    # then saw the model "still holding" people whose erasure of it had completed: the rows stayed
    # pending for ever and the people stayed in the organisation's table.
    from app.db.models import ErasureTarget

    _register(session, settings, table)
    key = subject_key(settings.subject_key_secret, SUBJECT)
    req, _ = erasure.create_request(session, subject_key=key)
    model = session.get(Model, "toyd")
    delta.schedule(session, model, [key])
    for t in session.exec(select(ErasureTarget).where(ErasureTarget.request_id == req.id)).all():
        t.status = "done"  # the job completed the erasure for every model
        session.add(t)
    req.status = "completed"
    session.add(req)
    session.add(SubjectRows(model_name="toyd", subject_key=key, part=0, offset=0, count=10, deleted=True))
    session.commit()
    row = _drained(session, settings, key)
    assert row.status in ("deleted", "purged") and _rows_of(table, SUBJECT) == 0


@sqlite_only
def test_a_second_model_with_an_open_erasure_of_the_subject_defers_the_delete(
        session: Session, settings, table: str) -> None:  # noqa: ANN001
    from app.db.models import ErasureTarget

    _register(session, settings, table)
    registration.register(session, name="toyd2", spec="toy", secret=settings.subject_key_secret,
                          artifacts_dir=settings.artifacts_dir, device="cpu", config={
                              "store": "delta", "purge_after_s": 0.0,
                              "source": {"uri": table, "subject_column": "user", "split_column": "split"}})
    session.commit()
    key = subject_key(settings.subject_key_secret, SUBJECT)
    req, _ = erasure.create_request(session, subject_key=key)
    targets = {t.model_name: t for t in session.exec(select(ErasureTarget).where(ErasureTarget.request_id == req.id))}
    assert {"toyd", "toyd2"} <= set(targets)
    delta.schedule(session, session.get(Model, "toyd"), [key])
    targets["toyd"].status = "done"
    session.add(targets["toyd"])
    session.commit()
    row = _drained(session, settings, key)
    assert row.status == "pending" and _rows_of(table, SUBJECT) == 10  # toyd2 still owes its erasure
    session.execute(delete(SubjectRows).where(SubjectRows.model_name == "toyd2", SubjectRows.subject_key == key))
    targets["toyd2"].status = "done"
    session.add(targets["toyd2"])
    session.commit()
    source_erasure.drain(db.new_session, secret=settings.subject_key_secret)
    session.refresh(row)
    assert row.status in ("deleted", "purged") and _rows_of(table, SUBJECT) == 0


@sqlite_only
def test_an_unreachable_table_leaves_the_erasure_owed_and_retried(
        session: Session, settings, table: str) -> None:  # noqa: ANN001
    _register(session, settings, table)
    key = subject_key(settings.subject_key_secret, SUBJECT)
    erasure.create_request(session, subject_key=key)
    delta.schedule(session, session.get(Model, "toyd"), [key])
    session.commit()
    moved = table + ".offline"
    os.rename(table, moved)
    counts = source_erasure.drain(db.new_session, secret=settings.subject_key_secret)
    row = session.exec(select(SourceErasure).where(SourceErasure.subject_key == key)).one()
    session.refresh(row)
    assert counts["failed"] == 1 and row.status == "pending" and row.attempts == 1
    assert "cannot be read" in row.last_error and SUBJECT not in row.last_error
    assert source_erasure.owed(session)[0]["status"] == "pending"
    os.rename(moved, table)
    source_erasure.drain(db.new_session, secret=settings.subject_key_secret)
    session.refresh(row)
    assert row.status == "pending"  # backing off: not retried before not_before
    source_erasure.drain(db.new_session, secret=settings.subject_key_secret, now=utcnow() + timedelta(hours=1))
    session.refresh(row)
    assert row.status == "purged"
    _assert_gone_everywhere(table, SUBJECT)


@sqlite_only
def test_reingested_rows_are_never_trained_on_and_are_purged_again(
        session: Session, settings, table: str, worker) -> None:  # noqa: ANN001
    _register(session, settings, table)
    _erase(session, settings, worker)
    key = subject_key(settings.subject_key_secret, SUBJECT)
    write_deltalake(table, _rows({SUBJECT, "toy-05"}), mode="append")  # an upstream pipeline re-inserts them
    model = session.get(Model, "toyd")
    session.refresh(model)
    source_erasure.repin(session, model, DeltaTable(table), settings.subject_key_secret)  # a newer pin
    session.commit()
    live = registry.live(session, model, "train", set(), settings.data_dir)
    assert key not in {e.subject_id for e in live} and len(live) == 230  # 240 less theirs, the re-inserted too
    holdout = registry.live(session, model, "holdout", set(), settings.data_dir)
    assert len(holdout) == 80 + 10  # toy-05 (a holdout subject) appended once more: read at the new pin
    source_erasure.after_job(db.new_session, secret=settings.subject_key_secret)
    rows = session.exec(select(SourceErasure).where(SourceErasure.subject_key == key)
                        .order_by(SourceErasure.id)).all()
    assert [r.reason for r in rows] == ["erasure", "reingested"]
    session.refresh(rows[1])
    assert rows[1].status == "purged"
    _assert_gone_everywhere(table, SUBJECT)
    assert _rows_of(table, "toy-05") == 20
    audit.sync(session)
    types = [e.type for e in audit.list_events(session, type="source_reingested_rows_removed", limit=10)]
    assert types == ["source_reingested_rows_removed"]


def test_a_delete_that_conflicts_with_a_concurrent_writer_is_retried(
        table: str, settings, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from deltalake.exceptions import CommitFailedError

    real, tries = DeltaTable.delete, []

    def racing(self, predicate=None, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        tries.append(predicate)
        if len(tries) == 1:  # another writer commits first: this commit loses the race
            write_deltalake(table, _rows({"toy-05"}), mode="append")
            raise CommitFailedError("concurrent transaction")
        return real(self, predicate, *a, **k)

    monkeypatch.setattr(DeltaTable, "delete", racing)
    key = subject_key(settings.subject_key_secret, SUBJECT)
    version, deleted, present = delta.delete_rows(table, "user", {key}, settings.subject_key_secret,
                                                  sleep=lambda s: None)
    assert len(tries) == 2 and (version, deleted, present) == (2, 10, {key})
    assert _rows_of(table, SUBJECT) == 0 and _rows_of(table, "toy-05") == 20


@sqlite_only
def test_the_purge_delay_is_a_policy_setting_of_delta_models_only(
        session: Session, settings, table: str, toy_model, client, admin_headers) -> None:  # noqa: ANN001
    _register(session, settings, table, purge_after_s=60)
    assert client.get("/v1/models/toyd/policy", headers=admin_headers).json()["purge_after_s"] == 60
    r = client.put("/v1/models/toyd/policy", json={"purge_after_s": 7200}, headers=admin_headers)
    assert r.status_code == 200 and r.json()["purge_after_s"] == 7200
    assert delta.Source.of(session.get(Model, "toyd").config).purge_after_s == 7200
    r = client.put("/v1/models/toy/policy", json={"purge_after_s": 10}, headers=admin_headers)
    assert r.status_code == 422 and "delta store only" in r.json()["detail"]
    r = client.put("/v1/models/toyd/policy", json={"purge_after_s": -1}, headers=admin_headers)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")


@sqlite_only
def test_a_purge_delay_too_long_for_a_timedelta_is_refused_not_stored(
        session: Session, settings, table: str, toy_model, client, admin_headers) -> None:  # noqa: ANN001
    # QA: 1e300 or 1e999 (JSON for infinity) passed `ge=0` and was stored; the completing job's
    # timedelta(seconds=...) then raised OverflowError, so every erasure of the model failed.
    _register(session, settings, table, purge_after_s=60)
    for raw in ('{"purge_after_s": 1e300}', '{"purge_after_s": 1e999}'):
        r = client.put("/v1/models/toyd/policy", content=raw,
                       headers={**admin_headers, "content-type": "application/json"})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    session.expire_all()
    assert session.get(Model, "toyd").config["purge_after_s"] == 60
    r = client.put("/v1/models/toyd/policy", json={"purge_after_s": delta.MAX_PURGE_AFTER_S}, headers=admin_headers)
    assert r.status_code == 200 and r.json()["purge_after_s"] == delta.MAX_PURGE_AFTER_S
    for bad in (float("inf"), float("nan"), 1e300, delta.MAX_PURGE_AFTER_S + 1):
        with pytest.raises(Unprocessable):
            delta.Source.of({"store": "delta", "purge_after_s": bad,
                             "source": {"uri": table, "subject_column": "user"}})


@sqlite_only
def test_a_null_purge_delay_resets_it_to_the_default(
        session: Session, settings, table: str, toy_model, client, admin_headers) -> None:  # noqa: ANN001
    # PolicyBody: "null resets to the spec default"; purge_after_s: null was ignored (QA).
    _register(session, settings, table, purge_after_s=60)
    r = client.put("/v1/models/toyd/policy", json={"purge_after_s": None}, headers=admin_headers)
    assert r.status_code == 200 and r.json()["purge_after_s"] == delta.DEFAULT_PURGE_AFTER_S
    session.expire_all()
    assert delta.Source.of(session.get(Model, "toyd").config).purge_after_s == delta.DEFAULT_PURGE_AFTER_S
    r = client.put("/v1/models/toy/policy", json={"purge_after_s": None}, headers=admin_headers)
    assert r.status_code == 200 and r.json()["purge_after_s"] is None


@sqlite_only
def test_a_job_that_cannot_read_the_table_fails_and_the_erasure_stays_owed(
        session: Session, settings, table: str, worker) -> None:  # noqa: ANN001
    _register(session, settings, table)
    os.rename(table, table + ".offline")
    req = _erase(session, settings, worker)
    assert req.status == "queued" and req.stage == "retry_scheduled"  # retried with backoff, never dropped
    assert "cannot be read" in req.error and SUBJECT not in req.error


def _collect_peak(session: Session, model: Model, exclude: set[str], monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202
    """A job's reads of the pinned version (the subjects, the forget rows, the views), and the peak
    of Arrow memory their scans allocated."""
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    monkeypatch.setattr(delta, "POOL", pool)
    monkeypatch.setattr(delta, "_subjects", {})  # the scan of the subject column, counted too
    forget = delta.forget_examples(session, model, get_spec("toy"), sorted(exclude), "k")
    assert forget and {e.subject_id for e in forget} == exclude
    views = delta.live_views(session, model, get_spec("toy"), ("train", "test", "holdout"), exclude, "k")
    return views, pool.max_memory()


@sqlite_only
def test_a_jobs_views_hold_bits_not_rows_and_their_memory_does_not_grow_with_the_table(
        session: Session, settings, table: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Issue 18 item 2: a job's reads of 100k and of 200k rows peak at the same Arrow memory (about
    one row group: the forget rows decode the groups that hold them, one at a time), and its views keep
    one bit per row and split; reading every row back through a cache of one row group's size
    stays bounded too, and gives exactly the live rows of the split."""
    _register(session, settings, table)
    model = session.get(Model, "toyd")
    chunk = pa.concat_tables([_rows()] * 50)  # 20,000 rows per commit: one file, one row group
    gone = subject_key("k", SUBJECT)
    peaks, sizes = [], []
    for _ in range(2):
        for _ in range(5):
            write_deltalake(table, chunk, mode="append")
        t = delta.open_table(table)
        source_erasure.repin(session, model, t, "k")
        sizes.append(t.to_pyarrow_table().nbytes)
        views, peak = _collect_peak(session, model, {gone}, monkeypatch)
        peaks.append(peak)
        rows = sum(v.sizes[k] for v in views.values() for k in range(len(v.sizes))) // 3
        assert sum(b.nbytes for v in views.values() for b in v.bits) <= 3 * (rows // 8 + len(views["train"].bits))
    assert sizes[1] > 1.9 * sizes[0]
    assert peaks[1] <= 1.1 * peaks[0], peaks  # not proportional to the rows
    assert peaks[1] < min(3 * chunk.nbytes, sizes[0] / 2), (peaks, sizes)  # about a row group (forget rows)
    # Reading the whole train split back: one decoded row group at a time (the cache's budget).
    monkeypatch.setattr(delta, "CACHE_BYTES", 1)
    views, _ = _collect_peak(session, model, {gone}, monkeypatch)
    train = views["train"]
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    monkeypatch.setattr(delta, "POOL", pool)
    seen = [(e.subject_id, e.features["x"][0]) for e in train]
    assert pool.max_memory() < min(3 * chunk.nbytes, sizes[1] / 4), (pool.max_memory(), chunk.nbytes)
    full = delta.open_table(table).to_pyarrow_table()
    expected = [(subject_key("k", u), x[0]) for u, x, s in zip(full.column("user").to_pylist(),
                full.column("x").to_pylist(), full.column("split").to_pylist(), strict=True)
                if s == "train" and u != SUBJECT]
    assert len(train) == len(seen) == len(expected) and sorted(seen) == sorted(expected)
    assert train.take([len(train) - 1, 0]) == [train[-1], train[0]]
