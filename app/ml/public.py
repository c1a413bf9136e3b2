"""Declared public parameters: the part of a network that never saw a data subject (issue 20).

A spec may declare ``public_parameters`` (``PublicParameters``: parameter-name prefixes and where
their weights come from, e.g. a published seed or a wheel that ships a pretrained encoder). Lethe
then enforces, rather than trusts, that they stay public:

- ``declare`` records the sha256 of the freshly built public tensors in ``meta["public"]`` (meta
  travels with every version and is stored in each checkpoint's header);
- ``freeze`` turns their gradients off, so training and every unlearning method leave them alone;
- ``check`` recomputes the hash and raises :class:`PublicParametersChanged` when it differs: at the
  end of every method (``workers/unlearning/base.finish``), on every checkpoint write and every
  checkpoint load (``app/ml/checkpoint.py``), so a version whose public part changed is refused.

When the public part is a prefix of the network (``ModelSpec.split_public``), training the rest
needs only the backbone's output per sample: ``app.ml.train.train_head`` trains the head on those features,
read from a per-sample feature cache (``app/data/feature_cache.py``: personal data, deleted with
the samples) when one is given. Exact erasure of such a model is then a head retrain
(``workers/unlearning/retrain.py``): the head is re-initialised and retrained on the retain set,
the backbone reloaded from its source and hash-checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from app.ml.spec import ModelSpec, PublicParameters

__all__ = ["PublicParameters", "PublicParametersChanged", "declare", "freeze", "check", "public_sha256",
           "is_public"]


class PublicParametersChanged(ValueError):
    """A network's declared public parameters no longer hash to the value recorded at registration."""


def prefixes_of(meta: dict[str, Any]) -> tuple[str, ...]:
    section = meta.get("public")
    return tuple(section["prefixes"]) if isinstance(section, dict) else ()


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p.rstrip(".") or name.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def public_state(model: nn.Module, prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    """State-dict entries (parameters and buffers) under the prefixes."""
    return {k: v for k, v in model.state_dict().items() if _under(k, prefixes)}


def public_sha256(model: nn.Module, prefixes: Sequence[str]) -> str:
    """sha256 over the public tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(public_state(model, prefixes).items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def is_public(meta: dict[str, Any]) -> bool:
    return bool(prefixes_of(meta))


def declare(spec: ModelSpec, model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with a ``public`` section for a spec that declares public parameters (the hash of
    ``model``'s public tensors as just built from their source); ``meta`` unchanged otherwise."""
    declared = spec.public_parameters
    if declared is None:
        return meta
    prefixes = tuple(declared.prefixes)
    if not public_state(model, prefixes):
        raise ValueError(f"spec {spec.name!r} declares public parameters {list(prefixes)} but the network has none")
    return {**meta, "public": {"prefixes": list(prefixes), "source": declared.source,
                               "sha256": public_sha256(model, prefixes)}}


def freeze(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    """Turn off gradients of the public parameters (in place): no optimiser can move them."""
    prefixes = prefixes_of(meta)
    if prefixes:
        for name, p in model.named_parameters():
            if _under(name, prefixes):
                p.requires_grad_(False)
    return model


def check(model: nn.Module, meta: dict[str, Any], *, what: str = "the network") -> None:
    """Raise ``PublicParametersChanged`` when ``model``'s public tensors differ from the recorded hash."""
    section = meta.get("public")
    if not isinstance(section, dict):
        return
    actual = public_sha256(model, section["prefixes"])
    if actual != section["sha256"]:
        raise PublicParametersChanged(
            f"{what}: the public parameters {section['prefixes']} (from {section.get('source')}) hash to "
            f"{actual[:16]}..., not the registered {section['sha256'][:16]}...: refused")
