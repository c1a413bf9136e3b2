"""Dockerfile, .dockerignore and docker-compose.yml are linted and validated (no Docker engine needed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is a dev dependency and must be installed")
    return path


def test_dockerfile_passes_hadolint() -> None:
    r = subprocess.run([_tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def compose_services() -> dict[str, dict]:
    env = {**os.environ, "POSTGRES_PASSWORD": "x", "LETHE_SUBJECT_KEY_SECRET": "y",
           "LETHE_CALLBACK_HMAC_SECRET": "z"}
    r = subprocess.run([_tool("docker-compose"), "config", "--format", "json"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["services"]


def dockerfile_targets() -> list[str]:
    return re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), flags=re.M)


def test_compose_file_is_valid_and_complete() -> None:
    services = compose_services()
    assert {"api", "worker", "housekeeping", "beat", "redis", "postgres", "bootstrap", "migrate"} <= set(services)
    assert services["api"]["environment"]["LETHE_ENV"] == "production"
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # Long-running services come back after a crash (Celery can exit on an unrecoverable broker loss).
    one_shot = {"bootstrap", "migrate"}
    assert {n for n, svc in services.items() if svc.get("restart") == "unless-stopped"} == set(services) - one_shot
    # Production registers no model: nothing in compose asks for one.
    assert not [n for n, svc in services.items() if {"LETHE_MODELS", "LETHE_DEMO_MODELS"} & set(svc.get("environment") or {})]


def test_compose_migrates_before_anything_uses_the_database() -> None:
    services = compose_services()
    assert services["migrate"]["command"] == ["lethe", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("bootstrap", "api", "worker", "housekeeping", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_compose_images_are_the_dockerfile_targets() -> None:
    services = compose_services()
    assert {"api", "worker"} <= set(dockerfile_targets())
    lethe = {n: svc for n, svc in services.items() if "build" in svc}
    assert {n: svc["build"]["target"] for n, svc in lethe.items()} == {
        "migrate": "api", "bootstrap": "api", "api": "api", "housekeeping": "api", "beat": "api", "worker": "worker"}
    assert "TORCH_INDEX_URL" in services["worker"]["build"]["args"]


def test_celery_services_have_their_own_health_checks() -> None:
    services = compose_services()
    check = lambda name: services[name]["healthcheck"]["test"][1:4]  # noqa: E731
    assert check("api") == ["python", "/srv/lethe/deploy/healthcheck.py", "api"]
    assert check("worker") == check("housekeeping") == ["python", "/srv/lethe/deploy/healthcheck.py", "worker"]
    assert check("beat") == ["python", "/srv/lethe/deploy/healthcheck.py", "beat"]
    beat = services["beat"]
    assert beat["healthcheck"]["test"][-1] == beat["command"][beat["command"].index("-s") + 1]
    assert all(services[n]["healthcheck"] == {"disable": True} for n in ("migrate", "bootstrap"))


def test_dockerfile_has_a_cpu_api_and_a_cuda_worker_target() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert dockerfile_targets() == ["base", "torch-cpu", "torch-cuda", "api", "worker"]
    assert re.search(r"^FROM torch-cpu AS api$", text, flags=re.M) and re.search(r"^FROM torch-cuda AS worker$",
                                                                                  text, flags=re.M)
    pinned = re.findall(r"^ARG TORCH_VERSION=(\S+)$", text, flags=re.M)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(pinned) == {next(d for d in project if d.startswith("torch==")).removeprefix("torch==")}
    assert re.search(r"^ARG TORCH_INDEX_URL=\S+$", text, flags=re.M)
    # What `lethe migrate` and the health checks need is in the image.
    for path in ("alembic.ini", "migrations", "deploy/healthcheck.py"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", text, flags=re.M), path


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_context() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "var", ".env", "bench/results", "tests", "**/__pycache__"} <= ignored
    assert "!deploy/healthcheck.py" in ignored


def test_compose_refuses_missing_secrets() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "LETHE_SUBJECT_KEY_SECRET",
                                                                 "LETHE_CALLBACK_HMAC_SECRET")}
    r = subprocess.run([_tool("docker-compose"), "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode != 0
