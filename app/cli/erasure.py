"""`lethe erase | status | requests | retry | verify-certificate`: erasure requests on a running stack, over its HTTP API.

Connection, ``--json`` and exit codes as in ``app.cli.models``. ``erase --follow`` polls the
request until it reaches a status it will not leave on its own and exits 0 only when the subject
is erased (``completed`` or ``no_data``), 1 otherwise (``failed``, ``cancelled``, ``rejected``,
or ``awaiting_identity``, which waits for an operator).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from app.cli.models import JsonOpt, KeyOpt, Remote, UrlOpt, call, out, remote, run_remote

POLL_S = 0.5


def statuses() -> tuple[frozenset[str], frozenset[str]]:
    """(erased, settled) from the lifecycle's one status enum; imported late: it loads the ORM
    (about 1 s), which ``lethe --help`` and the other commands do not need."""
    from app.services.requests.lifecycle import ERASED, RequestStatus as S

    # Settled: statuses a request does not leave without an operator; --follow stops there.
    return ERASED, frozenset({*ERASED, S.FAILED, S.CANCELLED, S.REJECTED, S.AWAITING_IDENTITY})


def follow(c: httpx.Client, view: dict[str, Any], *, quiet: bool, timeout_s: float | None = None) -> dict[str, Any]:
    """Poll ``GET /v1/erasure-requests/{id}`` until settled, showing stage and percent: a live bar in
    a terminal, sparse plain lines in a log (``app.cli.progress``)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from app.cli.progress import reporter

    desc = f"erasure {view['id'][:8]}"
    if quiet or not sys.stderr.isatty():
        lines, shown = reporter(desc, quiet=quiet, stream=sys.stderr), set()

        def show_lines(v: dict[str, Any]) -> None:
            lines.update(v["percent"], stage_text(v))
            for line in ([] if quiet else steps(v, shown)):
                print(line, file=sys.stderr, flush=True)

        view = poll(c, view, timeout_s, show_lines)
        lines.close()
        return view
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[stage]}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(desc, total=100, completed=view["percent"], stage=stage_text(view))
        shown_bar: set[str] = set()

        def show(v: dict[str, Any]) -> None:
            bar.update(task, completed=v["percent"], stage=stage_text(v))
            for line in steps(v, shown_bar):
                bar.console.print(line)

        return poll(c, view, timeout_s, show)


def poll(c: httpx.Client, view: dict[str, Any], timeout_s: float | None,
         show: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    settled = statuses()[1]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    best = view.get("percent") or 0.0
    show(view)
    while view["status"] not in settled:
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
        view = call(c, "GET", f"/v1/erasure-requests/{view['id']}")
        # the bar only moves forward, whatever a server that predates monotonic percents reports
        best = max(best, view.get("percent") or 0.0)
        show({**view, "percent": best})
    return view


def steps(view: dict[str, Any], shown: set[str]) -> list[str]:
    """The two steps of a scheduled erasure (issue 16), each printed once: the interim forget, then
    the exact version (only the second is the erasure Lethe certifies)."""
    lines = []
    interim = (view.get("result") or {}).get("interim") or {}
    if view.get("exact_due_at") and "interim" not in shown:
        shown.add("interim")
        served = ", ".join(f"{m} v{d['version']} ({d['method']})" for m, d in interim.items() if d.get("version"))
        lines.append(f"step 1/2 interim forget: {served or 'nothing published (interim: none)'}"
                     f"{' served everywhere at ' + view['forgotten_at'] if view.get('forgotten_at') else ''}; "
                     f"not yet erased -- exact version due by {view['exact_due_at']}")
    if view.get("exact_due_at") and view["status"] == "completed" and "exact" not in shown:
        shown.add("exact")
        models = (view.get("result") or {}).get("models") or {}
        done = ", ".join(f"{m} v{d.get('version_after')} ({d.get('method')})" for m, d in models.items())
        lines.append(f"step 2/2 exact erasure: {done} serves everywhere (completed {view.get('completed_at')})")
    return lines


def stage_text(view: dict[str, Any]) -> str:
    """``status / stage``; while a scheduled erasure's exact job runs, prefixed ``exact``, so that a log
    reads ``... 50% scheduled`` then ``... 62% exact: running / unlearning``."""
    text = view["status"] + (f" / {view['stage']}" if view.get("stage") and view["stage"] != view["status"] else "")
    return f"exact: {text}" if view.get("exact_due_at") and view["status"] not in ("scheduled", "completed") else text


def request_table(view: dict[str, Any]) -> Any:
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    rows = [("id", view["id"]), ("status", stage_text(view)), ("percent", f"{view['percent']:.0f} %"),
            ("policy", view.get("policy")), ("received", view.get("received_at")), ("due", view.get("due_at")),
            ("interim served", view.get("forgotten_at")), ("exact due", view.get("exact_due_at")),
            ("completed", view.get("completed_at")), ("identity", view.get("identity")),
            ("error", view.get("error"))]
    for name, value in rows:
        if value not in (None, ""):
            grid.add_row(name, str(value))
    for model in view.get("models") or []:
        grid.add_row("model", f"{model['model']}: {model['status']} (attempts {model['attempts']})")
    return grid


def cmd_erase(r: Remote, c: httpx.Client, *, subject: str, follow_: bool, policy: str | None, reason: str | None,
              idempotency_key: str | None, timeout: float | None) -> int:
    body: dict[str, Any] = {"subject_id": subject}
    if policy:
        body["policy"] = policy
    if reason:
        body["reason"] = reason
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    view = call(c, "POST", "/v1/erasure-requests", json=body, headers=headers)
    if follow_:
        view = follow(c, view, quiet=r.json, timeout_s=timeout)
    out(r, view, request_table)
    if not follow_:
        return 0
    return 0 if view["status"] in statuses()[0] else 1


def cmd_status(r: Remote, c: httpx.Client, *, request_id: str) -> int:
    out(r, call(c, "GET", f"/v1/erasure-requests/{request_id}"), request_table)
    return 0


def cmd_requests(r: Remote, c: httpx.Client, *, status: str | None, overdue: bool, subject: str | None, limit: int,
                 cursor: str | None, source: str | None = None, dialect: str | None = None,
                 external_id: str | None = None, at_risk: bool = False) -> int:
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("status", status), ("source", source), ("dialect", dialect), ("external_id", external_id)):
        if value:
            params[name] = value
    if overdue:
        params["overdue"] = "true"
    if at_risk:
        params["at_risk"] = "true"
    if subject:
        params["subject_id"] = subject
    if cursor:
        params["cursor"] = cursor
    out(r, call(c, "GET", "/v1/erasure-requests", params=params), requests_table)
    return 0


def requests_table(body: dict[str, Any]) -> Any:
    from rich.table import Table

    if not body["items"]:
        return "no erasure requests"
    table = Table(caption=f"more: --cursor {body['next_cursor']}" if body.get("next_cursor") else None)
    for name in ("id", "status", "percent", "policy", "received", "due"):
        table.add_column(name, no_wrap=name == "id")
    for v in body["items"]:
        table.add_row(v["id"], stage_text(v), f"{v['percent']:.0f} %", v.get("policy") or "",
                      str(v.get("received_at") or "")[:19], str(v.get("due_at") or "")[:19])
    return table


def cmd_retry(r: Remote, c: httpx.Client, *, request_id: str) -> int:
    out(r, call(c, "POST", f"/v1/erasure-requests/{request_id}/retry"), request_table)
    return 0


RequestId = Annotated[str, typer.Argument(metavar="ID", help="the erasure request's id")]


def erase(ctx: typer.Context,
          subject: Annotated[str, typer.Argument(help="the data subject's ID as your training data knows it")],
          follow_: Annotated[bool, typer.Option(
              "--follow", help="show progress until the request settles; exit 0 only when the subject is erased")] = False,
          policy: Annotated[str | None, typer.Option(help="unlearning policy: auto (default) or a method name")] = None,
          reason: Annotated[str | None, typer.Option(help="free text kept with the request")] = None,
          idempotency_key: Annotated[str | None, typer.Option(help="makes a retried submission safe")] = None,
          timeout: Annotated[float | None, typer.Option(
              help="with --follow: stop following after this many seconds (exit 1)")] = None,
          url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_erase, subject=subject, follow_=follow_, policy=policy,
                      reason=reason, idempotency_key=idempotency_key, timeout=timeout)


def status(ctx: typer.Context, request_id: RequestId, url: UrlOpt = None, key: KeyOpt = None,
           json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_status, request_id=request_id)


def requests(ctx: typer.Context,
             status: Annotated[str | None, typer.Option(help="only this status (queued, running, failed, ...)")] = None,
             overdue: Annotated[bool, typer.Option("--overdue", help="only requests past their deadline")] = False,
             at_risk: Annotated[bool, typer.Option(
                 "--at-risk", help="only scheduled erasures whose exact version may miss its exact_due_at")] = False,
             subject: Annotated[str | None, typer.Option(help="only this data subject's requests")] = None,
             source: Annotated[str | None, typer.Option(help="only requests from api, opendsr or fides")] = None,
             dialect: Annotated[str | None, typer.Option(
                 help="only OpenDSR-family requests in this dialect (opengdpr, opendsr, opencompliance)")] = None,
             external_id: Annotated[str | None, typer.Option(
                 "--external-id", help="only the request with this caller's id (a Fides privacy_request_id)")] = None,
             limit: Annotated[int, typer.Option(help="page size (1-500)")] = 50,
             cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page")] = None,
             url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_requests, status=status, overdue=overdue, subject=subject,
                      limit=limit, cursor=cursor, source=source, dialect=dialect, external_id=external_id,
                      at_risk=at_risk)


def retry(ctx: typer.Context, request_id: RequestId, url: UrlOpt = None, key: KeyOpt = None,
          json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_retry, request_id=request_id)


def verify_certificate(file: Path, *, pem_file: str | None, url: str | None) -> int:
    """Check a certificate's Ed25519 signature against a PEM file or the key a stack serves."""
    from app.services.requests import certificates

    if pem_file:
        pem = Path(pem_file).read_text()
    else:
        pem = httpx.get(f"{url.rstrip('/')}/v1/keys/certificate", timeout=10).raise_for_status() \
            .json()["public_key_pem"]
    ok, reason = certificates.verify_certificate_file(file, pem)
    print(("OK " if ok else "FAILED ") + reason, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1



def verify_certificate_command(
        file: Annotated[Path, typer.Argument(
            help="certificate JSON, as served by GET /v1/erasure-requests/{id}/certificate")],
        key: Annotated[str | None, typer.Option(help="PEM file of the public key")] = None,
        url: Annotated[str | None, typer.Option(
            help="Lethe base URL; the key is fetched from /v1/keys/certificate")] = None) -> int:
    if (key is None) == (url is None):  # exactly one, as argparse's required exclusive group had it
        raise typer.BadParameter("give one of --key and --url", param_hint="--key / --url")
    return verify_certificate(file, pem_file=key, url=url)


def add_erasure_commands(app: typer.Typer) -> None:
    """``erase``, ``status``, ``requests``, ``retry``: top-level commands, the options after them."""
    app.command("erase", help="submit an erasure request for a data subject")(erase)
    app.command("status", help="one erasure request: status, stage, percent")(status)
    app.command("requests", help="list erasure requests, newest first")(requests)
    app.command("retry", help="queue a failed erasure request again")(retry)
    app.command("verify-certificate", help="check an erasure certificate's Ed25519 signature")(
        verify_certificate_command)
