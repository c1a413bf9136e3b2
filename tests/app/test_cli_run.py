"""``lethe run`` prints a short summary; in a terminal the children's output (Celery banner,
root-user warning) goes to ``<data_dir>/logs/``, not over the URL; piped, it stays on stdout."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from app.cli import run as cli

REAL_POPEN = subprocess.Popen


def run_fake_stack(settings, monkeypatch: pytest.MonkeyPatch, **kw: str) -> list[list[str]]:  # noqa: ANN001
    """``cmd_run`` with fake children that print a banner to stdout and a warning to stderr."""
    spawned: list[list[str]] = []

    def popen(argv: list[str], **kw: object) -> subprocess.Popen:
        spawned.append(argv)
        name = "worker" if "celery" in argv else "api"
        banner = f"import sys; print('{name} BANNER'); print('{name} warning', file=sys.stderr); sys.stdout.flush()"
        return REAL_POPEN([sys.executable, "-c", banner], **kw)  # the real stdout/stderr arguments

    def supervise(children: list[cli.Child], **_: object) -> int:
        for child in children:
            child.proc.wait(20)
        raise cli.Stopping("test")

    monkeypatch.setattr(cli, "bootstrap", lambda s: "lethe_test_key")
    monkeypatch.setattr(cli, "wait_ready", lambda url: True)
    monkeypatch.setattr(cli, "supervise", supervise)
    monkeypatch.setattr(cli.subprocess, "Popen", popen)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        assert cli.cmd_run(settings, **kw) == 0
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    return spawned


def test_in_a_terminal_run_prints_a_summary_and_sends_the_children_to_log_files(
        settings, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    monkeypatch.setattr(cli.sys.stdout, "isatty", lambda: True)
    spawned = run_fake_stack(settings, monkeypatch)
    out, err = capfd.readouterr()
    url = settings.base_url
    logs = settings.data_dir.resolve() / "logs"
    assert len(spawned) == 2 and "BANNER" not in out + err and "warning" not in out + err
    assert "worker BANNER" in (logs / "worker.log").read_text() and "worker warning" in (logs / "worker.log").read_text()
    assert "api BANNER" in (logs / "api.log").read_text()
    assert f"Lethe is serving at {url}" in out and f"{url}/docs" in out and f"{url}/console" in out
    assert "lethe_test_key" in out and str(logs / "worker.log") in out


def test_piped_run_keeps_the_children_on_stdout(settings, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """A log collector (docker, systemd, the integration tests' run.log) still gets the worker's lines."""
    run_fake_stack(settings, monkeypatch)  # capfd: stdout is not a terminal
    out, err = capfd.readouterr()
    assert "worker BANNER" in out and "worker warning" in err and "Lethe is serving at" in out
    assert "logs:      this output" in out


def test_summary_in_production_never_shows_the_key(settings, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    prod = settings.model_copy(update={"env": "production", "bootstrap_admin_key": None})
    text = cli.run_summary(prod, "lethe_secret", [prod.data_dir / "logs" / "api.log"])
    assert "lethe_secret" not in text and "admin.key" in text and "api.log" in text


def test_not_ready_shows_the_end_of_the_logs(tmp_path) -> None:  # noqa: ANN001
    log = tmp_path / "api.log"
    log.write_text("".join(f"line {n}\n" for n in range(40)) + "Address already in use\n")
    tail = cli.log_tail([log, tmp_path / "absent.log"])
    assert "Address already in use" in tail and "line 10\n" not in tail and "absent" not in tail
