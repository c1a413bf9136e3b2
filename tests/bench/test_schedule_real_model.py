"""``bench/schedule.py --real --model``: a bench configuration reaches a fresh stack as a spec plugin.

The stack is a subprocess that finds specs by entry point (``lethe.models``); ``spec_plugin`` must
make the unlearning bench's ``movielens-30s`` class resolvable there without installing anything,
and leave the demo model's stack environment as it was. No stack is started (seconds, not minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench import schedule as bench_schedule


def test_demo_model_needs_no_plugin() -> None:
    with bench_schedule.spec_plugin("movielens") as env:
        assert env == {"LETHE_DEMO_MODELS": "movielens"}


def test_30s_model_resolves_in_a_subprocess() -> None:
    with bench_schedule.spec_plugin("movielens-30s") as env:
        assert env["LETHE_DEMO_MODELS"] == "movielens-30s=movielens-30s"
        code = ("from app.ml.specs import get_spec; s = get_spec('movielens-30s'); "
                "print(type(s).__name__, s.name, s.recipe.epochs)")
        out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": env["PYTHONPATH"]})
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == ["MovieLens30s", "movielens", "13"]
        plugin_dir = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    assert not plugin_dir.exists()  # removed with the stack


def test_percentile_p95_not_below_p50() -> None:
    xs = [2.63, 51.4]
    assert bench_schedule.percentile(xs, 95) >= bench_schedule.statistics.median(xs)
