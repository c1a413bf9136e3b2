"""SISA shards fanned out as one task per shard (issue 20, app/ml/sisa_tasks.py): real processes
run the shard tasks; one is killed mid-way, and the job still publishes once and completes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlmodel import select

from app.core.security import subject_key
from app.db.models import ErasureRequest, ModelVersion
from app.ml import sisa
from app.ml.checkpoint import load_checkpoint
from app.ml.sisa_tasks import FanOut, run_shard_file
from app.services.models import registration
from app.services.models import catalog as models
from app.services.requests import erasure
from workers import pipeline

ROOT = Path(__file__).resolve().parents[2]
# The first delivery dies (SIGKILL, no clean-up) right after the first stage checkpoint it writes.
DYING = """
import os, signal, sys
import app.ml.sisa as sisa
real = sisa.save_checkpoint
def save(path, model, meta, info):
    sha = real(path, model, meta, info)
    if info.get("sisa_stage") is not None:  # the first stage it trained, before it reports
        os.kill(os.getpid(), signal.SIGKILL)
    return sha
sisa.save_checkpoint = save
from app.ml.sisa_tasks import run_shard_file
run_shard_file(sys.argv[1])
"""
HEALTHY = "import sys; from app.ml.sisa_tasks import run_shard_file; run_shard_file(sys.argv[1])"


@pytest.mark.parametrize("backend", ["postgresql"])
def test_shard_tasks_with_one_killed_mid_way_publish_once_and_complete(session, settings) -> None:  # noqa: ANN001
    registration.register_demo_model(session, name="toy", secret=settings.subject_key_secret,
                                     artifacts_dir=settings.artifacts_dir / "fanout", device="cpu",
                                     training={"sisa": {"shards": 4, "slices": 3}})
    session.commit()
    v1 = session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy")).one()
    # Two training subjects in two different shards.
    by_shard: dict[int, str] = {}
    for sid in ("toy-02", "toy-03", "toy-04", "toy-07", "toy-08", "toy-09", "toy-12", "toy-13", "toy-14"):
        shard, _ = sisa.assign(subject_key(settings.subject_key_secret, sid), 4, 3)
        by_shard.setdefault(shard, sid)
    shards = sorted(by_shard)[:2]
    assert len(shards) == 2
    ids = []
    for k in shards:
        req, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, by_shard[k]),
                                        policy="sisa")
        ids.append(req.id)
    session.commit()

    procs: list[subprocess.Popen] = []

    def send(task_file: str) -> None:  # a broker delivering to a fresh worker process per task
        code = DYING if not procs else HEALTHY
        procs.append(subprocess.Popen([sys.executable, "-c", code, task_file], cwd=ROOT))

    runner = FanOut(send, claim_timeout_s=120, stale_s=5, poll_s=0.1)
    published: list[tuple[str, int]] = []
    w = pipeline.Worker(settings=settings.model_copy(update={"job_lease_s": 3600, "deploy_timeout_s": 2}),
                        engine=None, device=torch.device("cpu"), owner="test-worker",
                        publish=lambda n, v: published.append((n, v)), sleep=lambda s: None)
    previous = sisa.set_shard_runner(runner)
    try:
        assert len(pipeline.drain(w, "toy")) == 1
    finally:
        sisa.set_shard_runner(previous)
        for p in procs:
            p.wait(timeout=120)
    assert len(procs) == 2 and procs[0].returncode == -9 and procs[1].returncode == 0
    # The killed shard was trained by the job (a healthy task heartbeats every 2 s; under heavy load the
    # job may also take over a slow one, which writes the same bytes and changes nothing).
    assert shards[0] in runner.took_over
    assert published == [("toy", 2)]  # once
    for rid in ids:
        req = session.get(ErasureRequest, rid)
        session.refresh(req)
        assert req.status == "completed", req.error
    v2 = session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy", ModelVersion.number == 2)).one()
    fanned, meta, _ = load_checkpoint(v2.artifact_path, models.spec_of(session, "toy"), expected_sha256=v2.sha256)
    out = Path(meta["sisa"]["dir"])
    assert not list(out.glob("shard-*"))  # task files (the shards' samples), claims and reports are gone
    assert set(meta["sisa"]["slice_sha256"]) == {sisa.slice_name(k, r) for k in range(4) for r in (None, 0, 1, 2)}
    assert fanned.members and len(fanned.members) == 4


def test_a_shard_has_one_claimant_and_a_silent_claim_is_taken_over(tmp_path) -> None:
    """A task that reaches a worker while another run holds the shard's claim does nothing (two runs
    would race on the shard's files, equal in bytes only on identical hardware and thread counts);
    a claim silent for ``stale_s`` (its claimant died) is taken over; the ensemble then equals the
    one trained in process."""
    import os
    import time

    from app.ml.sisa_tasks import _paths
    from app.ml.specs import get_spec

    spec = get_spec("toy")
    train = [e for e in spec.load_examples() if e.split == "train"]
    orig, meta = sisa.train_sisa(spec, train, out_dir=tmp_path / "orig", device="cpu", shards=4, slices=2)
    by_shard: dict[int, str] = {}
    for e in train:
        by_shard.setdefault(sisa.assign(e.subject_id, 4, 2)[0], e.subject_id)
    keys = {by_shard[k] for k in sorted(by_shard)[:2]}
    retain = [e for e in train if e.subject_id not in keys]
    seen: list[str] = []

    def send(task_file: str) -> None:
        path = Path(task_file)
        _, claim, done = _paths(path.parent, int(path.name.split("-")[1].split(".")[0]))
        if not seen:  # the first shard: another run holds it, then dies
            claim.touch()
            assert run_shard_file(task_file, stale_s=30) is None and not done.exists()
            os.utime(claim, (time.time() - 60, time.time() - 60))
        seen.append(task_file)
        assert run_shard_file(task_file, stale_s=30) is not None and done.exists()

    previous = sisa.set_shard_runner(FanOut(send, claim_timeout_s=60, poll_s=0.05))
    try:
        fanned, fanned_meta, starts = sisa.unlearn_sisa(spec, orig, meta, retain=retain, forget_keys=keys,
                                                        device="cpu", out_dir=tmp_path / "fanned")
    finally:
        sisa.set_shard_runner(previous)
    inline, _, _ = sisa.unlearn_sisa(spec, orig, meta, retain=retain, forget_keys=keys, device="cpu",
                                     out_dir=tmp_path / "inline")
    assert len(seen) == len(starts) == 2
    for (name, a), b in zip(fanned.state_dict().items(), inline.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
