"""Exact erasure of a model with a declared public backbone (issue 20): only the head is retrained,
on the per-sample feature cache; no method moves the public parameters. For both demo specs built
this way: ``wdbc_head`` (a seeded random backbone, all 569 patients) and ``sotu`` (the pretrained
all-MiniLM-L6-v2 from its wheel; a small slice of the paragraphs, as each row costs a transformer pass)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app.ml import policy, public
from app.ml.specs import get_spec
from app.ml.train import train_from_scratch
from workers.unlearning import METHODS, get_method
from workers.unlearning.base import UnlearnContext

SPECS = ("wdbc_head", "sotu")
FEW_STEPS = {"finetune": {"steps": 3}, "neggrad_plus": {"steps": 3}, "salun": {"steps": 3},
             "scrub": {"cycles": 1, "max_cycles": 1, "retain_steps": 2}, "ssd": {"repair_steps": 2},
             "reinit_repair": {"cycles": 1, "steps_per_cycle": 3}}


def slice_of(name: str, per_split: tuple[int, int, int] = (6, 3, 3), per_subject: int = 4) -> list:
    """The spec's examples; for ``sotu`` ``per_subject`` paragraphs of the first (by name) 6 training,
    3 test and 3 holdout presidents (names mix the eras)."""
    examples = get_spec(name).load_examples()
    if name != "sotu":
        return examples
    wanted = dict(zip(("train", "test", "holdout"), per_split))
    chosen = {split: set(sorted({e.subject_id for e in examples if e.split == split})[:n])
              for split, n in wanted.items()}
    taken: dict[str, int] = {}
    out = []
    for e in examples:
        if e.subject_id in chosen[e.split] and taken.get(e.subject_id, 0) < per_subject:
            taken[e.subject_id] = taken.get(e.subject_id, 0) + 1
            out.append(e)
    return out


@pytest.fixture(scope="module", params=SPECS)
def sets(request):
    spec = get_spec(request.param)
    examples = slice_of(request.param)
    train = [e for e in examples if e.split == "train"]
    forget_ids = sorted({e.subject_id for e in train})[:3 if spec.name != "sotu" else 2]
    return spec, {
        "train": train,
        "forget": [e for e in train if e.subject_id in forget_ids],
        "retain": [e for e in train if e.subject_id not in forget_ids],
        "test": [e for e in examples if e.split == "test"],
        "ids": forget_ids,
        "recipe": dataclasses.replace(spec.recipe, epochs=4),
    }


@pytest.fixture(scope="module")
def served(sets):
    spec, s = sets
    return train_from_scratch(spec, s["train"], device="cpu", seed=0, recipe=s["recipe"])


def _ctx(spec, model, meta, s, method_seed=5, config=None):
    return UnlearnContext(spec=spec, model=model, meta=meta, forget=s["forget"], retain=s["retain"],
                          forget_subject_ids=[], recipe=s["recipe"], device="cpu", seed=method_seed,
                          config=config or {}, calibration=s["test"])


def test_head_retrain_on_the_cache_equals_a_head_trained_without_the_subjects(sets, tmp_path) -> None:
    spec, s = sets
    cache = tmp_path / "features"
    served, meta = train_from_scratch(spec, s["train"], device="cpu", seed=0, recipe=s["recipe"], feature_cache=cache)
    assert meta["public"]["cache"] == str(cache) and any(cache.rglob("*.safetensors"))
    result = get_method("retrain")(_ctx(spec, served, meta, s))
    scratch, _ = train_from_scratch(spec, s["retain"], device="cpu", seed=5, recipe=s["recipe"])  # no cache
    for (name, a), b in zip(result.model.state_dict().items(), scratch.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.allclose(result.model.head[0].weight, served.head[0].weight)  # re-initialised, not tuned
    assert result.meta["public"]["sha256"] == meta["public"]["sha256"]


@pytest.mark.parametrize("name", sorted(n for n in policy.METHODS if n not in ("sisa", "amnesiac")))
def test_no_method_moves_the_public_parameters(sets, served, name) -> None:
    spec, s = sets
    served, meta = served
    before = public.public_sha256(served, ["backbone."])
    config = {"steps": 20} if name in ("finetune", "neggrad_plus", "salun") else {}
    if spec.name == "sotu":  # every step runs the transformer: a few steps show what moves
        config = FEW_STEPS.get(name, {})
    result = get_method(name)(_ctx(spec, served, meta, s, config=config))
    assert public.public_sha256(result.model, ["backbone."]) == before == meta["public"]["sha256"]
    assert public.public_sha256(served, ["backbone."]) == before


def test_a_method_that_moves_them_is_refused(sets, served, monkeypatch) -> None:
    spec, s = sets
    served, meta = served

    def bad(ctx):
        from workers.unlearning.base import finish, working_copy

        model, m = working_copy(ctx)
        with torch.no_grad():
            next(p for p in model.backbone.parameters()).add_(0.01)
        return finish(ctx, model, m)

    monkeypatch.setitem(METHODS, "bad", dataclasses.replace(METHODS["finetune"], name="bad", fn=bad))
    with pytest.raises(public.PublicParametersChanged):
        get_method("bad")(_ctx(spec, served, meta, s))


def _row_digests(path) -> tuple[int, int]:
    """(rows, sum of their sha256(sample key + feature bytes) mod 2**256) of one subject's cache file."""
    import hashlib

    from safetensors.torch import load_file

    total, rows = 0, 0
    for key, row in load_file(path).items():
        total += int.from_bytes(hashlib.sha256(key.encode() + row.contiguous().numpy().tobytes()).digest(), "big")
        rows += 1
    return rows, total % (1 << 256)


@pytest.mark.parametrize("backend", ["postgresql"])  # the pipeline on both DBs is tested elsewhere
@pytest.mark.parametrize("spec_name", SPECS)
def test_an_erasure_deletes_the_subjects_cached_features_and_retrains_the_head(session, settings, spec_name,
                                                                            monkeypatch) -> None:  # noqa: ANN001
    from sqlmodel import select

    from app.core.security import subject_key
    from app.data.feature_cache import FeatureCache, directory
    from app.db.models import ErasureRequest, ModelVersion
    from app.ml.checkpoint import read_meta
    from app.services.models import registration
    from app.services.requests import erasure
    from workers import pipeline

    examples = slice_of(spec_name, per_split=(8, 3, 3), per_subject=3)
    monkeypatch.setattr(type(get_spec(spec_name)), "load_examples", lambda self: list(examples))
    train_ids = sorted({e.subject_id for e in examples if e.split == "train"})
    registration.register_demo_model(session, name="pub", spec=spec_name, secret=settings.subject_key_secret,
                                     artifacts_dir=settings.artifacts_dir, device="cpu")
    session.commit()
    v1 = session.exec(select(ModelVersion).where(ModelVersion.model_name == "pub")).one()
    meta = read_meta(v1.artifact_path)
    cache = FeatureCache(directory(settings.data_dir, "pub"), meta["public"]["sha256"])
    assert meta["public"]["cache"] == str(directory(settings.artifacts_dir.parent, "pub"))
    gone = subject_key(settings.subject_key_secret, train_ids[1])  # training subjects
    kept = subject_key(settings.subject_key_secret, train_ids[2])
    assert cache.path(gone).exists() and cache.path(kept).exists()  # warmed by the first training
    # The version's manifest names the cache its head trained from: every training row, this backbone.
    n_train = sum(1 for e in examples if e.split == "train")
    assert v1.manifest["feature_cache"]["backbone"] == meta["public"]["sha256"]
    assert (v1.manifest["feature_cache"]["rows"], v1.manifest["feature_cache"]["missing"]) == (n_train, 0)
    gone_rows, gone_sum = _row_digests(cache.path(gone))
    assert gone_rows == sum(1 for e in examples if e.subject_id == train_ids[1] and e.split == "train")
    req, _ = erasure.create_request(session, subject_key=gone, policy="retrain")
    session.commit()
    w = pipeline.Worker(settings=settings.model_copy(update={"job_lease_s": 3600, "deploy_timeout_s": 2}),
                        engine=None, device=torch.device("cpu"), owner="test-worker", sleep=lambda s: None)
    assert len(pipeline.drain(w, "pub")) == 1
    session.refresh(req := session.get(ErasureRequest, req.id))
    assert req.status == "completed", req.error
    assert req.result["models"]["pub"]["method"] == "retrain"
    assert not cache.path(gone).exists() and cache.path(kept).exists()
    v2 = session.exec(select(ModelVersion).where(ModelVersion.model_name == "pub", ModelVersion.number == 2)).one()
    assert read_meta(v2.artifact_path)["public"]["sha256"] == meta["public"]["sha256"]
    # v2 trained from exactly v1's cached rows less the erased person's.
    fc = v2.manifest["feature_cache"]
    assert (fc["rows"], fc["missing"]) == (n_train - gone_rows, 0)
    assert int(fc["sha256"], 16) == (int(v1.manifest["feature_cache"]["sha256"], 16) - gone_sum) % (1 << 256)
