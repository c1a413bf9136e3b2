"""The remote commands of ``lethe`` against the in-process app (TestClient is an httpx.Client),
through ``app.cli.main`` as a user types them: output, ``--json`` and exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import app.cli as cli
from app.cli import erasure as cli_erasure
from app.cli import models as cli_models


@pytest.fixture
def lethe(app, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
          capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """``lethe(*argv)`` -> (exit code, stdout, stderr), the client bound to the in-process app."""
    seen: list[Any] = []

    def client(args: Any) -> httpx.Client:
        seen.append(args)
        headers = {"Authorization": f"Bearer {args.key}"} if getattr(args, "key", None) else admin_headers
        return TestClient(app, headers=headers, raise_server_exceptions=False)

    monkeypatch.setattr(cli_models, "client", client)
    monkeypatch.setattr(cli_erasure, "POLL_S", 0.0)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = cli.main(list(argv))
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    run.seen = seen  # type: ignore[attr-defined]
    yield run


def test_erase_a_subject_without_data_follows_to_no_data(lethe) -> None:  # noqa: ANN001
    rc, out, _ = lethe("erase", "nobody-at-all", "--follow", "--json", "--reason", "Art. 17 #1")
    view = json.loads(out)
    assert rc == 0 and view["status"] == "no_data" and view["percent"] == 100
    rc, out, _ = lethe("status", view["id"])
    assert rc == 0 and "no_data" in out and view["id"] in out


def test_erase_status_requests_retry(lethe, toy_model) -> None:  # noqa: ANN001
    rc, out, _ = lethe("erase", "toy-03", "--json", "--policy", "finetune")
    view = json.loads(out)
    assert rc == 0 and view["status"] == "queued" and view["policy"] == "finetune"
    rc, out, _ = lethe("requests", "--status", "queued", "--json")
    assert rc == 0 and view["id"] in [v["id"] for v in json.loads(out)["items"]]
    rc, out, _ = lethe("requests", "--overdue", "--json")
    assert rc == 0 and view["id"] not in [v["id"] for v in json.loads(out)["items"]]  # due in a month
    rc, out, _ = lethe("requests", "--source", "api", "--json")
    assert rc == 0 and view["id"] in [v["id"] for v in json.loads(out)["items"]]
    rc, out, _ = lethe("requests", "--dialect", "opengdpr", "--json")
    assert rc == 0 and json.loads(out)["items"] == []  # a native request has no OpenDSR dialect
    rc, out, _ = lethe("requests", "--external-id", "pri_none", "--json")
    assert rc == 0 and json.loads(out)["items"] == []  # a native request has no external id
    rc, _, err = lethe("requests", "--status", "done")
    assert rc == 2 and "validation_error" in err and "status: Input should be" in err  # names the field
    rc, out, _ = lethe("requests")
    assert rc == 0 and view["id"] in out and "queued" in out  # a table, one row per request
    rc, _, err = lethe("retry", view["id"])
    assert rc == 2 and "not_retryable" in err  # only a failed request is retried
    rc, _, err = lethe("status", "no-such-request")
    assert rc == 2 and "404" in err
    rc, _, err = lethe("erase", "toy-03", "--policy", "nonsense")
    assert rc == 2 and "unknown_policy" in err


def scripted(statuses: list[tuple[str, float]]) -> httpx.Client:
    """A stack whose request walks through ``statuses`` one poll at a time."""
    polls = iter(statuses)

    def view(status: str, percent: float) -> dict[str, Any]:
        return {"id": "req-1", "status": status, "stage": status, "percent": percent, "models": []}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json=view("queued", 0.0))
        return httpx.Response(200, json=view(*next(polls)))

    return httpx.Client(base_url="http://stack", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(("final", "rc"), [("completed", 0), ("failed", 1), ("cancelled", 1)])
def test_follow_exits_by_the_final_status(final: str, rc: int, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    stack = scripted([("running", 20.0), ("verifying", 80.0), (final, 100.0)])
    monkeypatch.setattr(cli_models, "client", lambda args: stack)
    monkeypatch.setattr(cli_erasure, "POLL_S", 0.0)
    assert cli.main(["erase", "15", "--follow"]) == rc
    captured = capsys.readouterr()
    assert final in captured.out and "req-1" in captured.out
    assert "erasure req-1" in captured.err  # the progress bar, on stderr


def test_a_server_error_exits_1_and_an_unreachable_stack_2(monkeypatch: pytest.MonkeyPatch) -> None:
    failing = httpx.Client(base_url="http://stack", transport=httpx.MockTransport(
        lambda r: httpx.Response(503, json={"code": "unavailable", "detail": "db down"})))
    monkeypatch.setattr(cli_models, "client", lambda args: failing)
    assert cli.main(["status", "x"]) == 1

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    monkeypatch.setattr(cli_models, "client", lambda args: httpx.Client(
        base_url="http://stack", transport=httpx.MockTransport(refuse)))
    assert cli.main(["requests"]) == 2


def test_audit_tail_verify_export(lethe, tmp_path: Path) -> None:  # noqa: ANN001
    for n in range(5):
        assert lethe("erase", f"audit-subject-{n}", "--json")[0] == 0
    rc, out, _ = lethe("audit", "tail", "-n", "3", "--json")
    tail = json.loads(out)["items"]
    rc_all, out_all, _ = lethe("audit", "export", "--format", "jsonl")
    every = [json.loads(line) for line in out_all.splitlines()]
    assert rc == 0 and rc_all == 0 and len(every) >= 10
    assert [e["seq"] for e in tail] == [e["seq"] for e in every[-3:]]
    rc, out, _ = lethe("audit", "tail", "--type", "erasure_requested", "-n", "2", "--json")
    assert rc == 0 and [e["type"] for e in json.loads(out)["items"]] == ["erasure_requested"] * 2
    rc, out, _ = lethe("audit", "tail")
    assert rc == 0 and "erasure_requested" in out
    rc, out, _ = lethe("audit", "verify", "--json")
    assert rc == 0 and json.loads(out)["ok"] is True
    target = tmp_path / "audit.csv"
    rc, _, err = lethe("audit", "export", "--format", "csv", "-o", str(target))
    rows = target.read_text().splitlines()
    assert rc == 0 and rows[0].startswith("seq,ts,type") and len(rows) == len(every) + 1 and str(target) in err


def test_audit_verify_exits_1_on_a_broken_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = {"ok": False, "events": 7, "first_broken_seq": 4, "reason": "event content does not match its hash"}
    monkeypatch.setattr(cli_models, "client", lambda args: httpx.Client(
        base_url="http://stack", transport=httpx.MockTransport(lambda r: httpx.Response(200, json=broken))))
    assert cli.main(["audit", "verify"]) == 1


def test_audit_tail_finds_the_end_of_a_long_chain() -> None:
    from app.cli.audit import last_seq

    for size in (0, 1, 2, 3, 1000, 1025):
        def handler(request: httpx.Request, size: int = size) -> httpx.Response:
            after = int(request.url.params["cursor"])
            return httpx.Response(200, json={"items": [{"seq": after + 1}] if after < size else []})

        assert last_seq(httpx.Client(base_url="http://s", transport=httpx.MockTransport(handler))) == size


def test_keys_create_list_rotate_revoke(lethe) -> None:  # noqa: ANN001
    rc, out, err = lethe("keys", "create", "--name", "ops", "--scope", "erasure:read", "--scope", "audit:read")
    clear = out.strip()
    assert rc == 0 and clear.startswith("lethe_") and "not shown again" in err
    rc, out, _ = lethe("keys", "list", "--json")
    (ops,) = [k for k in json.loads(out)["items"] if k["name"] == "ops"]
    assert ops["scopes"] == ["audit:read", "erasure:read"] and clear not in out
    assert lethe("requests", "--key", clear)[0] == 0
    rc, out, _ = lethe("keys", "rotate", ops["id"], "--json")
    rotated = json.loads(out)["key"]
    assert rc == 0 and rotated != clear
    assert lethe("requests", "--key", clear)[0] == 2  # the old secret is refused at once
    assert lethe("requests", "--key", rotated)[0] == 0
    rc, out, _ = lethe("keys", "revoke", ops["id"])
    assert rc == 0 and "revoked" in out
    rc, _, err = lethe("requests", "--key", rotated)
    assert rc == 2 and "invalid_api_key" in err
    rc, out, _ = lethe("keys", "list")
    assert rc == 0 and ops["id"] in out and "revoked" in out
    assert lethe("keys", "revoke", "no-such-key")[0] == 2
    with pytest.raises(SystemExit) as usage:
        lethe("keys", "create", "--name", "x", "--scope", "root")
    assert usage.value.code == 2


def test_models_rollback(lethe, toy_model) -> None:  # noqa: ANN001
    rc, out, _ = lethe("models", "rollback", "toy", "1", "--json")
    assert rc == 0 and json.loads(out) == {"model": "toy", "serving_version": 1}
    rc, out, _ = lethe("models", "--json", "rollback", "toy", "1")
    assert rc == 0 and json.loads(out)["serving_version"] == 1
    rc, _, err = lethe("models", "rollback", "toy", "9")
    assert rc == 2 and "404" in err


def test_connection_options_before_and_after_the_subcommand(lethe) -> None:  # noqa: ANN001
    for argv in (["audit", "--url", "http://a", "--key", "k1", "verify"],
                 ["audit", "verify", "--url", "http://a", "--key", "k1"],
                 ["keys", "--url", "http://a", "list", "--key", "k1"]):
        lethe(*argv)
        args = lethe.seen[-1]
        assert (args.url, args.key) == ("http://a", "k1"), argv


def test_the_real_client_reads_url_and_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_URL", "http://stack.example:9000/")
    monkeypatch.setenv("LETHE_KEY", "lethe_env")
    c = cli_models.client(cli_models.Remote(url=None, key=None))
    assert str(c.base_url) == "http://stack.example:9000" and c.headers["authorization"] == "Bearer lethe_env"


def test_usage_errors_raise_exit_2_and_help_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    """``main`` keeps the argparse contract: a usage error shows the usage on stderr and exits 2."""
    for argv in ([], ["models"], ["bench", "no-such-bench"], ["verify-certificate", "c.json"],
                 ["verify-certificate", "c.json", "--key", "k.pem", "--url", "http://a"], ["models", "rollback", "toy", "x"]):
        with pytest.raises(SystemExit) as usage:
            cli.main(argv)
        assert usage.value.code == 2, argv
        assert "Usage: lethe" in capsys.readouterr().err, argv
    assert cli.main(["--help"]) == 0 and "verify-certificate" in capsys.readouterr().out


def test_requests_table_in_a_pipe_is_not_cut_to_80_columns(lethe, toy_model,  # noqa: ANN001
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # QA: `lethe requests | cat` (no COLUMNS exported, stdout not a terminal) printed "sche…", "2026…".
    monkeypatch.delenv("COLUMNS", raising=False)
    rc, out, _ = lethe("erase", "toy-03", "--json")
    view = json.loads(out)
    rc, out, _ = lethe("requests")
    assert rc == 0 and view["id"] in out and "queued" in out
    assert view["received_at"][:19] in out and view["due_at"][:19] in out
