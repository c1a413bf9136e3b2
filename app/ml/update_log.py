"""Per-batch parameter-update log for Amnesiac unlearning (Graves, Nagisetty & Ganesh, "Amnesiac
Machine Learning", AAAI 2021).

Training with a log stores, for every optimiser step, the parameter delta ``theta_after -
theta_before`` once (one safetensors file per batch) and an index ``subject key -> batch ids``.
``amnesiac`` subtracts the deltas of every batch that held a subject's samples, then repairs
with a short retain finetune whose steps are logged too (so a later erasure can undo them).

When the subtraction is exact, and when it is not. With plain SGD (no momentum, no weight decay)
a step is ``-lr * grad(batch)``, nothing of it is carried into later steps, and the final weights
are ``theta_0 + sum of deltas``: subtracting a subject's deltas gives exactly the logged
trajectory with those updates removed (``tests/workers/test_amnesiac.py``). It is still not
retraining: every later gradient was evaluated at weights that included the removed updates, so
their influence survives through the interleaved batches. With Adam(W) the removed gradient also
lives on in the moment estimates of every later step, and weight decay makes each delta depend on
the whole weight vector: the subtraction is a heuristic there, and the retain finetune plus the
verification gate decide. Momentum matters most: with beta1 = 0.9 a batch's own step carries
only a tenth of its gradient, the rest is spread over the next ~10 steps (other subjects'
batches), so subtracting it barely forgets (measured on toy, one subject: MIA AUC 0.65-0.68 and
forget accuracy 1.0 after amnesiac, retrain 0.45 / 0.5). Logged training therefore defaults to
AdamW with beta1 = 0 (``adamw_nomomentum``; same test accuracy on toy and digits), which keeps
each step's direction attributable to its own batch while keeping Adam's per-parameter scale. Batches mix subjects, so removing a subject also removes its batch-mates'
updates: training batches are therefore packed by subject (``batching="subjects"``: whole
subjects per batch, reshuffled every epoch), so a subject touches one batch per epoch instead of
nearly all of them.

Storage: one full parameter vector (float32) per optimiser step, i.e. ``4 * params *
batches_per_epoch`` bytes per epoch. Measured (``batching="subjects"``, recipe batch sizes): toy
(19,204 params, 8 steps/epoch) 0.62 MB/epoch, 24.7 MB for 40 epochs; digits (38,282 params, 21
steps/epoch) 3.2 MB/epoch, 97 MB for 30 epochs; every amnesiac run adds its repair steps and
writes a new index (kept files are hard links). Suitable for small models (toy, digits), not for
movielens (millions of parameters, thousands of steps per epoch) or anything larger.

Layout: ``meta["update_log"] = {"dir": "<abs>/updates-<id>", "index_sha256": sha, "batches": N,
"bytes": B, "optimizer": "adamw_nomomentum"|"adamw"|"sgd", "batching": ...}``; ``dir/index.json`` holds
``{"format": 1, "param_names": [...], "files": {batch id: sha256}, "subjects": {key: [batch ids]},
"init_sha256": sha}``, ``dir/b<id>.safetensors`` the deltas (one tensor per parameter name) and
``dir/init.safetensors`` the initial weights. Every file is verified by sha256 when read. A new
version gets a new directory (unchanged files hard-linked) without the erased subject's batches
or key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from app.ml.checkpoint import ChecksumMismatch
from app.ml.data import collate_examples
from app.ml.spec import Example, ModelSpec, TrainRecipe

FORMAT = 1
INDEX = "index.json"
BATCHINGS = ("subjects", "shuffle")


def _write(path: Path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def _read(path: Path, sha: str) -> bytes:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha:
        raise ChecksumMismatch(f"update log file {path} does not match its recorded sha256")
    return data


def new_log_dir(parent: str | os.PathLike[str]) -> Path:
    path = Path(parent) / f"updates-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True, exist_ok=False)
    return path.resolve()


def epoch_batches(subjects: list[str], batch_size: int, gen: torch.Generator, batching: str) -> list[list[int]]:
    """Positions of each batch of one epoch.

    ``shuffle``: a random permutation cut into batches. ``subjects``: subjects in random order,
    packed whole into batches of at most ``batch_size`` (a larger subject is cut into full
    batches), so a subject's samples share one batch per epoch (``ceil(n / batch_size)`` if larger).
    """
    if batching == "shuffle":
        order = torch.randperm(len(subjects), generator=gen).tolist()
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if batching != "subjects":
        raise ValueError(f"unknown batching {batching!r}; use one of {BATCHINGS}")
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(subjects):
        groups.setdefault(s, []).append(i)
    names = sorted(groups)
    batches, current = [], []
    for j in torch.randperm(len(names), generator=gen).tolist():
        members = groups[names[j]]
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            if current and len(current) + len(chunk) > batch_size:
                batches.append(current)
                current = []
            current = current + chunk
    if current:
        batches.append(current)
    return batches


class LogWriter:
    """Writes one delta file per step into a new directory and keeps the subject index."""

    def __init__(self, out_dir: Path, param_names: list[str], *, optimizer: str, batching: str) -> None:
        self.dir, self.names = Path(out_dir), list(param_names)
        self.optimizer, self.batching = optimizer, batching
        self.files: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.init_sha: str | None = None
        self.next_id = 0

    def save_init(self, model: nn.Module) -> None:
        tensors = {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters()}
        self.init_sha = _write(self.dir / "init.safetensors", save_safetensors(tensors))

    def record(self, delta: dict[str, torch.Tensor], subjects: Iterable[str]) -> int:
        bid = self.next_id
        self.next_id += 1
        self.files[bid] = _write(self.dir / f"b{bid:06d}.safetensors", save_safetensors(delta))
        for s in sorted(set(subjects)):
            self.subjects.setdefault(s, []).append(bid)
        return bid

    def close(self) -> dict[str, Any]:
        """Write the index; return the ``meta["update_log"]`` section."""
        index = {"format": FORMAT, "param_names": self.names, "init_sha256": self.init_sha,
                 "files": {str(b): sha for b, sha in sorted(self.files.items())},
                 "subjects": {s: ids for s, ids in sorted(self.subjects.items())}}
        sha = _write(self.dir / INDEX, json.dumps(index, sort_keys=True, separators=(",", ":")).encode())
        size = sum((self.dir / f"b{b:06d}.safetensors").stat().st_size for b in self.files)
        return {"dir": str(self.dir.resolve()), "index_sha256": sha, "batches": len(self.files), "bytes": size,
                "optimizer": self.optimizer, "batching": self.batching}


class UpdateLog:
    """A model's update log, opened from its ``meta["update_log"]`` (index verified by sha256)."""

    def __init__(self, section: dict[str, Any]) -> None:
        self.section = section
        self.dir = Path(section["dir"])
        self.index = json.loads(_read(self.dir / INDEX, section["index_sha256"]))
        if self.index.get("format") != FORMAT:
            raise ValueError(f"update log {self.dir}: unsupported format {self.index.get('format')!r}")

    @classmethod
    def of(cls, meta: dict[str, Any]) -> UpdateLog:
        section = meta.get("update_log")
        if not isinstance(section, dict):
            raise ValueError("model has no update log (register it with training={'update_log': True})")
        return cls(section)

    def batches_of(self, keys: Iterable[str]) -> list[int]:
        """Every batch that held a sample of any of these subjects, in training order."""
        return sorted({b for k in keys for b in self.index["subjects"].get(k, [])})

    def delta(self, bid: int) -> dict[str, torch.Tensor]:
        return load_safetensors(_read(self.dir / f"b{bid:06d}.safetensors", self.index["files"][str(bid)]))

    def init(self) -> dict[str, torch.Tensor]:
        return load_safetensors(_read(self.dir / "init.safetensors", self.index["init_sha256"]))

    def batch_ids(self) -> list[int]:
        return sorted(int(b) for b in self.index["files"])

    def rewrite(self, out_dir: Path, *, drop_batches: Iterable[int], drop_subjects: Iterable[str]) -> LogWriter:
        """A writer for a new directory holding this log minus ``drop_batches`` and the subjects' keys.

        Kept files are hard-linked (copied where links fail); new steps continue the batch ids.
        """
        drop, gone = set(drop_batches), set(drop_subjects)
        writer = LogWriter(out_dir, self.index["param_names"], optimizer=self.section.get("optimizer", "adamw_nomomentum"),
                           batching=self.section.get("batching", "subjects"))
        for name in ["init.safetensors"] + [f"b{b:06d}.safetensors" for b in self.batch_ids() if b not in drop]:
            try:
                os.link(self.dir / name, out_dir / name)
            except OSError:
                shutil.copy2(self.dir / name, out_dir / name)
        writer.init_sha = self.index["init_sha256"]
        writer.files = {int(b): sha for b, sha in self.index["files"].items() if int(b) not in drop}
        writer.subjects = {s: kept for s, ids in self.index["subjects"].items()
                           if s not in gone and (kept := [b for b in ids if b not in drop])}
        writer.next_id = max((int(b) for b in self.index["files"]), default=-1) + 1
        return writer


@torch.no_grad()
def subtract_updates(model: nn.Module, log: UpdateLog, batch_ids: Iterable[int]) -> int:
    """``theta -= sum of the logged deltas of batch_ids``, in place; returns how many were removed."""
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(p, device="cpu") for n, p in params.items()}
    count = 0
    for bid in batch_ids:
        for n, d in log.delta(bid).items():
            total[n] += d
        count += 1
    for n, p in params.items():
        p.sub_(total[n].to(p.device, p.dtype))
    return count


def make_optimizer(model: nn.Module, optimizer: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if optimizer == "adamw_nomomentum":  # beta1 = 0: a step's direction comes from its own batch only
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.0, 0.999))
    if optimizer == "sgd":  # plain: no momentum, no decay, so each step is -lr * grad(batch)
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    raise ValueError(f"unknown optimizer {optimizer!r}; use adamw_nomomentum, adamw or sgd")


def logged_batches(
    spec: ModelSpec, meta: dict[str, Any], examples: list[Example], *, batch_size: int, seed: int, batching: str,
    device: torch.device | str,
) -> Iterator[tuple[int, dict[str, torch.Tensor], torch.Tensor, set[str]]]:
    """Endless ``(epoch, batch, labels, subject keys in the batch)``, a new epoch plan every pass."""
    data = collate_examples(spec, meta, examples)
    subjects = [e.subject_id for e in examples]
    gen = torch.Generator().manual_seed(seed)
    epoch = 0
    while True:
        for idx in epoch_batches(subjects, batch_size, gen, batching):
            batch, labels = data[idx]
            yield epoch, {k: v.to(device) for k, v in batch.items()}, labels.to(device), {subjects[i] for i in idx}
        epoch += 1


def logged_step(
    model: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor], labels: torch.Tensor,
    subjects: set[str], writer: LogWriter,
) -> float:
    """One optimiser step whose delta is recorded under ``subjects``."""
    named = list(model.named_parameters())
    before = [p.detach().clone() for _, p in named]
    loss = F.cross_entropy(model(**batch), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    writer.record({n: (p.detach() - b).cpu().contiguous() for (n, p), b in zip(named, before)}, subjects)
    return float(loss.detach())


def train_logged(
    spec: ModelSpec,
    examples: list[Example],
    *,
    out_dir: str | os.PathLike[str],
    device: torch.device | str,
    seed: int = 0,
    recipe: TrainRecipe | None = None,
    optimizer: str = "adamw_nomomentum",
    lr: float | None = None,
    batching: str = "subjects",
    progress: Callable[[float], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train on the ``train`` split like ``train_from_scratch``, logging every step's delta.

    ``out_dir`` must be new or empty. ``lr`` defaults to the recipe's (tuned for AdamW).
    """
    recipe = recipe or spec.recipe
    train = [e for e in examples if e.split == "train"]
    if not train:
        raise ValueError("no examples with split 'train' to train on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ValueError(f"update log directory {out} is not empty")
    torch.manual_seed(seed)
    meta = spec.make_meta([e.features for e in train])
    model = spec.build(meta).to(device)
    opt = make_optimizer(model, optimizer, lr or recipe.lr, recipe.weight_decay)
    writer = LogWriter(out, [n for n, _ in model.named_parameters()], optimizer=optimizer, batching=batching)
    writer.save_init(model)
    model.train()
    done = 0
    for epoch, batch, labels, subjects in logged_batches(spec, meta, train, batch_size=recipe.batch_size, seed=seed,
                                                         batching=batching, device=device):
        if epoch != done and progress is not None:
            progress(epoch / recipe.epochs)
        done = epoch
        if epoch == recipe.epochs:
            break
        logged_step(model, opt, batch, labels, subjects, writer)
    model.eval()
    return model, {**meta, "update_log": writer.close()}
