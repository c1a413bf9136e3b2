"""`lethe erase | status | requests | retry`: erasure requests on a running stack, over its HTTP API.

Connection, ``--json`` and exit codes as in ``app.cli_models``. ``erase --follow`` polls the
request until it reaches a status it will not leave on its own and exits 0 only when the subject
is erased (``completed`` or ``no_data``), 1 otherwise (``failed``, ``cancelled``, ``rejected``,
or ``awaiting_identity``, which waits for an operator).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx

from app.cli_models import call, connection_options, out, run_remote

POLL_S = 0.5


def statuses() -> tuple[frozenset[str], frozenset[str]]:
    """(erased, settled) from the lifecycle's one status enum; imported late: it loads the ORM
    (about 1 s), which ``lethe --help`` and the other commands do not need."""
    from app.services.lifecycle import ERASED, RequestStatus as S

    # Settled: statuses a request does not leave without an operator; --follow stops there.
    return ERASED, frozenset({*ERASED, S.FAILED, S.CANCELLED, S.REJECTED, S.AWAITING_IDENTITY})


def follow(c: httpx.Client, view: dict[str, Any], *, quiet: bool, timeout_s: float | None = None) -> dict[str, Any]:
    """Poll ``GET /v1/erasure-requests/{id}`` with a progress bar (stage and percent) until settled."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    settled = statuses()[1]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[stage]}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=quiet, transient=False) as bar:
        task = bar.add_task(f"erasure {view['id'][:8]}", total=100, completed=view["percent"],
                            stage=stage_text(view))
        while view["status"] not in settled:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
            view = call(c, "GET", f"/v1/erasure-requests/{view['id']}")
            bar.update(task, completed=view["percent"], stage=stage_text(view))
    return view


def stage_text(view: dict[str, Any]) -> str:
    return view["status"] + (f" / {view['stage']}" if view.get("stage") and view["stage"] != view["status"] else "")


def request_table(view: dict[str, Any]) -> Any:
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    rows = [("id", view["id"]), ("status", stage_text(view)), ("percent", f"{view['percent']:.0f} %"),
            ("policy", view.get("policy")), ("received", view.get("received_at")), ("due", view.get("due_at")),
            ("completed", view.get("completed_at")), ("identity", view.get("identity")),
            ("error", view.get("error"))]
    for name, value in rows:
        if value not in (None, ""):
            grid.add_row(name, str(value))
    for model in view.get("models") or []:
        grid.add_row("model", f"{model['model']}: {model['status']} (attempts {model['attempts']})")
    return grid


def cmd_erase(args: argparse.Namespace, c: httpx.Client) -> int:
    body: dict[str, Any] = {"subject_id": args.subject}
    if args.policy:
        body["policy"] = args.policy
    if args.reason:
        body["reason"] = args.reason
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    view = call(c, "POST", "/v1/erasure-requests", json=body, headers=headers)
    if args.follow:
        view = follow(c, view, quiet=args.json, timeout_s=args.timeout)
    out(args, view, request_table)
    if not args.follow:
        return 0
    return 0 if view["status"] in statuses()[0] else 1


def cmd_status(args: argparse.Namespace, c: httpx.Client) -> int:
    out(args, call(c, "GET", f"/v1/erasure-requests/{args.id}"), request_table)
    return 0


def cmd_requests(args: argparse.Namespace, c: httpx.Client) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    if args.overdue:
        params["overdue"] = "true"
    if args.subject:
        params["subject_id"] = args.subject
    if args.cursor:
        params["cursor"] = args.cursor
    out(args, call(c, "GET", "/v1/erasure-requests", params=params), requests_table)
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


def cmd_retry(args: argparse.Namespace, c: httpx.Client) -> int:
    out(args, call(c, "POST", f"/v1/erasure-requests/{args.id}/retry"), request_table)
    return 0


def add_erasure_commands(sub: argparse._SubParsersAction) -> None:
    common = [connection_options(False)]
    e = sub.add_parser("erase", help="submit an erasure request for a data subject", parents=common)
    e.add_argument("subject", help="the data subject's ID as your training data knows it")
    e.add_argument("--follow", action="store_true",
                   help="show progress until the request settles; exit 0 only when the subject is erased")
    e.add_argument("--policy", help="unlearning policy: auto (default) or a method name")
    e.add_argument("--reason", help="free text kept with the request")
    e.add_argument("--idempotency-key", help="makes a retried submission safe")
    e.add_argument("--timeout", type=float, help="with --follow: stop following after this many seconds (exit 1)")
    e.set_defaults(run=lambda args: run_remote(args, cmd_erase))
    s = sub.add_parser("status", help="one erasure request: status, stage, percent", parents=common)
    s.add_argument("id")
    s.set_defaults(run=lambda args: run_remote(args, cmd_status))
    r = sub.add_parser("requests", help="list erasure requests, newest first", parents=common)
    r.add_argument("--status", help="only this status (queued, running, failed, ...)")
    r.add_argument("--overdue", action="store_true", help="only requests past their deadline")
    r.add_argument("--subject", help="only this data subject's requests")
    r.add_argument("--limit", type=int, default=50, help="page size (1-500, default 50)")
    r.add_argument("--cursor", help="next_cursor of the previous page")
    r.set_defaults(run=lambda args: run_remote(args, cmd_requests))
    t = sub.add_parser("retry", help="queue a failed erasure request again", parents=common)
    t.add_argument("id")
    t.set_defaults(run=lambda args: run_remote(args, cmd_retry))

