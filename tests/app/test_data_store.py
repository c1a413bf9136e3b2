"""Data at scale (issue 9): the columnar store, bulk JSON Lines ingest, and version manifests."""

from __future__ import annotations

import json

import pytest
import torch
from sqlmodel import Session, select

from app.core.security import subject_key
from app.data import columnar, registry
from app.db.models import ErasureRequest, Model, ModelVersion, Sample, SubjectRows
from app.services.models import registration
from app.services.requests import erasure
from workers import pipeline


@pytest.fixture
def worker(settings):  # noqa: ANN001, ANN201
    return pipeline.Worker(settings=settings.model_copy(update={"job_lease_s": 3600, "deploy_timeout_s": 2}),
                           engine=None, device=torch.device("cpu"), owner="test-worker", sleep=lambda s: None)


@pytest.fixture
def columnar_toy(session: Session, settings):  # noqa: ANN001, ANN201
    version = registration.register(session, name="toy-col", spec="toy", secret=settings.subject_key_secret,
                                    artifacts_dir=settings.artifacts_dir, device="cpu", config={"store": "columnar"})
    session.commit()
    yield version
    for path in columnar.model_dir(settings.data_dir, "toy-col").glob("*.arrow"):
        path.unlink()


def test_columnar_model_keeps_rows_in_parts_and_an_index(session: Session, settings, columnar_toy) -> None:  # noqa: ANN001
    assert session.exec(select(Sample).where(Sample.model_name == "toy-col")).all() == []
    index = session.exec(select(SubjectRows).where(SubjectRows.model_name == "toy-col")).all()
    assert len({r.subject_key for r in index}) == 40 and sum(r.count for r in index) == 400
    assert columnar_toy.manifest["store"] == "columnar" and len(columnar_toy.manifest["sha256"]) == 64
    model = session.get(Model, "toy-col")
    view = registry.live(session, model, "train", set(), settings.data_dir)
    assert len(view) == columnar_toy.manifest["rows"] == 240
    assert [e.subject_id for e in view][:5] == [view[i].subject_id for i in range(5)]  # iteration == indexing
    key = subject_key(settings.subject_key_secret, "toy-02")
    assert key not in {e.subject_id for e in registry.live(session, model, "train", {key}, settings.data_dir)}


def test_erasure_on_a_columnar_model_purges_its_rows(session: Session, settings, columnar_toy, worker) -> None:  # noqa: ANN001
    key = subject_key(settings.subject_key_secret, "toy-02")
    req, _ = erasure.create_request(session, subject_key=key)
    session.commit()
    assert req.status == "queued"  # held by the columnar model
    assert pipeline.drain(worker, "toy-col")
    session.expire_all()
    assert session.get(ErasureRequest, req.id).status == "completed"
    assert columnar.forget_examples(session, settings.data_dir, "toy-col", [key]) == []
    assert session.exec(select(SubjectRows).where(SubjectRows.subject_key == key)).all() == []
    parts = [columnar._open(p) for p in columnar.model_dir(settings.data_dir, "toy-col").glob("*.arrow")]
    assert sum(t.num_rows for t in parts) == 390 and all(key not in t["subject_key"].to_pylist() for t in parts)
    v2 = session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy-col", ModelVersion.number == 2)).one()
    assert v2.manifest["rows"] == 230 and v2.manifest["sha256"] != columnar_toy.manifest["sha256"]
    again, _ = erasure.create_request(session, subject_key=key)
    assert again.status == "completed" and again.result["already_erased_by"] == req.id


def test_row_store_manifest_is_order_independent_and_content_sensitive() -> None:
    from app.ml.spec import Example

    rows = [Example(f"s{i}", "train", {"x": [float(i)]}, i % 2) for i in range(50)]
    a = registry.rows_manifest(rows)
    assert a == registry.rows_manifest(list(reversed(rows))) and a["rows"] == 50
    changed = [*rows[:-1], Example("s49", "train", {"x": [0.5]}, 1)]
    assert registry.rows_manifest(changed)["sha256"] != a["sha256"]


def _lines(*items: dict) -> bytes:
    return "".join(json.dumps(i) + "\n" for i in items).encode()


@pytest.mark.parametrize("store", ["rows", "columnar"])
def test_bulk_ingest_streams_all_or_nothing(client, admin_headers, session, settings, store) -> None:  # noqa: ANN001
    registration.register(session, name=f"bulk-{store}", spec="toy", secret=settings.subject_key_secret,
                          artifacts_dir=settings.artifacts_dir, device="cpu", config={"store": store})
    session.commit()
    x = {"x": [0.1] * 16}
    good = _lines(*({"subject_id": f"new-{i % 7}", "features": x, "label": i % 4} for i in range(30)),
                  {"subject_id": "new-8", "features": x, "label": 1, "split": "holdout"})
    headers = {**admin_headers, "Content-Type": "application/x-ndjson"}
    r = client.post(f"/v1/models/bulk-{store}/samples", content=good, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json() | {"lines": 0} == {"model": f"bulk-{store}", "store": store, "ingested": 31, "subjects": 8,
                                      "refused_suppressed": 0, "lines": 0}
    key = subject_key(settings.subject_key_secret, "new-3")
    assert f"bulk-{store}" in registry.holding(session, [key])[key]
    bad = _lines({"subject_id": "new-9", "features": x, "label": 0}, {"subject_id": "new-9", "features": {"x": [1]},
                                                                       "label": 0})
    r = client.post(f"/v1/models/bulk-{store}/samples", content=bad, headers=headers)
    assert r.status_code == 422 and r.json()["code"] == "invalid_sample" and r.json()["errors"][0]["line"] == 2
    assert registry.holding(session, [subject_key(settings.subject_key_secret, "new-9")]) == {}
    erasure.create_request(session, subject_key=key)
    session.commit()
    r = client.post(f"/v1/models/bulk-{store}/samples", content=_lines({"subject_id": "new-3", "features": x,
                                                                         "label": 0}), headers=headers)
    assert r.json()["ingested"] == 0 and r.json()["refused_suppressed"] == 1
    for path in columnar.model_dir(settings.data_dir, f"bulk-{store}").glob("*.arrow"):
        path.unlink()


def test_methods_stream_a_columnar_retain_set(session: Session, settings, columnar_toy, monkeypatch) -> None:  # noqa: ANN001
    """finetune reads only the batches it draws; the exact retrain streams the view too (no list copy)."""
    from app.ml import data
    from app.ml.checkpoint import load_checkpoint
    from app.ml.specs import get_spec
    from app.ml.train import evaluate
    from workers.unlearning import get_method
    from workers.unlearning.base import UnlearnContext

    spec = get_spec("toy")
    model = session.get(Model, "toy-col")
    view = registry.live(session, model, "train", set(), settings.data_dir)
    served, meta, _ = load_checkpoint(columnar_toy.artifact_path, spec, expected_sha256=columnar_toy.sha256)
    assert isinstance(data.make_loader(spec, meta, view, batch_size=8, shuffle=True).dataset, data.LazyBatches)
    read: list[int] = []
    real_take = columnar.LiveView.take
    monkeypatch.setattr(columnar.LiveView, "take", lambda self, idx: (read.extend(idx), real_take(self, idx))[1])
    ctx = UnlearnContext(spec=spec, model=served, meta=meta, forget=[], retain=view, forget_subject_ids=[],
                         recipe=spec.recipe, device="cpu", config={"steps": 3})
    get_method("finetune")(ctx)
    assert 0 < len(read) <= 3 * spec.recipe.batch_size  # three batches, not the set
    result = get_method("retrain")(ctx)
    assert len(read) >= spec.recipe.epochs * len(view)  # every epoch streamed from the parts
    test = list(registry.live(session, model, "test", set(), settings.data_dir))
    assert evaluate(spec, result.model, result.meta, test, device="cpu") > 0.4
