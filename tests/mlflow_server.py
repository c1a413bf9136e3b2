"""A real MLflow tracking server on loopback for the publish-target tests (issue 19).

``make test`` installs it into ``.venv-mlflow`` (``make mlflow-server``; override the binary with
``LETHE_TEST_MLFLOW``). SQLite backend store and a local artifact root in a temp dir, artifacts served
through the server's proxy (``mlflow-artifacts:/``), telemetry off. Bound to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def mlflow_binary() -> Path:
    path = Path(os.environ.get("LETHE_TEST_MLFLOW", ROOT / ".venv-mlflow" / "bin" / "mlflow"))
    if not path.exists():
        raise RuntimeError(f"no MLflow server at {path}: run `make mlflow-server` (make test does) or set "
                           "LETHE_TEST_MLFLOW to an `mlflow` executable")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = root, port or free_port()
        self.artifacts = root / "artifacts"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0, *, wait: bool = True) -> float | None:
        """Start it and (``wait``) wait until it answers; returns the seconds it took."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        self.t0, self.timeout_s = time.monotonic(), timeout_s
        self.proc = subprocess.Popen(
            [str(mlflow_binary()), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.artifacts)],
            stdout=open(self.root / "server.log", "ab"), stderr=subprocess.STDOUT, env=env, cwd=self.root)
        return self.wait() if wait else None

    def wait(self) -> float:
        """Block until the server answers ``/health``; the seconds since ``start``."""
        t0, timeout_s = self.t0, self.timeout_s
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0, trust_env=False).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def files(self) -> list[Path]:
        return sorted(p for p in self.artifacts.rglob("*") if p.is_file())
