"""The worker's CUDA path (skipped without a CUDA device; CI has none, the lent GPU machine runs it).

Every registered method runs on a CUDA copy of the served toy model; a whole job runs through the
pipeline with ``device=cuda`` and publishes a checkpoint that a CPU-only API replica loads.
"""

from __future__ import annotations

import copy

import pytest
import torch
from sqlmodel import Session, select

from app.core.security import subject_key
from app.db.models import ErasureRequest, ModelVersion
from app.ml.checkpoint import load_checkpoint
from app.ml.train import evaluate
from app.services.requests import erasure
from workers import pipeline
from workers.unlearning import METHODS, get_method
from workers.unlearning.base import UnlearnContext

from tests.workers.conftest import FORGET_SUBJECTS

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")]

CUDA = torch.device("cuda")
# Methods that need a model registered with extra state (SISA slices, an update log) have their own tests.
NEEDS_REGISTRATION = {"sisa", "amnesiac"}


@pytest.mark.parametrize("name", sorted(set(METHODS) - NEEDS_REGISTRATION))
def test_every_method_runs_on_cuda(name, toy, toy_trained, toy_sets) -> None:  # noqa: ANN001
    model, meta = toy_trained
    served = copy.deepcopy(model).to(CUDA)
    ctx = UnlearnContext(spec=toy, model=served, meta=meta, forget=toy_sets["forget"], retain=toy_sets["retain"],
                         forget_subject_ids=FORGET_SUBJECTS, recipe=toy.recipe, device=CUDA, seed=1,
                         config={}, calibration=toy_sets["test"])
    result = get_method(name)(ctx)
    params = list(result.model.parameters())
    assert params and all(p.device.type == "cuda" for p in params)
    assert all(torch.isfinite(p).all() for p in params)
    # Utility survives on the device (majority class of the toy test split is well below this).
    assert evaluate(toy, result.model, result.meta, toy_sets["test"], device=CUDA) > 0.6


def test_a_job_on_cuda_publishes_weights_a_cpu_replica_loads(session: Session, settings, toy_model) -> None:  # noqa: ANN001
    w = pipeline.Worker(settings=settings.model_copy(update={"job_lease_s": 3600, "deploy_timeout_s": 2}),
                        engine=None, device=CUDA, owner="cuda-test", publish=lambda n, v: None, sleep=lambda s: None)
    req, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, "toy-02"))
    session.commit()
    assert len(pipeline.drain(w, "toy")) == 1
    session.refresh(req)
    assert req.status == "completed"
    v2 = session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy", ModelVersion.number == 2)).one()
    from app.ml.specs import get_spec

    model, _, _ = load_checkpoint(v2.artifact_path, get_spec("toy"), expected_sha256=v2.sha256, device="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert session.get(ErasureRequest, req.id).result["models"]["toy"]["version_after"] == 2
