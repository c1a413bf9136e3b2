"""``lethe`` command line: run the embedded stack, bootstrap, benchmarks, and drive a stack.

One module per command group, composed here: ``run`` (``run``, ``bootstrap``; its children are kept
by ``supervise``), ``bench``, ``migrate``, ``models``, ``erasure`` (``erase``, ``status``, ``requests``,
``retry``, ``verify-certificate``), ``audit`` and ``keys``. The remote commands talk to ``--url`` /
``LETHE_URL`` over the HTTP API: see ``app.cli.models``. The commands are typer's (issue 11 §2; rich
draws the tables and the progress bars). ``main(argv) -> int`` runs them the way the argparse CLI
before them did: it returns the command's exit code, and a usage error prints the usage and raises
``SystemExit(2)``.
"""

from __future__ import annotations

import sys

import typer
from typer import rich_utils

from app.cli.audit import audit_app
from app.cli.bench import add_bench_command
from app.cli.erasure import add_erasure_commands
from app.cli.keys import keys_app
from app.cli.migrate import migrate_command
from app.cli.models import models_app
from app.cli.run import add_run_commands

app = typer.Typer(name="lethe", help=__doc__.splitlines()[0].replace("``", ""))
add_run_commands(app)
add_bench_command(app)
app.command("migrate", help="upgrade the database schema to head (alembic); stamps a create_all schema")(
    migrate_command)
app.add_typer(models_app, name="models")
add_erasure_commands(app)
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")


def main(argv: list[str] | None = None) -> int:
    """Run ``lethe argv``; returns the exit code. A usage error shows the usage and exits 2."""
    command = typer.main.get_command(app)
    try:
        return command.main(args=argv, prog_name="lethe", standalone_mode=False) or 0
    except typer.TyperException as exc:  # typer's click raises its usage errors as these
        rich_utils.rich_format_error(exc)
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
