"""SISA training: Sharded, Isolated, Sliced, Aggregated (Bourtoule et al., "Machine Unlearning",
IEEE S&P 2021).

The training set is split into ``shards`` disjoint shards, each trained as its own network (a
*constituent*, ``spec.build(meta)``); every shard is split again into ``slices`` trained
incrementally: stage ``r`` trains on slices ``0..r`` with a fresh optimiser, starting from the
weights after stage ``r - 1``, and a checkpoint is saved after every stage (and of the
initialisation). Unlearning a subject then retrains only the shard that held them, from the last
checkpoint before their slice, on the remaining data: the result equals, bit for bit, an ensemble
trained from scratch without them (``tests/ml/test_sisa_training.py``).

Assignment is by *subject*, from a salted sha256 of the subject id (in production the subject
key, which is also what training sees), so a subject lives in exactly one shard and one slice and
the assignment never depends on row order or the seed. Within a stage the examples are sorted
canonically (subject, features, label) before the seeded shuffle, so retraining sees exactly what
training from scratch would see whatever order the registry returns rows in.

The served model is ``SISAEnsemble``: its forward returns the log of the constituents' mean
softmax, a valid logits tensor (softmax of it is the mean probability), so serving, prediction,
evaluation and verification use it unchanged; the served artifact holds every constituent.

Layout, all of it referenced from ``meta["sisa"]`` (stored in the artifact's header):
    {"shards": K, "slices": R, "seed": s, "epochs_per_slice": e, "batch_size": b, "lr": lr,
     "weight_decay": wd, "salt": "sisa", "dir": "<abs path>/sisa-<run id>",
     "slice_sha256": {"s0-init": sha, "s0-r0": sha, ..., "s3-r2": sha},
     "counts": {"s0-r0": n, ...},            # samples per slice (no subject ids)
     "routes": {"<row>": k, ...}}            # user-sharded only: subject row -> owning shard
``dir`` sits next to the version's artifact (``<artifacts>/<model>/``) and holds one
self-describing checkpoint per entry of ``slice_sha256`` (``<name>.safetensors``), each verified
by its sha256 when loaded. Every version gets its own directory (unchanged files are hard-linked;
changed ones are new files there), so a served version's files are never overwritten and a purged version's
directory can be removed whole (``app.ml.checkpoint.companion_dirs``).

Recommenders: user-sharded SISA (issue 10 section 4). A spec with per-subject parameters
(MovieLens: a user's embedding and bias rows) declares ``subject_input``, the collate output that
carries the subject's row. Shards are still assigned by subject, so a user's ratings *and* their
row belong to exactly one shard. All constituents share one row layout (the registration's
``make_meta``: shapes and id -> row numbering), and each is restricted to its own shard's data
(``spec.restrict``): it holds rows only for its own users and for the items its users rated; every
other row is zero, exactly like the "unknown" row 0, and stays zero (no sample of the shard maps to
it, so it gets no gradient; AdamW's update and decay are element-wise). Items are shared
*catalogue* ids, but each shard learns its own item rows from its own users only; that is what
makes a shard's retrain exact. An erasure restarts the owning shard from its last checkpoint
before the user's slice, restricted to the remaining data (the user's row, and the row of any item
only they rated in that shard, zeroed; the rewritten earlier checkpoints no longer name them), and
retrains the later slices. With the recorded seeds and layout this equals, bit for bit, training
the ensemble from scratch without the user (``tests/ml/test_sisa_recsys.py``); the layout keeps an
erased user's row as an inert zero row no id maps to, which changes nothing a computation reads, so
it is equal in distribution to a layout built without them.

Aggregation for such an ensemble (``meta["sisa"]["routes"]``: row -> owning shard): a known user's
prediction comes from the shard that owns them, alone. The other constituents never saw that
user; averaging them in would shrink the only personalised answer towards S - 1 cold-start answers
(measured, ``bench/sisa_recsys.py``: test accuracy 0.678 routed vs 0.663 averaged at S = 4). A user no shard owns (unknown, held out,
erased: the collate maps them to row 0) gets the mean over all shards of their cold-start
prediction, the item-only knowledge of every shard. So an erased user is scored exactly like a
stranger id, by construction and by test.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from app.ml.checkpoint import ChecksumMismatch, load_checkpoint, save_checkpoint
# The ensemble's structure lives below this trainer and the checkpoint format (both use it).
from app.ml.ensemble import SISAEnsemble, base_meta, is_sisa
from app.ml.loop import Progress, train_epochs
from app.ml.data import make_loader
from app.ml.spec import Example, ModelSpec, TrainRecipe
from app.ml.specs.common import stable_fraction

log = logging.getLogger("lethe.sisa")
SALT = "sisa"


def assign(subject_id: str, shards: int, slices: int, salt: str = SALT) -> tuple[int, int]:
    """``(shard, slice)`` of a subject: salted sha256, independent of order and seed."""
    shard = int(stable_fraction(f"{salt}:shard:{subject_id}") * shards)
    slice_ = int(stable_fraction(f"{salt}:slice:{subject_id}") * slices)
    return shard, slice_


def slice_name(shard: int, stage: int | None) -> str:
    """File stem of a shard's checkpoint after ``stage`` (``None``: the initialisation)."""
    return f"s{shard}-init" if stage is None else f"s{shard}-r{stage}"


def _seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _canonical(examples: list[Example]) -> list[Example]:
    return sorted(examples, key=lambda e: (e.subject_id, json.dumps(e.features, sort_keys=True), e.label))


def new_run_dir(parent: str | os.PathLike[str]) -> Path:
    """A fresh ``sisa-<id>`` directory under ``parent`` (never an existing one)."""
    path = Path(parent) / f"sisa-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True, exist_ok=False)
    return path.resolve()


def default_epochs_per_slice(epochs: int, slices: int) -> int:
    """Bourtoule et al. section V: ``2e / (R + 1)`` epochs per stage costs the same sample passes
    as ``e`` epochs on the whole shard (stage ``r`` sees ``r + 1`` slices)."""
    return max(1, round(2 * epochs / (slices + 1)))


def _partition(examples: list[Example], cfg: dict[str, Any]) -> dict[int, list[list[Example]]]:
    parts = {k: [[] for _ in range(cfg["slices"])] for k in range(cfg["shards"])}
    cells: dict[str, tuple[int, int]] = {}  # two sha256 per subject, not per sample
    for e in examples:
        if (cell := cells.get(e.subject_id)) is None:
            cell = cells[e.subject_id] = assign(e.subject_id, cfg["shards"], cfg["slices"], cfg["salt"])
        parts[cell[0]][cell[1]].append(e)
    return parts


def _train_stages(
    spec: ModelSpec, member: nn.Module, view: dict[str, Any], cfg: dict[str, Any], shard: int,
    slices: list[list[Example]], start: int, out_dir: Path, shas: dict[str, str], counts: dict[str, int],
    device: torch.device | str, tick: Callable[[], None],
) -> None:
    """Stages ``start..R-1`` of one shard, in place, saving a checkpoint after each."""

    for r in range(start, cfg["slices"]):
        data = _canonical([e for s in slices[: r + 1] for e in s])
        counts[slice_name(shard, r)] = len(slices[r])
        if data:
            seed = _seed(cfg["seed"], shard, r)
            torch.manual_seed(seed)  # forward-time randomness (dropout) is part of the stage's recipe
            loader = make_loader(spec, view, data, batch_size=cfg["batch_size"], shuffle=True, seed=seed)
            train_epochs(spec, member, view, loader, epochs=cfg["epochs_per_slice"], lr=cfg["lr"],
                         weight_decay=cfg["weight_decay"], device=device)
        name = slice_name(shard, r)
        info = {"sisa_shard": shard, "sisa_stage": r, "samples": len(data)}
        shas[name] = save_checkpoint(out_dir / f"{name}.safetensors", member, view, info)
        tick()


def _check_supported(spec: ModelSpec) -> None:
    if spec.public_parameters is not None:  # shards would each train (and fork) the public part
        raise ValueError(f"spec {spec.name!r} declares public parameters: its exact path is the head retrain "
                         "(retrain), not a SISA ensemble")
    if spec.subject_feature is not None and spec.subject_input is None:
        raise ValueError(f"SISA ensembles of a spec with per-subject parameters ({spec.name!r}: "
                         f"{spec.subject_feature!r}) need its subject_input to route a subject to their shard")


def train_sisa(
    spec: ModelSpec,
    examples: list[Example],
    *,
    out_dir: str | os.PathLike[str],
    device: torch.device | str,
    seed: int = 0,
    shards: int = 4,
    slices: int = 3,
    recipe: TrainRecipe | None = None,
    epochs_per_slice: int | None = None,
    layout: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> tuple[SISAEnsemble, dict[str, Any]]:
    """Train a SISA ensemble on the ``train`` split; slice checkpoints go to ``out_dir`` (created).

    ``out_dir`` must be new or empty: a served version's files are never overwritten. ``layout``:
    the constituents' meta (default ``spec.make_meta`` of the training data); a recorded one
    reproduces an ensemble whose rows were numbered before some subjects were erased.
    """
    _check_supported(spec)
    recipe = recipe or spec.recipe
    if shards < 1 or slices < 1:
        raise ValueError("SISA needs at least one shard and one slice")
    train = [e for e in examples if e.split == "train"]
    if not train:
        raise ValueError("no examples with split 'train' to train on")
    cfg = {
        "shards": shards, "slices": slices, "seed": seed, "salt": SALT, "batch_size": recipe.batch_size,
        "lr": recipe.lr, "weight_decay": recipe.weight_decay,
        "epochs_per_slice": epochs_per_slice or default_epochs_per_slice(recipe.epochs, slices),
    }
    inner = base_meta(layout) if layout is not None else spec.make_meta([e.features for e in train])
    return _train(spec, inner, cfg, _partition(train, cfg), {k: 0 for k in range(shards)}, None,
                  Path(out_dir), device, progress)


def _train(
    spec: ModelSpec, inner: dict[str, Any], cfg: dict[str, Any], parts: dict[int, list[list[Example]]],
    starts: dict[int, int], old: dict[str, Any] | None, out_dir: Path, device: torch.device | str,
    progress: Progress | None, served: SISAEnsemble | None = None,
) -> tuple[SISAEnsemble, dict[str, Any]]:
    """Train the shards in ``starts`` from their stage; copy every other checkpoint from ``old``
    (and, given ``served`` constituents known to equal those checkpoints, their weights from it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise ValueError(f"SISA output directory {out_dir} is not empty")
    shas: dict[str, str] = {}
    counts: dict[str, int] = dict(old["counts"]) if old else {}
    total = sum(cfg["slices"] - s for s in starts.values()) or 1
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0] / total)

    routed = spec.subject_input is not None
    # The touched shards are independent: the registered runner trains them (in this process by
    # default; one Celery task per shard in a worker, ``app/ml/sisa_tasks.py``).
    touched = {k: start for k, start in starts.items() if start is not None}
    trained = _runner(ShardWork(spec, inner, cfg, parts, touched, old, out_dir, device, tick)) if touched else {}
    members, routes, everything = [], {}, []
    for k in range(cfg["shards"]):
        start = starts.get(k)
        feats = [e.features for s in parts[k] for e in s]
        everything += feats
        if start is None:  # untouched shard: its last checkpoint is its weights
            for r in [None, *range(cfg["slices"])]:
                _link(old, out_dir, slice_name(k, r), shas)
            if served is not None:  # checked equal to those checkpoints: no reload (routes carried over below)
                member, view = copy.deepcopy(served.members[k]).to(device), None
            else:
                member, view, _ = load_slice(spec, old, k, cfg["slices"] - 1, device=device)
        else:
            result = trained[k]
            shas.update(result.shas)
            counts.update(result.counts)
            if result.member is not None:
                member, view = result.member, result.view
            else:  # trained elsewhere: its final checkpoint, verified against the sha256 it reported
                member, view, _ = load_slice(spec, {"dir": str(out_dir), "slice_sha256": result.shas}, k,
                                             cfg["slices"] - 1, device=device)
        if routed and feats and start is None and old is not None and "routes" in old:
            routes.update({row: k for row, owner in old["routes"].items() if owner == k})  # same users, same rows
        elif routed and feats:
            rows = spec.collate(feats, view)[spec.subject_input]
            routes.update({str(int(r)): k for r in torch.unique(rows).tolist() if r})
        members.append(member.eval())
    section = {**cfg, "dir": str(out_dir.resolve()), "slice_sha256": shas, "counts": counts}
    if routed:  # the ensemble maps only ids some shard still holds
        inner, section["routes"] = spec.restrict(inner, everything), routes
    meta = {**inner, "sisa": section}
    ensemble = SISAEnsemble(members, routes=routes if routed else None, route_key=spec.subject_input)
    return ensemble.to(device).eval(), meta


@dataclass
class ShardWork:
    """The touched shards of one SISA training or erasure: shard -> first stage to (re)train."""

    spec: ModelSpec
    inner: dict[str, Any]
    cfg: dict[str, Any]
    parts: dict[int, list[list[Example]]]
    touched: dict[int, int]
    old: dict[str, Any] | None
    out_dir: Path
    device: Any
    tick: Callable[[], None] = lambda: None


@dataclass
class ShardResult:
    shas: dict[str, str]
    counts: dict[str, int]
    member: nn.Module | None = None  # in memory when trained in this process
    view: dict[str, Any] | None = None


def train_shard(spec: ModelSpec, inner: dict[str, Any], cfg: dict[str, Any], slices: list[list[Example]], k: int,
                start: int, old: dict[str, Any] | None, out_dir: Path, device: Any,
                tick: Callable[[], None] = lambda: None) -> ShardResult:
    """One shard: initialise (or restart from its checkpoint before stage ``start``) and train stages
    ``start..R-1``, writing its checkpoints into ``out_dir``. Deterministic: run twice (a redelivered
    task), it writes the same bytes (each file atomically)."""
    shas: dict[str, str] = {}
    counts: dict[str, int] = {}
    feats = [e.features for s in slices for e in s]
    if start == 0 and old is None:
        torch.manual_seed(_seed(cfg["seed"], k, "init"))
        member = spec.build(inner).to(device)
        view = spec.restrict(inner, feats, model=member)  # rows only for this shard's users and items
        shas[slice_name(k, None)] = save_checkpoint(out_dir / f"{slice_name(k, None)}.safetensors", member, view,
                                                    {"sisa_shard": k, "sisa_stage": None})
    else:  # restart from the last checkpoint before the first slice that changed
        member, view = _restart(spec, old, inner, feats, k, start, out_dir, shas, device,
                                rewrite=spec.subject_input is not None)
    _train_stages(spec, member, view, cfg, k, slices, start, out_dir, shas, counts, device, tick)
    return ShardResult(shas, counts, member, view)


def run_inline(work: ShardWork) -> dict[int, ShardResult]:
    """Train the touched shards one after another in this process (the default runner)."""
    return {k: train_shard(work.spec, work.inner, work.cfg, work.parts[k], k, start, work.old, work.out_dir,
                           work.device, work.tick) for k, start in sorted(work.touched.items())}


ShardRunner = Callable[[ShardWork], dict[int, ShardResult]]
_runner: ShardRunner = run_inline


def set_shard_runner(runner: ShardRunner | None) -> ShardRunner:
    """Register how touched shards are trained (a worker registers its Celery fan-out at start-up);
    ``None`` restores the in-process default. Returns the previous runner."""
    global _runner
    previous, _runner = _runner, runner or run_inline
    return previous


def _restart(
    spec: ModelSpec, old: dict[str, Any], inner: dict[str, Any], feats: list[dict[str, Any]], shard: int, start: int,
    out_dir: Path, shas: dict[str, str], device: torch.device | str, *, rewrite: bool,
) -> tuple[nn.Module, dict[str, Any]]:
    """The shard's checkpoint before stage ``start`` and its meta, the earlier checkpoints carried over.

    Without per-id parameters they are hard-linked unchanged. With them (``rewrite``), each is
    restricted to the shard's remaining data and saved anew: an erased user's row (and the row of
    an item only they rated here) is zeroed and their id leaves the checkpoint's meta. Nothing read
    those rows before the user's slice, so the result is what training without them would have saved.
    """
    stages = [None, *range(start)]
    if not rewrite:
        for r in stages:
            _link(old, out_dir, slice_name(shard, r), shas)
        member, view, _ = load_slice(spec, old, shard, stages[-1], device=device)
        return member, view
    for r in stages:
        member, _, info = load_slice(spec, old, shard, r, device=device)
        view = spec.restrict(inner, feats, model=member)
        name = slice_name(shard, r)
        shas[name] = save_checkpoint(out_dir / f"{name}.safetensors", member, view, info)
    return member, view


def _link(old: dict[str, Any], out_dir: Path, name: str, shas: dict[str, str]) -> None:
    """Hard-link (or copy) an unchanged checkpoint into the new version's directory."""
    src, dst = Path(old["dir"]) / f"{name}.safetensors", out_dir / f"{name}.safetensors"
    dst.unlink(missing_ok=True)  # left by a shard task that died mid-way (app/ml/sisa_tasks.py)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    shas[name] = old["slice_sha256"][name]


def load_slice(
    spec: ModelSpec, sisa: dict[str, Any], shard: int, stage: int | None, *, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """A constituent checkpoint from ``meta["sisa"]``, verified against its recorded sha256."""
    name = slice_name(shard, stage)
    model, meta, info = load_checkpoint(Path(sisa["dir"]) / f"{name}.safetensors", spec,
                                        expected_sha256=sisa["slice_sha256"][name], device=device)
    return model.train(), meta, info


def _matches_checkpoints(model: nn.Module, sisa: dict[str, Any]) -> bool:
    """Whether the served constituents are exactly their final slice checkpoints (the weights,
    read from the sha256-verified files without building a network)."""
    if not isinstance(model, SISAEnsemble) or len(model.members) != sisa["shards"]:
        return False
    for k, member in enumerate(model.members):
        name = slice_name(k, sisa["slices"] - 1)
        data = (Path(sisa["dir"]) / f"{name}.safetensors").read_bytes()
        if hashlib.sha256(data).hexdigest() != sisa["slice_sha256"][name]:
            raise ChecksumMismatch(f"SISA checkpoint {name} does not match its recorded sha256")
        saved, served = load_safetensors(data), member.state_dict()
        if saved.keys() != served.keys() or any(not torch.equal(v, served[n].cpu()) for n, v in saved.items()):
            return False
    return True


def unlearn_sisa(
    spec: ModelSpec,
    model: nn.Module,
    meta: dict[str, Any],
    *,
    retain: list[Example],
    forget_keys: set[str],
    device: torch.device | str,
    out_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> tuple[SISAEnsemble, dict[str, Any], dict[int, int]]:
    """Retrain the shards that held ``forget_keys`` from the stage before their first slice.

    ``retain`` is the live training data (forgotten subjects already excluded; any sample of a
    ``forget_keys`` subject left in it is dropped). Returns ``(ensemble, meta, {shard: first
    retrained stage})``; the new checkpoints go to ``out_dir`` (default: a new ``sisa-<id>``
    directory next to the served one). If the served constituents are not their own final
    checkpoints (the model was changed outside SISA) every shard is retrained from scratch: that
    is still exact, while restarting from stale checkpoints would not be.
    """
    if not is_sisa(meta):
        raise ValueError("model is not a SISA ensemble (no meta['sisa']); use retrain")
    _check_supported(spec)
    old = meta["sisa"]
    cfg = {k: old[k] for k in ("shards", "slices", "seed", "salt", "batch_size", "lr", "weight_decay",
                               "epochs_per_slice")}
    starts: dict[int, int] = {}
    for key in forget_keys:
        k, r = assign(key, cfg["shards"], cfg["slices"], cfg["salt"])
        starts[k] = min(starts.get(k, r), r)
    keep = [e for e in retain if e.split == "train" and e.subject_id not in forget_keys]
    out = Path(out_dir) if out_dir is not None else new_run_dir(Path(old["dir"]).parent)
    previous: dict[str, Any] | None = old
    served: SISAEnsemble | None = model  # type: ignore[assignment]
    if not _matches_checkpoints(model, old):
        log.warning("served SISA ensemble differs from its slice checkpoints; retraining every shard")
        starts, previous, served = {k: 0 for k in range(cfg["shards"])}, None, None
    ensemble, new_meta = _train(spec, base_meta(meta), cfg, _partition(keep, cfg), starts, previous, out,
                                device, progress, served)
    return ensemble, new_meta, starts


def retrain_sisa(
    spec: ModelSpec,
    meta: dict[str, Any],
    retain: list[Example],
    *,
    device: torch.device | str,
    progress: Progress | None = None,
    out_dir: str | os.PathLike[str] | None = None,
) -> tuple[SISAEnsemble, dict[str, Any]]:
    """Full SISA training on ``retain`` with the served ensemble's configuration (``retrain``; and
    calibration, which measures what an exact erasure of this model yields). Checkpoints go to
    ``out_dir`` (default: a new ``sisa-<id>`` directory next to the served one)."""
    old = meta["sisa"]
    recipe = TrainRecipe(epochs=1, batch_size=old["batch_size"], lr=old["lr"], weight_decay=old["weight_decay"])
    out = Path(out_dir) if out_dir is not None else new_run_dir(Path(old["dir"]).parent)
    return train_sisa(spec, retain, out_dir=out, device=device, seed=old["seed"],
                      shards=old["shards"], slices=old["slices"], recipe=recipe,
                      epochs_per_slice=old["epochs_per_slice"], progress=progress)
