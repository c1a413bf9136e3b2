"""Dockerfile and docker-compose.yml are linted and validated (no Docker engine needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def test_compose_file_is_valid_and_complete() -> None:
    env = {**os.environ, "POSTGRES_PASSWORD": "x", "LETHE_SUBJECT_KEY_SECRET": "y",
           "LETHE_CALLBACK_HMAC_SECRET": "z"}
    r = subprocess.run([_tool("docker-compose"), "config", "--format", "json"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json

    services = json.loads(r.stdout)["services"]
    assert {"api", "worker", "housekeeping", "beat", "redis", "postgres", "bootstrap"} <= set(services)
    assert services["api"]["environment"]["LETHE_ENV"] == "production"
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # Long-running services come back after a crash (Celery can exit on an unrecoverable broker loss).
    assert {n for n, svc in services.items() if svc.get("restart") == "unless-stopped"} == set(services) - {"bootstrap"}


def test_compose_refuses_missing_secrets() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "LETHE_SUBJECT_KEY_SECRET",
                                                                 "LETHE_CALLBACK_HMAC_SECRET")}
    r = subprocess.run([_tool("docker-compose"), "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode != 0
