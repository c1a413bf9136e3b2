"""Declared public parameters (issue 20, app/ml/public.py) on the ``wdbc_head`` demo spec: a frozen
public backbone from a published seed, a head trained on real patients."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save as save_safetensors

from app.data.feature_cache import FeatureCache, directory, drop
from app.ml import public
from app.ml.checkpoint import INFO_KEY, load_checkpoint, read_header, save_checkpoint
from app.ml.specs import get_spec
from app.ml.train import backbone_features, train_from_scratch

SHORT = dataclasses.replace(get_spec("wdbc_head").recipe, epochs=3)  # the loop, not the fit, is under test


@pytest.fixture(scope="module")
def spec():
    return get_spec("wdbc_head")


@pytest.fixture(scope="module")
def train(spec):
    return [e for e in spec.load_examples() if e.split == "train"]


def test_training_keeps_the_backbone_as_published_and_records_its_hash(spec, train) -> None:
    model, meta = train_from_scratch(spec, train, device="cpu", seed=3, recipe=SHORT)
    torch.manual_seed(99)  # the public part does not depend on the global seed
    fresh = spec.build(meta)
    assert meta["public"]["prefixes"] == ["backbone."] and "20261206" in meta["public"]["source"]
    assert meta["public"]["sha256"] == public.public_sha256(fresh, ["backbone."])
    for (name, p), q in zip(model.backbone.named_parameters(), fresh.backbone.parameters()):
        assert torch.equal(p, q), name
        assert not p.requires_grad
    assert not torch.equal(model.head[0].weight, fresh.head[0].weight)  # the head did train


def test_a_version_whose_public_parameters_changed_is_refused(spec, train, tmp_path) -> None:
    model, meta = train_from_scratch(spec, train, device="cpu", seed=0, recipe=SHORT)
    path = tmp_path / "v1.safetensors"
    save_checkpoint(path, model, meta, {"method": "train"})
    load_checkpoint(path, spec)  # the honest version loads
    with torch.no_grad():
        model.backbone.net[0].weight[0, 0] += 1e-3
    with pytest.raises(public.PublicParametersChanged, match="refused"):
        save_checkpoint(tmp_path / "v2.safetensors", model, meta, {"method": "finetune"})
    assert not (tmp_path / "v2.safetensors").exists()
    # Written behind Lethe's back (same header, edited backbone): loading refuses it.
    header = read_header(path.read_bytes())
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    (tmp_path / "v3.safetensors").write_bytes(save_safetensors(tensors, metadata=header))
    with pytest.raises(public.PublicParametersChanged):
        load_checkpoint(tmp_path / "v3.safetensors", spec)
    assert json.loads(header[INFO_KEY])["method"] == "train"


def test_feature_cache_serves_what_the_backbone_computes_and_drops_a_subject(spec, train, tmp_path) -> None:
    model, meta = train_from_scratch(spec, train, device="cpu", seed=0, recipe=SHORT)
    cache = FeatureCache(directory(tmp_path, "m"), meta["public"]["sha256"])
    calls: list[int] = []

    def compute(examples):
        calls.append(len(examples))
        return backbone_features(spec, model, meta, examples, device="cpu")

    first = cache(train, compute)
    again = cache(train, compute)
    assert calls == [len(train)]  # the second read ran no backbone pass
    assert torch.equal(first, again) and first.shape == (len(train), 1024)
    # Batch composition moves the last float bits of a matmul, nothing more.
    assert torch.allclose(first[:5], backbone_features(spec, model, meta, train[:5], device="cpu"), atol=1e-4)
    subject = train[0].subject_id
    assert cache.path(subject).exists() and subject not in cache.path(subject).name  # file names are hashed
    assert drop(tmp_path, "m", [subject]) == 1
    assert not cache.path(subject).exists() and cache.path(train[-1].subject_id).exists()


def test_adopted_weights_must_carry_the_published_backbone(spec, train, tmp_path) -> None:
    from safetensors.torch import save_file

    from app.services.models.registration import RegistrationFailed, adopt_weights

    model, meta = train_from_scratch(spec, train, device="cpu", seed=0, recipe=SHORT)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "ok.safetensors")
    adopted, adopted_meta = adopt_weights(spec, "wdbc_head", train, tmp_path / "ok.safetensors")
    assert adopted_meta["public"]["sha256"] == meta["public"]["sha256"]
    with torch.no_grad():
        model.backbone.net[2].weight.mul_(1.01)  # "fine-tuned" on someone: not the public backbone
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "tuned.safetensors")
    with pytest.raises(RegistrationFailed, match="public parameters"):
        adopt_weights(spec, "wdbc_head", train, tmp_path / "tuned.safetensors")


def test_a_public_backbone_model_is_not_trained_as_a_sisa_ensemble(spec, train, tmp_path) -> None:
    from app.ml.sisa import train_sisa

    with pytest.raises(ValueError, match="head retrain"):  # shards would each train the public part
        train_sisa(spec, train, out_dir=tmp_path / "sisa", device="cpu")
