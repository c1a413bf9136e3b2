"""``lethe`` command line: run the embedded stack, bootstrap, benchmarks, and drive a stack.

``lethe run`` (what ``make run`` calls): create the DB, train and register the demo models
on first start, make sure an admin key exists, then start a real Celery worker process and
the API (uvicorn), and print a short summary: the URL, the docs and console URLs, where the
admin key and the logs are. In a terminal the children's output (the Celery banner, its
root-user warning, job logs) goes to ``<data_dir>/logs/`` so it does not bury the summary;
when stdout is not a terminal (a container's log collector, systemd, a test's log file) it
stays on stdout as before, where whatever collects it expects it (``--logs`` overrides).

The remote commands (``erase``, ``status``, ``requests``, ``retry``, ``audit``, ``keys``,
``models``) talk to ``--url`` / ``LETHE_URL`` over the HTTP API: see ``app.cli_models``.
The commands are typer's (issue 11 §2; rich draws the tables and the progress bars), thin
wrappers over the functions here and in ``app.cli_*``. ``main(argv) -> int`` runs them the way
the argparse CLI before them did: it returns the command's exit code, and a usage error prints
the usage and raises ``SystemExit(2)``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import httpx
import typer
from typer import rich_utils

from app.cli_audit import audit_app
from app.cli_erasure import add_erasure_commands
from app.cli_keys import keys_app
from app.cli_migrate import migrate_command
from app.cli_models import models_app
from app.cli_supervise import Child, Stopping, log_tail, stop_children, supervise, wait_ready
from app.core.config import Settings, get_settings

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


def bootstrap(settings: Settings, *, quiet: bool = False) -> str:
    """Create schema, register demo models, ensure an admin key. Returns the admin key."""
    from tqdm import tqdm

    from app.core.db import create_schema, session_scope
    from app.core.security import SCOPES
    from app.ml.train import demo_training
    from app.services import keys, models
    from workers.verify.calibrate import calibrate_reference  # the CLI composes app and workers

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    create_schema()
    for name, spec in settings.initial_models():
        with session_scope() as session:
            if models.get_model_or_none(session, name) is not None:
                continue
            bar = tqdm(total=100, desc=f"registering model {name} ({spec})", disable=quiet, unit="%")

            def progress(fraction: float, bar: tqdm = bar) -> None:
                bar.update(round(fraction * 100) - bar.n)

            t0 = time.monotonic()
            version = models.register_demo_model(
                session, name=name, secret=settings.subject_key_secret, artifacts_dir=settings.artifacts_dir,
                device=settings.device, progress=progress, calibrate=calibrate_reference, spec=spec,
                training=demo_training(name, spec=spec, sisa_models=settings.sisa_models,
                                       update_log_models=settings.update_log_models))
            session.commit()
            bar.close()
            if not quiet and version is not None:
                print(f"  {name}: v{version.number} in {time.monotonic() - t0:.1f}s, "
                      f"test accuracy {version.metrics.get('test_acc', float('nan')):.3f}")
    key_file = settings.data_dir / "admin.key"
    key = settings.bootstrap_admin_key or (key_file.read_text().strip() if key_file.exists() else None)
    with session_scope() as session:
        if key is None:
            row, key = keys.create_key(session, name="admin", scopes=list(SCOPES))
            key_file.write_text(key + "\n")
            key_file.chmod(0o600)
        else:
            keys.ensure_key(session, name="admin", scopes=list(SCOPES), key=key)
        session.commit()
    return key


def admin_key_notice(settings: Settings, key: str) -> str:
    """The admin key for the console; in production only where it is (container logs are shipped and kept)."""
    if settings.env != "production":
        return key
    if settings.bootstrap_admin_key:
        return "the one in LETHE_BOOTSTRAP_ADMIN_KEY"
    return f"in {settings.data_dir / 'admin.key'} (mode 0600)"


def child_env(settings: Settings) -> dict[str, str]:
    from app.core.queue import resolve_broker

    env = dict(os.environ)
    # Resolve once so the API and the worker agree on the broker.
    env["LETHE_BROKER_URL"] = resolve_broker(settings)
    env["LETHE_DATA_DIR"] = str(settings.data_dir.resolve())
    return env


def stack_children(settings: Settings, *, log_dir: Path | None = None) -> list[Child]:
    env = child_env(settings)
    out = (lambda name: open(log_dir / f"{name}.log", "ab")) if log_dir else (lambda name: None)  # noqa: E731
    worker_argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "unlearn,housekeeping",
                   "-c", "2", "-B", "--loglevel", "INFO",
                   "-s", str(settings.data_dir.resolve() / "celerybeat-schedule")]
    api_argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", settings.host, "--port", str(settings.port),
                "--workers", str(settings.api_workers), "--log-level", "warning",
                "--no-access-log"]  # access logs would carry subject IDs (/v1/subjects/{id})
    spawn = lambda name, argv: lambda: subprocess.Popen(  # noqa: E731
        argv, env=env, stdout=out(name), stderr=subprocess.STDOUT if log_dir else None)
    return [Child("worker", spawn("worker", worker_argv)), Child("api", spawn("api", api_argv))]


def run_summary(settings: Settings, key: str, log_paths: list[Path]) -> str:
    """What ``lethe run`` prints once ready: where everything is, nothing else."""
    url = settings.base_url
    key_file = settings.data_dir / "admin.key"
    where = f" (kept in {key_file})" if not settings.bootstrap_admin_key and key_file.exists() else ""
    lines = [f"Lethe is serving at {url}  (docs: {url}/docs)",
             f"  console:   {url}/console",
             f"  admin key: {admin_key_notice(settings, key)}" + (where if settings.env != "production" else ""),
             f"  logs:      {', '.join(str(p) for p in log_paths) or 'this output'}"]
    if settings.env != "production":
        lines.append(f'Try: curl -s -H "Authorization: Bearer {key}" {url}/v1/models')
    lines.append("     lethe erase SUBJECT --follow; lethe requests; lethe audit tail   (Ctrl-C stops)")
    return "\n".join(lines)


def cmd_run(settings: Settings, *, logs: str = "auto") -> int:
    print(f"Lethe: preparing {settings.db_url.split('://')[0]} database and demo models ...")
    key = bootstrap(settings)

    def on_signal(signum: int, _frame: object) -> None:
        raise Stopping(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # In a terminal the Celery banner and its root-user warning would bury the URL: send them to files.
    to_files = logs == "files" or (logs == "auto" and sys.stdout.isatty())
    log_dir = settings.data_dir.resolve() / "logs" if to_files else None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    children = stack_children(settings, log_dir=log_dir)
    log_paths = [log_dir / f"{child.name}.log" for child in children] if log_dir else []
    print("Lethe: starting the API and a worker" + (f" (logs in {log_dir})" if log_dir else "") + " ...", flush=True)
    try:
        for child in children:
            child.start()
        if wait_ready(settings.base_url):
            print("\n" + run_summary(settings, key, log_paths) + "\n", flush=True)
        else:
            print("Lethe did not become ready in time; see the logs"
                  + (f":\n{log_tail(log_paths)}" if log_paths else " above."), file=sys.stderr)
        return supervise(children)
    except Stopping:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the shutdown short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_children(children)


def verify_certificate(file: Path, *, pem_file: str | None, url: str | None) -> int:
    """Check a certificate's Ed25519 signature against a PEM file or the key a stack serves."""
    from app.services import certificates

    if pem_file:
        pem = Path(pem_file).read_text()
    else:
        pem = httpx.get(f"{url.rstrip('/')}/v1/keys/certificate", timeout=10).raise_for_status() \
            .json()["public_key_pem"]
    ok, reason = certificates.verify_certificate_file(file, pem)
    print(("OK " if ok else "FAILED ") + reason, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def bench_names() -> list[str]:
    """The benchmarks ``lethe bench NAME`` runs: one script per name in bench/ (soak, swap, ...)."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem != "common")


class Logs(StrEnum):
    auto = "auto"
    files = "files"
    console = "console"


app = typer.Typer(name="lethe", help=__doc__.splitlines()[0].replace("``", ""))


@app.command("run", help="bootstrap, then start API + worker (embedded default)")
def run(logs: Annotated[Logs, typer.Option(
        help="the API's and worker's output: files under <data_dir>/logs/, or this console "
             "(auto: files in a terminal, else the console)")] = Logs.auto) -> int:
    return cmd_run(get_settings(), logs=logs.value)


@app.command("bootstrap", help="create the DB, train demo models, print the admin key (in production: the path "
                               "of its file)")
def bootstrap_command() -> int:
    settings = get_settings()
    print(admin_key_notice(settings, bootstrap(settings)))
    return 0


# Everything after NAME goes to the script, --help included (allow_interspersed_args=False).
@app.command("bench", help="run a benchmark from bench/", context_settings={"allow_interspersed_args": False})
def bench(name: Annotated[str, typer.Argument(help=f"benchmark name: {', '.join(bench_names())}")],
          args: Annotated[list[str] | None, typer.Argument(help="passed on to the script")] = None) -> int:
    if name not in bench_names():
        raise typer.BadParameter(f"no benchmark {name!r} in bench/", param_hint="NAME")
    return subprocess.call([sys.executable, str(BENCH_DIR / f"{name}.py"), *(args or [])])


@app.command("verify-certificate", help="check an erasure certificate's Ed25519 signature")
def verify_certificate_command(
        file: Annotated[Path, typer.Argument(
            help="certificate JSON, as served by GET /v1/erasure-requests/{id}/certificate")],
        key: Annotated[str | None, typer.Option(help="PEM file of the public key")] = None,
        url: Annotated[str | None, typer.Option(
            help="Lethe base URL; the key is fetched from /v1/keys/certificate")] = None) -> int:
    if (key is None) == (url is None):  # exactly one, as argparse's required exclusive group had it
        raise typer.BadParameter("give one of --key and --url", param_hint="--key / --url")
    return verify_certificate(file, pem_file=key, url=url)


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
