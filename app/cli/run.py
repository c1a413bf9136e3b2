"""``lethe run`` and ``lethe bootstrap``: the embedded stack.

``lethe run`` (what ``make run`` calls): create the DB, train and register the demo models
on first start, make sure an admin key exists, then start a real Celery worker process and
the API (uvicorn), and print a short summary: the URL, the docs and console URLs, where the
admin key and the logs are. In a terminal the children's output (the Celery banner, its
root-user warning, job logs) goes to ``<data_dir>/logs/`` so it does not bury the summary;
when stdout is not a terminal (a container's log collector, systemd, a test's log file) it
stays on stdout as before, where whatever collects it expects it (``--logs`` overrides).
The children are kept by ``app.cli.supervise``.
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

import typer

from app.cli.supervise import Child, Stopping, log_tail, stop_children, supervise, wait_ready
from app.core.config import Settings, get_settings


def bootstrap(settings: Settings, *, quiet: bool = False) -> str:
    """Create schema, register demo models, ensure an admin key. Returns the admin key."""
    from app.cli.progress import Reporter, reporter
    from app.core.db import create_schema, session_scope
    from app.core.security import SCOPES
    from app.ml.train import demo_training
    from app.services.access import keys
    from app.services.models import registration
    from app.services.models import catalog as models
    from workers.verify.calibrate import calibrate_reference  # the CLI composes app and workers

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    create_schema()
    for name, spec in settings.initial_models():
        with session_scope() as session:
            if models.get_model_or_none(session, name) is not None:
                continue
            bar = reporter(f"registering model {name} ({spec})", quiet=quiet, stream=sys.stderr)

            def progress(fraction: float, bar: Reporter = bar) -> None:
                bar.update(fraction * 100)

            t0 = time.monotonic()
            version = registration.register_demo_model(
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


class Logs(StrEnum):
    auto = "auto"
    files = "files"
    console = "console"



def add_run_commands(app: typer.Typer) -> None:
    """``run`` and ``bootstrap`` on the top-level app."""

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
