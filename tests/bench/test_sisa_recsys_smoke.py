"""Smoke test of ``bench/sisa_recsys.py``: ``--quick`` (80 MovieLens users, S = 2 and 4) runs the
full retrain, the SISA trainings and one erasure per user picked, and writes its table. ~10 s of CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_sisa_recsys_bench_quick(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sisa_recsys.py"), "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "sisa_recsys-quick.json").read_text())
    assert [run["shards"] for run in data["sisa"]] == [2, 4]
    for run in data["sisa"]:
        assert [e["user"] for e in run["erasures"]] == data["users"]  # the same users for every S
        assert all(e["seconds"] > 0 for e in run["erasures"])
        assert run["speedup_median"] == pytest.approx(
            sorted(data["full"]["seconds"])[len(data["full"]["seconds"]) // 2] / run["erase_median_s"])
    assert "speed-up (median)" in (tmp_path / "sisa_recsys-quick.md").read_text()
