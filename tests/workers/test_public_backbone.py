"""Exact erasure of a model with a declared public backbone (issue 20): only the head is retrained,
on the per-sample feature cache; no method moves the public parameters."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app.ml import policy, public
from app.ml.specs import get_spec
from app.ml.train import train_from_scratch
from workers.unlearning import METHODS, get_method
from workers.unlearning.base import UnlearnContext

SHORT = dataclasses.replace(get_spec("wdbc_head").recipe, epochs=4)


@pytest.fixture(scope="module")
def sets():
    spec = get_spec("wdbc_head")
    examples = spec.load_examples()
    train = [e for e in examples if e.split == "train"]
    forget_ids = sorted({e.subject_id for e in train})[:3]
    return spec, {
        "train": train,
        "forget": [e for e in train if e.subject_id in forget_ids],
        "retain": [e for e in train if e.subject_id not in forget_ids],
        "test": [e for e in examples if e.split == "test"],
        "ids": forget_ids,
    }


def _ctx(spec, model, meta, s, method_seed=5, config=None):
    return UnlearnContext(spec=spec, model=model, meta=meta, forget=s["forget"], retain=s["retain"],
                          forget_subject_ids=[], recipe=SHORT, device="cpu", seed=method_seed,
                          config=config or {}, calibration=s["test"])


def test_head_retrain_on_the_cache_equals_a_head_trained_without_the_subjects(sets, tmp_path) -> None:
    spec, s = sets
    cache = tmp_path / "features"
    served, meta = train_from_scratch(spec, s["train"], device="cpu", seed=0, recipe=SHORT, feature_cache=cache)
    assert meta["public"]["cache"] == str(cache) and any(cache.rglob("*.safetensors"))
    result = get_method("retrain")(_ctx(spec, served, meta, s))
    scratch, _ = train_from_scratch(spec, s["retain"], device="cpu", seed=5, recipe=SHORT)  # no cache
    for (name, a), b in zip(result.model.state_dict().items(), scratch.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.allclose(result.model.head[0].weight, served.head[0].weight)  # re-initialised, not tuned
    assert result.meta["public"]["sha256"] == meta["public"]["sha256"]


@pytest.mark.parametrize("name", sorted(n for n in policy.METHODS if n not in ("sisa", "amnesiac")))
def test_no_method_moves_the_public_parameters(sets, name) -> None:
    spec, s = sets
    served, meta = train_from_scratch(spec, s["train"], device="cpu", seed=0, recipe=SHORT)
    before = public.public_sha256(served, ["backbone."])
    config = {"steps": 20} if name in ("finetune", "neggrad_plus", "salun") else {}
    result = get_method(name)(_ctx(spec, served, meta, s, config=config))
    assert public.public_sha256(result.model, ["backbone."]) == before == meta["public"]["sha256"]
    assert public.public_sha256(served, ["backbone."]) == before


def test_a_method_that_moves_them_is_refused(sets, monkeypatch) -> None:
    spec, s = sets
    served, meta = train_from_scratch(spec, s["train"], device="cpu", seed=0, recipe=SHORT)

    def bad(ctx):
        from workers.unlearning.base import finish, working_copy

        model, m = working_copy(ctx)
        with torch.no_grad():
            model.backbone.net[0].bias += 0.01
        return finish(ctx, model, m)

    monkeypatch.setitem(METHODS, "bad", dataclasses.replace(METHODS["finetune"], name="bad", fn=bad))
    with pytest.raises(public.PublicParametersChanged):
        get_method("bad")(_ctx(spec, served, meta, s))


@pytest.mark.parametrize("backend", ["postgresql"])  # the pipeline on both DBs is tested elsewhere
def test_an_erasure_deletes_the_subjects_cached_features_and_retrains_the_head(session, settings) -> None:  # noqa: ANN001
    from sqlmodel import select

    from app.core.security import subject_key
    from app.data.feature_cache import FeatureCache, directory
    from app.db.models import ErasureRequest, ModelVersion
    from app.ml.checkpoint import read_meta
    from app.services.models import registration
    from app.services.requests import erasure
    from workers import pipeline

    registration.register_demo_model(session, name="wdbc", spec="wdbc_head", secret=settings.subject_key_secret,
                                     artifacts_dir=settings.artifacts_dir, device="cpu")
    session.commit()
    v1 = session.exec(select(ModelVersion).where(ModelVersion.model_name == "wdbc")).one()
    meta = read_meta(v1.artifact_path)
    cache = FeatureCache(directory(settings.data_dir, "wdbc"), meta["public"]["sha256"])
    assert meta["public"]["cache"] == str(directory(settings.artifacts_dir.parent, "wdbc"))
    gone = subject_key(settings.subject_key_secret, "patient-0002")  # a training patient
    kept = subject_key(settings.subject_key_secret, "patient-0003")
    assert cache.path(gone).exists() and cache.path(kept).exists()  # warmed by the first training
    req, _ = erasure.create_request(session, subject_key=gone, policy="retrain")
    session.commit()
    w = pipeline.Worker(settings=settings.model_copy(update={"job_lease_s": 3600, "deploy_timeout_s": 2}),
                        engine=None, device=torch.device("cpu"), owner="test-worker", sleep=lambda s: None)
    assert len(pipeline.drain(w, "wdbc")) == 1
    session.refresh(req := session.get(ErasureRequest, req.id))
    assert req.status == "completed", req.error
    assert req.result["models"]["wdbc"]["method"] == "retrain"
    assert not cache.path(gone).exists() and cache.path(kept).exists()
    v2 = session.exec(select(ModelVersion).where(ModelVersion.model_name == "wdbc", ModelVersion.number == 2)).one()
    assert read_meta(v2.artifact_path)["public"]["sha256"] == meta["public"]["sha256"]
