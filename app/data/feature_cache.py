"""Per-sample feature cache of a model with a public backbone (issue 20): personal data.

The backbone's output for a sample is derived from that person's features, so it is kept and
erased exactly like the sample: one file per subject under ``<data root>/features/<model>/<tag>/``
(``tag``: the public parameters' hash, so features of another backbone are never read), read only
for the samples a job trains on (the retain set already leaves out deleted and owed subjects),
removed when the subject's samples are flagged deleted (``registry.take_forget``) and again when
they are purged (``registry.purge``). File names are a hash of the subject key, never the key.

A cached entry is keyed by a hash of the sample's features, so an edited sample is recomputed.

Each version's data manifest names the cache it was trained from (``manifest``: the backbone's hash,
the cached rows of its training set, and an order-independent sha256 of those rows), so the record
says which per-person features the head saw, and that an erased person's were not among them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from app.ml.spec import Example

BACKBONE_FILE = "BACKBONE"  # beside a tag's files: the public parameters' full sha256

def directory(root: str | os.PathLike[str], model_name: str) -> Path:
    """Where a model's feature cache lives under the data root."""
    return Path(root) / "features" / model_name


def _file_name(subject_key: str) -> str:
    return hashlib.sha256(subject_key.encode()).hexdigest()[:40] + ".safetensors"


def _sample_key(e: Example) -> str:
    line = json.dumps([e.features, e.split], sort_keys=True, separators=(",", ":"))
    return "s" + hashlib.sha256(line.encode()).hexdigest()[:32]


class FeatureCache:
    """``cache(examples, compute) -> features [N, d]``: cached rows read, missing ones computed
    (one backbone pass over only those) and written to their subjects' files."""

    def __init__(self, root: str | os.PathLike[str], tag: str) -> None:
        self.dir = Path(root) / tag[:16]
        self.tag = tag

    def path(self, subject_key: str) -> Path:
        return self.dir / _file_name(subject_key)

    def __call__(self, examples: Sequence[Example], compute: Callable[[Sequence[Example]], torch.Tensor]) -> torch.Tensor:
        by_subject: dict[str, list[int]] = {}
        for i in range(len(examples)):
            by_subject.setdefault(examples[i].subject_id, []).append(i)
        rows: list[torch.Tensor | None] = [None] * len(examples)
        missing: list[int] = []
        stored: dict[str, dict[str, torch.Tensor]] = {}
        for subject, positions in by_subject.items():
            path = self.path(subject)
            stored[subject] = load_file(path) if path.exists() else {}
            for i in positions:
                hit = stored[subject].get(_sample_key(examples[i]))
                if hit is None:
                    missing.append(i)
                else:
                    rows[i] = hit
        if missing:
            fresh = compute([examples[i] for i in missing])
            touched = set()
            for i, row in zip(missing, fresh):
                rows[i] = row
                subject = examples[i].subject_id
                stored[subject][_sample_key(examples[i])] = row.contiguous()
                touched.add(subject)
            for subject in touched:
                self._write(self.path(subject), stored[subject])
        return torch.stack(rows) if rows else torch.zeros(0)

    def _write(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (path.parent / BACKBONE_FILE).exists():  # the full hash, for the manifest
            (path.parent / BACKBONE_FILE).write_text(self.tag)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def manifest(root: str | os.PathLike[str], model_name: str, examples: Iterable[Example]) -> dict[str, Any] | None:
    """The cache a version trains from, for its data manifest: ``backbone`` (the public parameters'
    sha256), ``rows`` (cached rows of ``examples``, the training set after exclusion), ``missing``
    (rows the job's backbone pass will add), ``sha256`` (the sum of per-row SHA-256 of sample key and
    feature bytes, mod 2**256: independent of order). ``None`` when the model has no cache."""
    base = directory(root, model_name)
    tags = sorted(p for p in base.iterdir() if (p / BACKBONE_FILE).exists()) if base.is_dir() else []
    if not tags:
        return None
    by_subject: dict[str, list[Example]] = {}
    for e in examples:
        by_subject.setdefault(e.subject_id, []).append(e)
    best: dict[str, Any] | None = None
    for tag in tags:  # one per model (its public hash is enforced); the fullest if a stale one lingers
        total, rows, missing = 0, 0, 0
        for subject, exs in by_subject.items():
            path = tag / _file_name(subject)
            stored = load_file(path) if path.exists() else {}
            for e in exs:
                key = _sample_key(e)
                row = stored.get(key)
                if row is None:
                    missing += 1
                    continue
                digest = hashlib.sha256(key.encode() + row.contiguous().numpy().tobytes()).digest()
                total = (total + int.from_bytes(digest, "big")) % (1 << 256)
                rows += 1
        if best is None or rows > best["rows"]:
            best = {"backbone": (tag / BACKBONE_FILE).read_text().strip(), "rows": rows, "missing": missing,
                    "sha256": f"{total:064x}"}
    return best


def drop(root: str | os.PathLike[str], model_name: str, subject_keys: Sequence[str]) -> int:
    """Delete the subjects' cached features under every tag of the model; returns files removed."""
    base = directory(root, model_name)
    if not base.is_dir() or not subject_keys:
        return 0
    names = {_file_name(k) for k in subject_keys}
    removed = 0
    for tag in base.iterdir():
        for name in names:
            f = tag / name
            if f.exists():
                f.unlink()
                removed += 1
    return removed
