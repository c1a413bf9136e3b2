import pytest
import torch

from app.ml.checkpoint import ChecksumMismatch, file_sha256, load_checkpoint, save_checkpoint
from app.ml.specs import get_spec
from app.ml.train import predict


def test_round_trip(tmp_path, toy, toy_examples, toy_trained):
    model, meta = toy_trained
    info = {"method": "retrain", "metrics": {"test_acc": 0.7}}
    sha = save_checkpoint(tmp_path / "v1.safetensors", model, meta, info)
    assert sha == file_sha256(tmp_path / "v1.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["v1.safetensors"]  # no temp file left
    loaded, meta2, info2 = load_checkpoint(tmp_path / "v1.safetensors", toy, expected_sha256=sha)
    assert meta2 == meta and info2 == info and not loaded.training
    feats = [e.features for e in toy_examples[:20]]
    assert predict(toy, loaded, meta2, feats, device="cpu") == predict(toy, model, meta, feats, device="cpu")


def test_sha_mismatch_and_tampering(tmp_path, toy, toy_trained):
    model, meta = toy_trained
    path = tmp_path / "v.safetensors"
    sha = save_checkpoint(path, model, meta, {})
    with pytest.raises(ChecksumMismatch):
        load_checkpoint(path, toy, expected_sha256="0" * 64)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch):
        load_checkpoint(path, toy, expected_sha256=sha)
    assert issubclass(ChecksumMismatch, ValueError)


def test_wrong_spec_refused(tmp_path, toy_trained):
    model, meta = toy_trained
    save_checkpoint(tmp_path / "v.safetensors", model, meta, {})
    with pytest.raises(ValueError, match="spec"):
        load_checkpoint(tmp_path / "v.safetensors", get_spec("digits"))


def test_overwrite_is_atomic_replace(tmp_path, toy_trained):
    model, meta = toy_trained
    path = tmp_path / "v.safetensors"
    sha1 = save_checkpoint(path, model, meta, {"n": 1})
    sha2 = save_checkpoint(path, model, meta, {"n": 2})
    assert sha1 != sha2 == file_sha256(path)
    assert torch.equal(load_checkpoint(path, get_spec("toy"))[0].net[0].weight, model.net[0].weight)
