"""Smoke test of ``bench/unlearning.py``: ``--quick`` on the toy spec writes a row per registered method.

No services needed (pure PyTorch); ~20 s of CPU, mostly the toy trainings of the methods and
the two audit reference models. A method that crashes on the toy model fails this test.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from workers.unlearning import METHODS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_unlearning_bench_quick_toy(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "unlearning.py"), "--quick", "--configs", "toy", "--sizes", "10%",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for suffix in ("md", "csv", "json", "png"):
        assert (tmp_path / f"unlearning.{suffix}").stat().st_size > 0

    with open(tmp_path / "unlearning.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    data = json.loads((tmp_path / "unlearning.json").read_text())
    assert set(data["columns"]) <= set(rows[0])
    assert {"config", "method", "status", "seconds", "speedup", "forget_acc", "retain_acc", "test_acc", "mia_auc",
            "gate_passed", "d_test_acc", "d_mia_auc", "audit_tpr1", "audit_tpr5"} <= set(rows[0])
    by_method = {r["method"]: r for r in rows}
    assert set(METHODS) | {"original", "auto"} <= set(by_method)
    for name in METHODS:
        assert by_method[name]["status"] in ("ok", "skipped"), (name, by_method[name]["note"])
    retrain = by_method["retrain"]
    assert retrain["status"] == "ok" and float(retrain["seconds"]) > 0 and float(retrain["speedup"]) == 1.0
    assert retrain["gate_passed"] == "True" and retrain["audit_tpr5"] != ""
    assert by_method["auto"]["note"].startswith("chose ")
    assert {"machine", "rows", "summary", "configs", "targets"} <= set(data)
    assert "Policy auto vs retrain" in (tmp_path / "unlearning.md").read_text()
