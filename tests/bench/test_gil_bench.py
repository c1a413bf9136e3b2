"""``bench/gil.py`` runs and prints its table: every row a rate and a share of the loop alone (the
numbers themselves are timing, read from the benchmark, not asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gil_bench_prints_each_arm_against_the_loop_alone() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gil.py"), "--steps", "20"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    by = {label.strip(): (float(rate), float(share)) for label, rate, share in rows[1:]}
    assert list(by)[0] == "alone" and by["alone"][1] == 1.0
    assert any(k.startswith("beside a busy thread") for k in by) and "beside a busy process (workers/alongside.py)" in by
    assert all(rate > 0 for rate, _ in by.values())
    # the share is computed from the unrounded rates, the rates printed to 0.1: equal within rounding
    assert all(abs(share - rate / by["alone"][0]) <= 0.01 for rate, share in by.values())
