"""`lethe audit tail | verify | export`: the hash-chained audit log of a running stack.

Connection, ``--json`` and exit codes as in ``app.cli.models``; ``verify`` exits 1 when the chain
is broken or truncated.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated, Any

import httpx
import typer

from app.cli.models import JsonOpt, KeyOpt, Remote, UrlOpt, call, out, remote, remote_group, run_remote


def has_event(c: httpx.Client, seq: int) -> bool:
    return bool(call(c, "GET", "/v1/audit/events", params={"cursor": str(seq - 1), "limit": 1})["items"])


def last_seq(c: httpx.Client) -> int:
    """The chain's last sequence number. The API pages forward only and ``seq`` has no gaps in a
    chain (verify reports one as broken), so probe doubling, then bisect: O(log n) small requests,
    where paging the whole log to keep its end would read every event."""
    lo, hi = 0, 1  # has_event(lo) holds (0: the empty prefix), has_event(hi) is being probed
    while has_event(c, hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if has_event(c, mid) else (lo, mid)
    return lo


def cmd_tail(r: Remote, c: httpx.Client, *, n: int, request_id: str | None, type_: str | None) -> int:
    params: dict[str, Any] = {"limit": n}
    if request_id:
        params["request_id"] = request_id
    if type_:
        params["type"] = type_
    if request_id or type_:
        body = newest_matching(c, params, n)
    else:
        params["cursor"] = str(max(0, last_seq(c) - n))
        body = call(c, "GET", "/v1/audit/events", params=params)
    out(r, body, events_table)
    return 0


def newest_matching(c: httpx.Client, params: dict[str, Any], n: int) -> dict[str, Any]:
    """With filters the matching seqs are sparse: page through them forward, keep the last ``n``."""
    items: list[dict[str, Any]] = []
    page = {**params, "limit": 1000}
    while True:
        body = call(c, "GET", "/v1/audit/events", params=page)
        items = (items + body["items"])[-n:]
        if not body.get("next_cursor"):
            return {"items": items, "next_cursor": None}
        page["cursor"] = body["next_cursor"]


def events_table(body: dict[str, Any]) -> Any:
    from rich.table import Table

    if not body["items"]:
        return "no audit events"
    table = Table()
    for name in ("seq", "time", "type", "actor", "request", "payload"):
        table.add_column(name, overflow="fold")
    for ev in body["items"]:
        table.add_row(str(ev["seq"]), str(ev["ts"])[:19], ev["type"], ev["actor"], (ev.get("request_id") or "")[:8],
                      json.dumps(ev.get("payload") or {}, default=str)[:120])
    return table


def cmd_verify(r: Remote, c: httpx.Client) -> int:
    report = call(c, "GET", "/v1/audit/verify")
    out(r, report, lambda r: (f"audit chain OK: {r.get('events')} events" if r["ok"] else
                                 f"audit chain BROKEN: {r.get('reason')} (first broken seq "
                                 f"{r.get('first_broken_seq')})")
        + "".join(f"\n  {k}: {v}" for k, v in r.items() if k not in ("ok", "reason", "events")))
    return 0 if report["ok"] else 1


def cmd_export(_: Remote, c: httpx.Client, *, format_: str, output: str | None) -> int:
    from app.cli.models import ApiError

    with c.stream("GET", "/v1/audit/export", params={"format": format_}) as response:
        if response.status_code >= 400:
            response.read()
            raise ApiError(response)
        sink = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
        lines = 0
        try:
            for chunk in response.iter_text():
                sink.write(chunk)
                lines += chunk.count("\n")
        finally:
            if output:
                sink.close()
    if output:
        print(f"wrote {lines} lines ({format_}) to {output}", file=sys.stderr)
    return 0


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


audit_app = remote_group("tail, verify or export the audit log")


@audit_app.command("tail", help="the newest audit events")
def tail(ctx: typer.Context, n: Annotated[int, typer.Option("-n", help="how many (1-1000)")] = 20,
         request_id: Annotated[str | None, typer.Option(help="only this erasure request's events")] = None,
         type_: Annotated[str | None, typer.Option("--type", help="only events of this type")] = None,
         url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_tail, n=n, request_id=request_id, type_=type_)


@audit_app.command("verify", help="recompute the hash chain; exit 1 if broken or truncated")
def verify(ctx: typer.Context, url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_verify)


@audit_app.command("export", help="the whole log, streamed")
def export(ctx: typer.Context, format_: Annotated[ExportFormat, typer.Option("--format")] = ExportFormat.jsonl,
           output: Annotated[str | None, typer.Option("-o", "--output", help="file to write (default stdout)")] = None,
           url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_export, format_=format_.value, output=output)
