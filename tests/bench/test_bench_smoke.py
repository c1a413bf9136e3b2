"""Smoke tests of the benchmarks: each script runs with ``--quick`` (tiny counts) against a real stack
and must write JSON with the expected keys and zero failures, so a broken benchmark fails ``make test``.

Runs on PostgreSQL + Redis (DB index 14, so a benchmark run by hand on 15 is not disturbed).
Most of each test's time is the stack's start (bootstrap + worker + API imports).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import pg_available, redis_available

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def run_bench(name: str, out: Path, *extra: str) -> dict:
    if not (redis_available() and pg_available()):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL and Redis must be reachable in CI")
        pytest.skip("PostgreSQL or Redis not reachable")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick", "--out", str(out),
                           "--redis-db", "14", *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / f"{name}.md").exists()
    return json.loads((out / f"{name}.json").read_text())


def test_swap_quick(tmp_path: Path) -> None:
    data = run_bench("swap", tmp_path)
    assert {"total_requests", "failures", "before", "during", "p99_ratio_during_before", "swaps_observed",
            "stale_after_completion", "erasures"} <= data.keys()
    assert data["total_requests"] > 0
    assert data["failures"] == 0 and data["stale_after_completion"] == 0
    assert data["swaps_observed"] == data["swaps_expected"] == 1


def test_batching_quick(tmp_path: Path) -> None:
    data = run_bench("batching", tmp_path)
    assert {"single", "batch", "ratio_wall", "failures", "jobs"} <= data.keys()
    assert data["failures"] == 0
    assert data["single"]["status"] == "completed" and data["single"]["wall_s"] > 0
    assert data["batch"]["jobs_from_results"] >= 1 and data["batch"]["statuses"] == {"completed": 5}


def test_intake_quick(tmp_path: Path) -> None:
    data = run_bench("intake", tmp_path)
    assert {"phases", "failures", "intake_no_data_rps", "intake_queued_rps", "predict_rps"} <= data.keys()
    assert data["failures"] == 0
    assert all(ph["requests"] > 0 for ph in data["phases"].values())
    assert data["queued_targets_in_db"] > 0


def test_soak_quick(tmp_path: Path) -> None:
    data = run_bench("soak", tmp_path, "--sequential", "1", "--burst", "2", "--retrain-seeds", "1")
    assert data["total"] == 3 and data["completed"] == 3 and data["failed"] == 0, data


def test_data_scale_quick(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "data_scale.py"), "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "data_scale.json").read_text())
    for store in ("columnar", "rows"):
        res = data["results"][store]
        assert res["ingest"]["ingested"] == data["sizes"][store] and res["collect"]["forget"] > 0
        assert res["erase"]["status"] == "completed", res["erase"]
    assert data["results"]["columnar"]["collect"]["manifest"]["store"] == "columnar"


def test_delta_scale_quick(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "delta_scale.py"), "--quick", "--no-columnar",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "delta_scale.json").read_text())["delta"]
    assert data["collect"]["forget"] > 0 and data["collect"]["manifest"]["store"] == "delta"
    assert data["erase"]["1"]["subjects"] == 1 and data["erase"]["1"]["rows_deleted"] > 0
    assert data["erase"]["1000"]["subjects"] > 1 and data["erase"]["1000"]["files_removed"] > 0
