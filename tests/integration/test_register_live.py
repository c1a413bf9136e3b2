"""Registering a model on a running stack (issue 9): a production-like stack that starts with
zero models is ready, a model registered by CLI while the API runs is served by every replica
without a restart, and a broken registration is a clear error that leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.integration.conftest import ADMIN_KEY, ROOT, start_stack

pytestmark = pytest.mark.integration


def lethe(stack, *args: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LETHE_")},
           "LETHE_URL": stack.url, "LETHE_KEY": ADMIN_KEY}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_register_while_serving_on_every_replica(tmp_path: Path) -> None:
    stack, cleanup = start_stack(tmp_path, "postgresql", redis_db=3, api_workers=2, extra_env={"LETHE_MODELS": ""})
    try:
        with stack.client() as c:
            assert c.get("/readyz").status_code == 200  # ready with zero models
            assert c.get("/v1/models").json()["items"] == []
            assert c.post("/v1/models/toy-live/predict", json={"inputs": [{"x": [0.0] * 16}]}).status_code == 404
        out = lethe(stack, "models", "--json", "register", "toy-live", "--spec", "toy")
        assert out.returncode == 0, out.stderr
        view = json.loads(out.stdout)
        assert view["status"] == "completed" and view["result"]["version"] == 1, view
        deadline, replicas = time.monotonic() + 30, []
        with stack.client() as c:
            while time.monotonic() < deadline:
                replicas = c.get("/v1/models/toy-live").json()["replicas"]
                if len(replicas) == 2 and all(r["version"] == 1 for r in replicas):
                    break
                time.sleep(0.3)
            assert len(replicas) == 2 and {r["version"] for r in replicas} == {1}, replicas
            answers = [c.post("/v1/models/toy-live/predict", json={"inputs": [{"x": [0.1] * 16}]}) for _ in range(20)]
            assert {r.status_code for r in answers} == {200} and {r.json()["model_version"] for r in answers} == {1}
            # ... and it is a model like any other: an erasure completes on both replicas.
            rid = c.post("/v1/erasure-requests", json={"subject_id": "toy-05"}).json()["id"]
        assert stack.wait_status(rid, ("completed", "failed"))["status"] == "completed"

        # Broken registrations: a clear error, a failed exit code, nothing half-registered.
        unknown = lethe(stack, "models", "register", "ghost", "--spec", "no-such-spec")
        assert unknown.returncode == 2 and "unknown_spec" in unknown.stderr and "toy" in unknown.stderr
        bad = tmp_path / "bad.safetensors"
        save_file({"net.0.weight": torch.zeros(2, 2)}, str(bad))
        misfit = lethe(stack, "models", "register", "toy-misfit", "--spec", "toy", "--weights", str(bad))
        assert misfit.returncode == 1 and "do not fit spec 'toy'" in misfit.stdout, (misfit.stdout, misfit.stderr)
        assert "registering toy-misfit" in misfit.stderr  # the progress bar (human output)
        listed = json.loads(lethe(stack, "models", "--json", "list").stdout)
        assert [m["name"] for m in listed["items"]] == ["toy-live"]
        assert not (tmp_path / "artifacts" / "toy-misfit").exists()
    finally:
        cleanup()
