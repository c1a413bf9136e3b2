"""Crash-consistent completion (issue 23): a failure injected at each step of completion, on the
row, columnar and SISA paths, on SQLite and PostgreSQL (the ``session`` fixture's backends).

One model per test takes one erasure per crash point. After each crash: every other subject's
rows read back exactly as before (per-subject content hashes, read through the index), no row
points at a missing file, and every version the database calls rollback-eligible has its files.
After the retry (a re-delivered job, as the reconciler would send) and one reconciler pass: the
erasure completed, the subject's rows are gone, nothing is left on the to-delete list and no
orphan survives.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from app.core import db
from app.core.security import subject_key
from app.data import columnar, registry
from app.db.models import ErasureRequest, Model, ModelVersion, Sample, SubjectRows
from app.ml.checkpoint import companion_dirs, file_sha256, read_meta
from app.services.models import jobs, registration
from app.services.requests import erasure
from app.services.storage import deletions, orphans
from workers import pipeline
from workers.reconcile import reconcile_files


class Crash(BaseException):
    """A simulated kill: nothing in the pipeline catches it, the open transaction is lost."""


# Toy subjects with training rows (toy-00, -01, -05, -06 are holdout/test only: nothing to purge).
TRAINED = ["toy-02", "toy-03", "toy-04", "toy-07", "toy-08", "toy-09", "toy-12"]
# name -> (where it fires, what it simulates)
POINTS = {
    "part_written": "columnar: the new part is on disk, the index not yet changed (kill)",
    "index_updated": "the store's purge is done in the session, nothing committed (kill)",
    "commit_failed": "the rows' purge committed (issue 18: before the completion, so that the database can be "
                     "compacted first); the completion fully staged, its commit never happens (kill before COMMIT)",
    "commit_db_error": "the completion's commit fails with a dropped connection (the worker waits and resumes)",
    "purge_committed": "the purge committed; killed before its files are drained, the database compacted and the "
                       "requests completed",
    "committed": "the completion committed; killed before the to-delete list is drained",
    "first_deletion": "the purge committed; killed right after the first file is deleted, before its entry goes",
}
STORES = {
    "rows": {},
    "columnar": {"store": "columnar"},
    "sisa": {"training": {"sisa": {"shards": 2, "slices": 2}}},
}


@contextlib.contextmanager
def inject(point: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Arm one crash point; yields a list that records it when it fired."""
    fired: list[str] = []
    with monkeypatch.context() as m:
        if point == "part_written":
            real_write = columnar._write

            def write(path: Path, table) -> None:  # noqa: ANN001
                real_write(path, table)
                fired.append(point)
                raise Crash(point)

            m.setattr(columnar, "_write", write)
        elif point == "index_updated":
            real_purge = registry.purge

            def purge(*a, **k) -> int:  # noqa: ANN002, ANN003
                n = real_purge(*a, **k)
                fired.append(point)
                raise Crash(point)

            m.setattr(registry, "purge", purge)
        elif point in ("commit_failed", "commit_db_error"):
            real_complete = jobs.complete_job

            def complete(*a, **k) -> None:  # noqa: ANN002, ANN003
                real_complete(*a, **k)
                if fired:  # once: the resumed attempt goes through
                    return
                fired.append(point)
                if point == "commit_failed":
                    raise Crash(point)
                raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"),
                                       connection_invalidated=True)

            m.setattr(jobs, "complete_job", complete)
        elif point in ("purge_committed", "committed"):
            real_drain, calls = deletions.drain, []

            def drain(*a, **k) -> list[str]:  # noqa: ANN002, ANN003
                calls.append(1)  # the first drain follows the purge's commit, the second the completion's
                if fired or len(calls) < (1 if point == "purge_committed" else 2):
                    return real_drain(*a, **k)
                fired.append(point)
                raise Crash(point)

            m.setattr(deletions, "drain", drain)
        elif point == "first_deletion":
            real_remove = deletions.remove_path

            def remove(path: str) -> None:
                real_remove(path)
                fired.append(point)
                raise Crash(point)

            m.setattr(deletions, "remove_path", remove)
        yield fired


def subject_hashes(session: Session, model: Model, root: Path) -> dict[str, str]:
    """subject key -> sha256 of their rows as the store reads them back (the index's offsets
    for the columnar store: a part rewritten under a stale index reads other people's rows)."""
    rows: dict[str, list[str]] = {}
    if registry.store_of(model) == "columnar":
        keys = sorted(set(session.exec(select(SubjectRows.subject_key).where(SubjectRows.model_name == model.name)).all()))
        for key in keys:  # attributed to the key the index files them under
            rows[key] = [json.dumps([e.subject_id, e.split, e.label, e.features], sort_keys=True)
                         for e in columnar.forget_examples(session, root, model.name, [key])]
    else:
        for s in session.exec(select(Sample).where(Sample.model_name == model.name)).all():
            rows.setdefault(s.subject_key, []).append(json.dumps([s.subject_key, s.split, s.label, s.features],
                                                                 sort_keys=True))
    return {k: hashlib.sha256("\n".join(sorted(v)).encode()).hexdigest() for k, v in rows.items()}


def assert_consistent(session: Session, model: Model, root: Path, before: dict[str, str], gone: set[str]) -> None:
    session.expire_all()
    now = subject_hashes(session, model, root)
    assert {k: v for k, v in now.items() if k not in gone} == {k: v for k, v in before.items() if k not in gone}
    for part in columnar.referenced_parts(session, model.name):  # no index row points at a missing file
        assert columnar._part_path(root, model.name, part).exists(), part
    for v in session.exec(select(ModelVersion).where(ModelVersion.model_name == model.name,
                                                     ModelVersion.state != "purged")).all():
        assert Path(v.artifact_path).exists() and file_sha256(v.artifact_path) == v.sha256, v.number
        assert all(d.is_dir() for d in companion_dirs(read_meta(v.artifact_path))), v.number


def store_files(root: Path, model_name: str) -> set[Path]:
    return {p.resolve() for folder in (columnar.model_dir(root, model_name), root / "artifacts" / model_name)
            if folder.is_dir() for p in folder.iterdir()}


@pytest.mark.parametrize("store", list(STORES))
def test_completion_survives_a_crash_at_every_step(store: str, session: Session, settings, tmp_path: Path,  # noqa: ANN001
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    w = pipeline.Worker(settings=settings.model_copy(update={"data_dir": tmp_path, "job_lease_s": 3600,
                                                             "deploy_timeout_s": 2, "db_outage_wait_s": 5}),
                        engine=None, device=torch.device("cpu"), owner="crash-test", sleep=lambda s: None)
    name = f"crash-{store}"
    registration.register(session, name=name, spec="toy", secret=settings.subject_key_secret,
                           artifacts_dir=w.settings.artifacts_dir, device="cpu", config=STORES[store])
    session.commit()
    model = session.get(Model, name)
    before = subject_hashes(session, model, tmp_path)
    assert len(before) == 40
    points = [p for p in POINTS if p != "part_written" or store == "columnar"]
    gone: set[str] = set()
    for i, point in enumerate(points):
        key = subject_key(settings.subject_key_secret, TRAINED[i])
        req, _ = erasure.create_request(session, subject_key=key, policy="finetune")
        session.commit()
        with inject(point, monkeypatch) as fired:
            with contextlib.suppress(Crash):
                pipeline.drain(w, name)
        assert fired == [point], f"crash point {point} did not fire"
        rolled_back = point in ("part_written", "index_updated")
        # The crash broke nothing; before the purge's commit, the subject's own rows are all still there too.
        assert_consistent(session, model, tmp_path, before, gone if rolled_back else gone | {key})
        left = deletions.pending(session)  # files the crash left on the to-delete list
        pipeline.drain(w, name)  # the retry: the job is resumed (re-delivery / reconciler)
        report = reconcile_files(w, older_than_s=0)
        gone.add(key)
        session.expire_all()
        assert session.get(ErasureRequest, req.id).status == "completed", point
        assert key not in subject_hashes(session, model, tmp_path), point
        assert_consistent(session, model, tmp_path, before, gone)
        assert deletions.pending(session) == [], point
        assert orphans.find(session, data_dir=tmp_path, artifacts_dir=w.settings.artifacts_dir, older_than_s=0) == []
        if point in ("part_written", "committed", "first_deletion"):  # the crash left work, the retry and
            assert left or report["orphans"], f"{point}: the crash left nothing to clean up"  # reconciler did it
    # What is left on disk is exactly what the database references.
    referenced = {columnar._part_path(tmp_path, name, p).resolve() for p in columnar.referenced_parts(session, name)}
    live, dirs = orphans.live_files(session, name)
    assert store_files(tmp_path, name) == referenced | live | dirs
    assert len(session.exec(select(ModelVersion).where(ModelVersion.model_name == name,
                                                       ModelVersion.state != "purged")).all()) == 1



def test_two_drainers_of_one_list_both_finish(session: Session, tmp_path: Path) -> None:
    """The pipeline and the reconciler may drain at once: a file or an entry already gone is fine."""
    files = [tmp_path / f"f{i}" for i in range(3)]
    for f in files:
        f.write_text("x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "inner").write_text("x")
    deletions.schedule_all(session, [*files, tmp_path / "d"], reason="test")
    session.commit()
    inner: list[list[str]] = []

    def remove_then_race(path: str) -> None:
        deletions.remove_path(path)
        if not inner:  # a second drainer runs between this file's removal and its entry's
            inner.append(deletions.drain(db.new_session, remove=deletions.remove_path))

    done = deletions.drain(db.new_session, remove=remove_then_race)
    assert sorted(done) == sorted(str(p.resolve()) for p in [*files, tmp_path / "d"])
    assert len(inner[0]) == 4 and not any(p.exists() for p in [*files, tmp_path / "d"])
    assert deletions.pending(session) == []


def test_orphans_are_found_only_once_old_enough_and_never_while_an_ingest_may_be_writing(
        session: Session, tmp_path: Path) -> None:
    import os
    import time

    session.add(Model(name="orph", spec="toy", config={"store": "columnar"}))
    session.commit()
    cols, arts = columnar.model_dir(tmp_path, "orph"), tmp_path / "artifacts" / "orph"
    for d in (cols, arts / "sisa-abc"):
        d.mkdir(parents=True)
    made = [cols / "part-00000.arrow", cols / "part-00001.tmp", arts / "v7.safetensors", arts / ".v8.safetensors.x.tmp"]
    for p in made:
        p.write_bytes(b"x")
    (arts / "notes.txt").write_text("not ours")  # an unknown file is left alone
    find = lambda grace: orphans.find(session, data_dir=tmp_path, artifacts_dir=tmp_path / "artifacts",  # noqa: E731
                                      older_than_s=grace)
    assert find(3600) == []  # all young
    assert find(0) == sorted(p.resolve() for p in [*made, arts / "sisa-abc"])
    old = time.time() - 7200
    for p in [*made[1:], arts / "sisa-abc"]:
        os.utime(p, (old, old))
    # One young part in the columnar folder (an ingest under way): none of that folder is an orphan yet.
    assert find(3600) == sorted(p.resolve() for p in [made[2], made[3], arts / "sisa-abc"])
