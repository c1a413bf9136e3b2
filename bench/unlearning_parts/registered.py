"""A model registered in a Lethe database, measured like a bundled configuration (``--model``).

The benchmark reads what an erasure job of that model would read (``workers/problem.py``): the
model row (spec entry point, ``config``: reference, chain, method overrides), its live registry
samples (``app.data.registry.live``: samples not flagged deleted, in either store, leaving out
subjects whose erasure from this model is still owed, who are never trained on again) and the
serving version's weights, checked against their sha256. Every method then runs from that served
model, per forget set of person-level subjects, as ``measure.bench_stage`` runs it for a bundled
configuration.

Nothing is written to the database or beside the served artifact: companion directories (SISA
slice checkpoints, an update log) are copied to a temporary directory first, since ``sisa`` and
SISA retraining write their new slices next to the ones they start from. Only ``--record-chain``
writes: the model's ``auto`` chain, through ``PUT /v1/models/{name}/policy`` when a stack is named
(``--url`` / ``--key`` or ``LETHE_URL`` / ``LETHE_KEY``), else through ``models.set_policy``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlmodel import Session
from torch import nn

from app.core.db import make_engine
from app.core.errors import NotFound
from app.data import registry
from app.ml.checkpoint import load_checkpoint
from app.ml.policy import METHODS as EXACT
from app.ml.sisa import is_sisa
from app.ml.spec import SPLITS, Example, ModelSpec
from app.ml.specs import get_spec
from app.services.models import jobs
from app.services.models import catalog as model_service
from bench.unlearning_parts.configs import SIZES, draw_forget_set
from bench.unlearning_parts.measure import Stage, bench_stage
from workers.verify.report import Gates


@dataclass
class Registered:
    """The served model and its registry data, as read from the database."""

    name: str
    spec_name: str  # the entry point (``Model.spec``); ``spec.name`` is the spec class's own name
    spec: ModelSpec
    config: dict[str, Any]
    version: int
    sha256: str
    examples: list[Example]
    model: nn.Module
    meta: dict[str, Any]

    @property
    def key(self) -> str:  # the ``config`` column of its rows
        return f"model:{self.name}"

    @property
    def exact_fallback(self) -> str:
        return "sisa" if is_sisa(self.meta) else "retrain"


def safe_url(db_url: str) -> str:
    return make_url(db_url).render_as_string(hide_password=True)


def load_registered(db_url: str, name: str, device, workdir: Path, data_root: Path) -> Registered:
    """Read model ``name`` from ``db_url`` (``NotFound`` if absent) and load its serving version;
    ``data_root`` is the stack's data directory (where a ``columnar`` store keeps its parts)."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        raise NotFound(f"No Lethe database at {url.database!r} (--db-url).")  # make_engine would create one
    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            row = model_service.get_model(session, name)
            if row.serving_version is None:
                raise NotFound(f"Model {name!r} has no serving version.")
            version = model_service.get_version(session, name, row.serving_version)
            owed = jobs.owed_subjects(session, name)
            examples = [e for split in SPLITS for e in registry.live(session, row, split, owed, data_root)]
            spec_name, config = row.spec, dict(row.config)
            artifact, number, sha = version.artifact_path, version.number, version.sha256
    finally:
        engine.dispose()
    spec = get_spec(spec_name)
    model, meta, _ = load_checkpoint(artifact, spec, expected_sha256=sha, device=device)
    return Registered(name, spec_name, spec, config, number, sha, examples, model, private_companions(meta, workdir))


def private_companions(meta: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """``meta`` with its companion directories (``meta[key]["dir"]``) copied under ``workdir``."""
    meta = dict(meta)
    for key in ("sisa", "update_log"):
        section = meta.get(key)
        if isinstance(section, dict) and section.get("dir"):
            copy = workdir / f"{key}-{Path(section['dir']).name}"
            shutil.copytree(section["dir"], copy)
            meta[key] = {**section, "dir": str(copy.resolve())}
    return meta


def skipped_methods(reg: Registered, methods: list[str]) -> dict[str, str]:
    """Methods the engine would never run on this served model, and why (as ``method_chain`` decides)."""
    out = {}
    for name in methods:
        if name == "sisa" and not is_sisa(reg.meta):
            out[name] = "not a SISA ensemble (registered without training.sisa)"
        elif name == "amnesiac" and not isinstance(reg.meta.get("update_log"), dict):
            out[name] = "no update log (registered without training.update_log)"
        elif is_sisa(reg.meta) and not EXACT[name]:
            out[name] = "approximate candidates are never served beside SISA slices (engine.method_chain)"
    return out


def bench_model(reg: Registered, args: argparse.Namespace, device, bar, log) -> tuple[list[dict], dict]:
    """Rows of every seed and forget set of the registered model, and its ``infos`` entry."""
    examples = reg.examples
    train = [e for e in examples if e.split == "train"]
    test = [e for e in examples if e.split == "test"]
    holdout = [e for e in examples if e.split == "holdout"]
    if not train or not holdout:
        raise NotFound(f"Model {reg.name!r} has no live train or holdout samples to measure on.")
    method_config = reg.config.get("methods") or {}
    skipped = skipped_methods(reg, args.methods)
    for name, why in skipped.items():
        log(f"{reg.key}: {name} skipped: {why}")
    sizes = args.sizes or tuple(SIZES)
    info = {"config": reg.key, "spec": reg.spec.name, "model": f"registered {reg.name} v{reg.version} "
            f"(spec {reg.spec_name}; {reg.spec.description})", "train_seconds": None, "n_train": len(train),
            "n_test": len(test), "n_holdout": len(holdout), "n_train_subjects": len({e.subject_id for e in train}),
            "recipe": vars(reg.spec.recipe), "method_config": method_config, "large": False, "sizes": list(sizes),
            "reference": reg.config.get("reference"), "skipped": skipped, "registered": reg.name,
            "version": reg.version, "sha256": reg.sha256, "db_url": safe_url(args.db_url),
            "chain_before": reg.config.get("chain")}
    rows: list[dict] = []
    for seed in range(args.seeds):
        for label in sizes:
            fs = draw_forget_set(reg.spec, examples, label, seed)
            st = Stage(reg.spec, fs, test, holdout, device, seed, reg.config.get("reference"), Gates(), method_config,
                       chain=reg.config.get("chain"))
            base = {"config": reg.key, "spec": reg.spec.name, "forget_set": label, "n_subjects": len(fs.subjects),
                    "n_forget": len(fs.forget), "seed": seed}
            rows += bench_stage(st, base, reg.model, reg.meta, {}, skipped, train, args, bar, audit=True)
    return rows, info


def record_chain(*, name: str, chain: list[str], db_url: str, url: str | None = None, key: str | None = None,
                 http=None) -> tuple[list[str], str]:  # noqa: ANN001 - an httpx.Client (a TestClient in tests)
    """Set model ``name``'s ``auto`` chain; returns (the chain before, how it was set).

    Through the API when a stack is named (``url`` / ``key``, ``LETHE_URL`` / ``LETHE_KEY``) or
    ``http`` is given, as ``lethe models policy`` would; else directly in ``db_url``.
    """
    if http is not None or url or key or os.environ.get("LETHE_URL") or os.environ.get("LETHE_KEY"):
        from app.cli.models import Remote, call, client

        c = http or client(Remote(url=url, key=key))
        try:
            before = call(c, "GET", f"/v1/models/{name}/policy")["chain"]
            after = call(c, "PUT", f"/v1/models/{name}/policy", json={"chain": chain})["chain"]
        finally:
            if http is None:
                c.close()
        if after != chain:
            raise RuntimeError(f"the stack answered chain {after}, not {chain}")
        return before, f"via PUT {c.base_url}/v1/models/{name}/policy"
    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            before = model_service.policy_of(session, name=name)["chain"]
            model_service.set_policy(session, name=name, changes={"chain": chain}, actor="bench")
            session.commit()
    finally:
        engine.dispose()
    return before, f"in the database {safe_url(db_url)} (models.set_policy, actor bench)"
