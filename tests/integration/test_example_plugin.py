"""The example plugin (examples/lethe-breast-cancer) end to end, through the public contract only.

What a platform engineer does with a model of their own (DESIGN.md 4c, the plugin's README):
pip-install a package that publishes a ``ModelSpec`` under the entry-point group ``lethe.models``,
``lethe models register bc --spec breast_cancer``, predict, erase one patient over HTTP and fetch
the signed certificate. Nothing here imports the plugin or Lethe's internals into the test
process: the stack and the CLI run as subprocesses, everything else is HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ADMIN_KEY, ROOT, Stack, start_stack

pytestmark = pytest.mark.integration

PLUGIN_DIR = ROOT / "examples" / "lethe-breast-cancer"
MODEL = "bc"
SPEC = "breast_cancer"
# patient-0001 is in the train split (a hash of the id decides; see the plugin's spec.py).
PATIENT = "patient-0001"
REDIS_DBS = {"sqlite": 6, "postgresql": 5}  # no other integration test uses these


def run(argv: list[str], *, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def plugin_installed() -> None:
    """Install the plugin (editable, no dependency resolution) unless this venv already has it."""
    probe = [sys.executable, "-c", "import lethe_breast_cancer; print(lethe_breast_cancer.__file__)"]
    found = run(probe, timeout=60)
    if found.returncode == 0 and Path(found.stdout.strip()).resolve().is_relative_to(PLUGIN_DIR.resolve()):
        return
    if run([sys.executable, "-m", "pip", "--version"], timeout=60).returncode != 0:
        pytest.skip("pip is not available in this environment: cannot install the example plugin")
    installed = run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                     "-e", str(PLUGIN_DIR)], timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    found = run(probe, timeout=60)
    assert found.returncode == 0, found.stderr


def test_plugin_unit_checks(plugin_installed: None) -> None:
    """The plugin's own tests (training with app.ml.train, input checks) pass where Lethe is installed."""
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN_DIR / "tests")],
               timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def lethe_cli() -> list[str]:
    """The installed ``lethe`` console script beside this interpreter, else ``python -m app.cli``."""
    script = Path(sys.executable).with_name("lethe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def wait_predict(c: httpx.Client, body: dict, timeout: float = 120) -> httpx.Response:
    """Predict until the model is served (503 model_not_ready while a replica loads it)."""
    deadline = time.monotonic() + timeout
    while True:
        r = c.post(f"/v1/models/{MODEL}/predict", json=body)
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        time.sleep(0.5)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_register_predict_erase_certify(plugin_installed: None, tmp_path: Path, backend: str) -> None:
    t0 = time.monotonic()
    stack, cleanup = start_stack(tmp_path, backend, redis_db=REDIS_DBS[backend], extra_env={"LETHE_JOB_SEED": "0"})
    timings: dict[str, float] = {"stack_ready_s": time.monotonic() - t0}
    try:
        _scenario(stack, tmp_path, timings)
    finally:
        cleanup()
        timings["total_s"] = time.monotonic() - t0
        print("example plugin timings:", json.dumps({k: round(v, 1) for k, v in timings.items()}))


def _scenario(stack: Stack, tmp_path: Path, timings: dict[str, float]) -> None:
    # Register by the CLI, as the README says; it answers once the model is registered (or failed).
    t = time.monotonic()
    registered = run([*lethe_cli(), "models", "register", MODEL, "--spec", SPEC, "--url", stack.url,
                      "--key", ADMIN_KEY], timeout=600)
    timings["register_s"] = time.monotonic() - t
    assert registered.returncode == 0, (f"rc={registered.returncode}\nstdout:\n{registered.stdout[-3000:]}\n"
                                        f"stderr:\n{registered.stderr[-3000:]}\nstack:\n{stack.logs()}")

    with stack.client() as c:
        described = c.get(f"/v1/models/{MODEL}")
        assert described.status_code == 200, described.text
        model = described.json()
        assert model["input_schema"]["required"][0] == "mean_radius" and len(model["input_schema"]["required"]) == 30
        body = model["predict_example"]  # patient-0001's measurements: a malignant mass

        t = time.monotonic()
        before = wait_predict(c, body)
        timings["first_predict_s"] = time.monotonic() - t
        assert before.status_code == 200, before.text
        assert before.json()["model_version"] == 1
        (prediction,) = before.json()["predictions"]
        assert prediction["label"] == 0 and prediction["probability"] > 0.9, prediction
        # v1 generalises: its recorded test accuracy is far above the majority class (58 % of test patients).
        (v1,) = [v for v in model["versions"] if v["version"] == 1]
        assert v1["metrics"]["test_acc"] >= 0.9, v1["metrics"]

        # The plugin's input checks reach the caller as a 422 problem naming the field, not its value.
        bad = {"inputs": [{**body["inputs"][0], "mean_texture": -12.345}]}
        refused = c.post(f"/v1/models/{MODEL}/predict", json=bad)
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "mean_texture" in refused.text and "12.345" not in refused.text

        held = c.get(f"/v1/subjects/{PATIENT}")
        assert held.status_code == 200, held.text
        assert held.json()["samples"].get(MODEL, {}).get("train") == 1, held.json()

        # Erase the patient over HTTP and wait for completion.
        t = time.monotonic()
        created = c.post("/v1/erasure-requests", json={"subject_id": PATIENT, "reason": "Art. 17"},
                         headers={"Idempotency-Key": "example-plugin-1"})
        assert created.status_code == 202, created.text
        rid = created.json()["id"]
        done = stack.wait_status(rid, ("completed", "failed", "no_data"), timeout=420)
        timings["erasure_s"] = time.monotonic() - t
        assert done["status"] == "completed", f"{json.dumps(done)[:3000]}\nstack:\n{stack.logs()}"
        result = done["result"]["models"][MODEL]
        assert result["version_after"] == 2 and result["attempts"][-1]["passed"], result

        held = c.get(f"/v1/subjects/{PATIENT}").json()
        assert held["samples"] == {} and held["suppressed"] is True, held
        after = c.post(f"/v1/models/{MODEL}/predict", json=body)
        assert after.status_code == 200 and after.json()["model_version"] == 2, after.text

        # The signed certificate names the model and checks offline with the CLI.
        cert = c.get(f"/v1/erasure-requests/{rid}/certificate")
        assert cert.status_code == 200, cert.text
        assert MODEL in cert.text
        path = tmp_path / "certificate.json"
        path.write_text(cert.text)
    verified = run([*lethe_cli(), "verify-certificate", str(path), "--url", stack.url], timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # No personal data in the logs of the API and the worker: the patient's ID never appears.
    assert PATIENT not in (stack.data_dir / "run.log").read_text(errors="replace")


def test_entry_point_resolves_to_a_model_spec(plugin_installed: None) -> None:
    """What Lethe looks up: the entry point ``breast_cancer`` of group ``lethe.models``, a ModelSpec subclass."""
    probe = ("from importlib.metadata import entry_points\n"
             "from app.ml.spec import ModelSpec\n"
             "cls = entry_points(group='lethe.models')['breast_cancer'].load()\n"
             "print(cls.__module__, cls.__name__, issubclass(cls, ModelSpec), cls.name)")
    found = run([sys.executable, "-c", probe], timeout=120)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["lethe_breast_cancer.spec", "BreastCancerSpec", "True", SPEC]
