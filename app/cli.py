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
It stays argparse (with rich for tables and progress): the scripts and tests that call
``lethe models ... --url U --key K --json`` with the options before or after the subcommand,
``bench NAME ARGS...`` passing everything through, and ``main(argv) -> int`` all keep working
unchanged, which a migration to typer would have put at risk for no user-visible gain.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.cli_audit import add_audit_command
from app.cli_erasure import add_erasure_commands
from app.cli_keys import add_keys_command
from app.cli_migrate import add_migrate_command
from app.cli_models import add_models_command
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


@dataclass
class Child:
    """One supervised process of ``lethe run``; ``spawn`` (re)starts it."""

    name: str
    spawn: Callable[[], subprocess.Popen]
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times of recent restarts

    def start(self) -> None:
        self.proc = self.spawn()


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


class Stopping(Exception):
    """SIGTERM / SIGINT reached ``lethe run``: stop the children, do not restart them."""


def supervise(children: list[Child], *, max_restarts: int = 5, window_s: float = 300.0,
              sleep: Callable[[float], None] = time.sleep) -> int:
    """Keep every child running until a signal stops ``lethe run``.

    A child that exits on its own (e.g. the Celery worker after a broker failure it cannot
    recover from) is restarted with exponential backoff, and the others keep serving: work it
    held is in the DB and the reconciler re-sends it. More than ``max_restarts`` of one child
    within ``window_s`` means something is wrong that restarts will not fix: give up with exit
    code 1, so a process supervisor (systemd, compose) sees a failure, not a clean exit.
    """
    while True:
        for child in children:
            rc = child.proc.poll() if child.proc is not None else 0
            if rc is None:
                continue
            now = time.monotonic()
            child.restarts = [t for t in child.restarts if now - t < window_s]
            if len(child.restarts) >= max_restarts:
                print(f"lethe: {child.name} exited (code {rc}) {len(child.restarts) + 1} times in "
                      f"{window_s:.0f} s; giving up", file=sys.stderr, flush=True)
                return 1
            delay = min(30.0, 2.0 ** len(child.restarts))
            print(f"lethe: {child.name} exited unexpectedly (code {rc}); restarting it in {delay:.0f} s",
                  file=sys.stderr, flush=True)
            sleep(delay)
            child.restarts.append(time.monotonic())
            child.start()
        sleep(1.0)


def stop_children(children: list[Child]) -> None:
    procs = [c.proc for c in children if c.proc is not None]
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_ready(url: str, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def log_tail(paths: list[Path], lines: int = 15) -> str:
    return "".join(f"--- {p} (last {lines} lines)\n" + "".join(p.read_text(errors="replace").splitlines(True)[-lines:])
                   for p in paths if p.exists())


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


def add_verify_command(sub: argparse._SubParsersAction) -> None:
    """`lethe verify-certificate FILE --key PEM | --url BASE`: offline check of a certificate."""
    p = sub.add_parser("verify-certificate", help="check an erasure certificate's Ed25519 signature")
    p.add_argument("file", help="certificate JSON, as served by GET /v1/erasure-requests/{id}/certificate")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--key", help="PEM file of the public key")
    src.add_argument("--url", help="Lethe base URL; the key is fetched from /v1/keys/certificate")
    p.set_defaults(run=run_verify_command)


def run_verify_command(args: argparse.Namespace) -> int:
    from app.services import certificates

    if args.key:
        pem = Path(args.key).read_text()
    else:
        pem = httpx.get(f"{args.url.rstrip('/')}/v1/keys/certificate", timeout=10).raise_for_status() \
            .json()["public_key_pem"]
    ok, reason = certificates.verify_certificate_file(args.file, pem)
    print(("OK " if ok else "FAILED ") + reason, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def bench_names() -> list[str]:
    """The benchmarks ``lethe bench NAME`` runs: one script per name in bench/ (soak, swap, ...)."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem != "common")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lethe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run_p = sub.add_parser("run", help="bootstrap, then start API + worker (embedded default)")
    run_p.add_argument("--logs", choices=("auto", "files", "console"), default="auto",
                     help="the API's and worker's output: files under <data_dir>/logs/, or this console "
                          "(auto: files in a terminal, else the console)")
    sub.add_parser("bootstrap", help="create the DB, train demo models, print the admin key "
                   "(in production: the path of its file)")
    bench = sub.add_parser("bench", help="run a benchmark from bench/")
    bench.add_argument("name", help=f"benchmark name: {', '.join(bench_names())}")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    add_verify_command(sub)
    add_models_command(sub)
    add_migrate_command(sub)
    add_erasure_commands(sub)
    add_audit_command(sub)
    add_keys_command(sub)
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is not None:  # every command but run, bootstrap and bench
        return args.run(args)
    settings = get_settings()
    if args.cmd == "run":
        return cmd_run(settings, logs=args.logs)
    if args.cmd == "bootstrap":
        print(admin_key_notice(settings, bootstrap(settings)))
        return 0
    script = BENCH_DIR / f"{args.name}.py"
    if args.name not in bench_names():
        parser.error(f"no benchmark {args.name!r} in bench/")
    return subprocess.call([sys.executable, str(script), *args.args])


if __name__ == "__main__":
    sys.exit(main())
