"""Self-describing checkpoints: safetensors weights + JSON metadata, sha256-addressed.

Follows nanoGPT's habit of saving the model's arguments beside its weights (STYLE.md 8): the
``meta`` the network is built from and an ``info`` dict (method, config, parent, metrics) are
stored in the safetensors header. Writes are atomic (temp file + ``os.replace``); loads hash
the bytes first and deserialise those same bytes, so what was verified is what is served.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from app.ml.ensemble import build_network
from app.ml.public import check as check_public
from app.ml.spec import ModelSpec

FORMAT_VERSION = "1"
META_KEY, INFO_KEY, SPEC_KEY, FORMAT_KEY = "lethe.meta", "lethe.info", "lethe.spec", "lethe.format"


class ChecksumMismatch(ValueError):
    """The checkpoint's bytes do not hash to the expected sha256."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any], info: dict[str, Any]) -> str:
    """Write ``model``'s weights with ``meta``/``info`` atomically; return the file's sha256.

    ``PublicParametersChanged`` (nothing written) when ``meta`` declares public parameters and the
    model's no longer hash to the recorded value (``app/ml/public.py``)."""
    check_public(model, meta, what=f"checkpoint {Path(path).name}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    header = {
        FORMAT_KEY: FORMAT_VERSION,
        SPEC_KEY: str(meta.get("spec", "")),
        META_KEY: json.dumps(meta, sort_keys=True, separators=(",", ":")),
        INFO_KEY: json.dumps(info, sort_keys=True, separators=(",", ":"), default=str),
    }
    data = save_safetensors(tensors, metadata=header)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def read_header(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (8-byte little-endian length, then JSON)."""
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]).get("__metadata__", {})


def load_checkpoint(
    path: str | os.PathLike[str], spec: ModelSpec, *, expected_sha256: str | None = None, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``(model in eval mode on device, meta, info)``; ``ChecksumMismatch`` if the hash differs."""
    data = Path(path).read_bytes()
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.lower():
            raise ChecksumMismatch(f"checkpoint {path} has sha256 {actual}, expected {expected_sha256}")
    header = read_header(data)
    if header.get(FORMAT_KEY) != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path}: unsupported format {header.get(FORMAT_KEY)!r}")
    if header.get(SPEC_KEY) != spec.name:
        raise ValueError(f"checkpoint {path} is for spec {header.get(SPEC_KEY)!r}, not {spec.name!r}")
    meta, info = json.loads(header[META_KEY]), json.loads(header[INFO_KEY])
    model = build_network(spec, meta)  # spec.build(meta), or a SISA ensemble of them
    model.load_state_dict(load_safetensors(data), strict=True)
    check_public(model, meta, what=f"checkpoint {path}")  # a version whose public part changed is refused
    return model.to(device).eval(), meta, info


def companion_dirs(meta: dict[str, Any]) -> list[Path]:
    """Directories a version's ``meta`` references beside its artifact (SISA slice checkpoints,
    amnesiac update log): deleted with the artifact when the version is purged, unless another
    live version's meta references the same directory."""
    dirs = [section.get("dir") for key in ("sisa", "update_log") if isinstance(section := meta.get(key), dict)]
    return [Path(d) for d in dirs if d]


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta`` stored in a checkpoint's header, without loading its weights."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size)).get("__metadata__", {})
    return json.loads(header.get(META_KEY, "{}"))
