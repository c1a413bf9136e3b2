"""``lethe bench NAME [ARGS]``: run one benchmark script from ``bench/``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def bench_names() -> list[str]:
    """The benchmarks ``lethe bench NAME`` runs: one script per name in bench/ (soak, swap, ...)."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem != "common")



def add_bench_command(app: typer.Typer) -> None:
    """``bench`` on the top-level app."""

    # Everything after NAME goes to the script, --help included (allow_interspersed_args=False).
    @app.command("bench", help="run a benchmark from bench/", context_settings={"allow_interspersed_args": False})
    def bench(name: Annotated[str, typer.Argument(help=f"benchmark name: {', '.join(bench_names())}")],
              args: Annotated[list[str] | None, typer.Argument(help="passed on to the script")] = None) -> int:
        if name not in bench_names():
            raise typer.BadParameter(f"no benchmark {name!r} in bench/", param_hint="NAME")
        return subprocess.call([sys.executable, str(BENCH_DIR / f"{name}.py"), *(args or [])])
