"""``bench/unlearning.py`` as a command: every option in ``--help`` (a ``%`` in a help string used to
crash argparse), ``lethe bench unlearning`` runs it, and usage errors are clear."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "unlearning.py"


def test_help_lists_every_option_and_bench_names_only_the_script() -> None:
    from app.cli.bench import bench_names

    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for option in ("--quick", "--configs", "--sizes", "--n-shadow", "--render", "--out", "--model", "--db-url",
                   "--record-chain", "--url", "--key"):
        assert option in proc.stdout
    assert "10%" in proc.stdout  # the help string that used to crash argparse
    via_cli = subprocess.run([sys.executable, "-m", "app.cli", "bench", "unlearning", "--help"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert via_cli.returncode == 0 and "--record-chain" in via_cli.stdout, via_cli.stderr[-3000:]
    assert "unlearning" in bench_names()
    parts = {p.stem for p in (ROOT / "bench" / "unlearning_parts").glob("*.py")}
    assert {"cli", "report", "measure"} <= parts and not parts & set(bench_names())


def test_record_chain_needs_a_model_and_an_unknown_model_is_a_clear_error(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from bench.unlearning_parts.cli import main

    with pytest.raises(SystemExit) as usage:
        main(["--record-chain"])
    assert usage.value.code == 2 and "--record-chain needs --model" in capsys.readouterr().err
    assert main(["--model", "nope", "--db-url", f"sqlite:///{tmp_path / 'absent.db'}"]) == 2
    assert "No Lethe database" in capsys.readouterr().err
    assert not (tmp_path / "absent.db").exists()  # not created by looking


def test_the_report_never_records_the_api_key_or_a_database_password() -> None:
    from bench.unlearning_parts.cli import redacted

    argv = ["--model", "m", "--key", "lethe_secret", "--db-url", "postgresql+psycopg://u:pw@db/lethe",
            "--key=lethe_secret", "--record-chain"]
    assert redacted(argv) == ["--model", "m", "--key", "***", "--db-url", "postgresql+psycopg://u:***@db/lethe",
                              "--key=***", "--record-chain"]


def test_exact_by_design_configs_are_epsilon_mode_only(capsys) -> None:  # noqa: ANN001
    from bench.unlearning_parts.cli import parse_args

    args = parse_args(["--epsilon", "3", "--configs", "wdbc_head,movielens-sisa,movielens"])
    assert args.configs == ["wdbc_head", "movielens-sisa", "movielens"]
    with pytest.raises(SystemExit):
        parse_args(["--configs", "wdbc_head"])  # the marginal protocol is an epsilon-mode run
    assert "unknown config" in capsys.readouterr().err
