"""``bench/unlearning.py`` as a command: every option in ``--help`` (a ``%`` in a help string used to
crash argparse), ``lethe bench unlearning`` runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "unlearning.py"


def test_help_lists_every_option_and_bench_names_only_the_script() -> None:
    from app.cli import bench_names

    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for option in ("--quick", "--configs", "--sizes", "--n-shadow", "--render", "--out", "--methods"):
        assert option in proc.stdout
    assert "10%" in proc.stdout  # the help string that used to crash argparse
    via_cli = subprocess.run([sys.executable, "-m", "app.cli", "bench", "unlearning", "--help"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert via_cli.returncode == 0 and "--audit-sizes" in via_cli.stdout, via_cli.stderr[-3000:]
    assert "unlearning" in bench_names()
    parts = {p.stem for p in (ROOT / "bench" / "unlearning_parts").glob("*.py")}
    assert {"cli", "report", "measure"} <= parts and not parts & set(bench_names())

