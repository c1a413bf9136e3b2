"""`lethe audit tail | verify | export`: the hash-chained audit log of a running stack.

Connection, ``--json`` and exit codes as in ``app.cli_models``; ``verify`` exits 1 when the chain
is broken or truncated.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

from app.cli_models import call, connection_options, out, run_remote


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


def cmd_tail(args: argparse.Namespace, c: httpx.Client) -> int:
    params: dict[str, Any] = {"limit": args.n}
    if args.request_id:
        params["request_id"] = args.request_id
    if args.type:
        params["type"] = args.type
    if args.request_id or args.type:
        body = newest_matching(c, params, args.n)
    else:
        params["cursor"] = str(max(0, last_seq(c) - args.n))
        body = call(c, "GET", "/v1/audit/events", params=params)
    out(args, body, events_table)
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


def cmd_verify(args: argparse.Namespace, c: httpx.Client) -> int:
    report = call(c, "GET", "/v1/audit/verify")
    out(args, report, lambda r: (f"audit chain OK: {r.get('events')} events" if r["ok"] else
                                 f"audit chain BROKEN: {r.get('reason')} (first broken seq "
                                 f"{r.get('first_broken_seq')})")
        + "".join(f"\n  {k}: {v}" for k, v in r.items() if k not in ("ok", "reason", "events")))
    return 0 if report["ok"] else 1


def cmd_export(args: argparse.Namespace, c: httpx.Client) -> int:
    from app.cli_models import ApiError

    with c.stream("GET", "/v1/audit/export", params={"format": args.format}) as r:
        if r.status_code >= 400:
            r.read()
            raise ApiError(r)
        sink = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
        lines = 0
        try:
            for chunk in r.iter_text():
                sink.write(chunk)
                lines += chunk.count("\n")
        finally:
            if args.output:
                sink.close()
    if args.output:
        print(f"wrote {lines} lines ({args.format}) to {args.output}", file=sys.stderr)
    return 0


def add_audit_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="tail, verify or export the audit log", parents=[connection_options(False)])
    au = p.add_subparsers(dest="audit_cmd", required=True)
    common = [connection_options(True)]
    t = au.add_parser("tail", help="the newest audit events", parents=common)
    t.add_argument("-n", type=int, default=20, help="how many (1-1000, default 20)")
    t.add_argument("--request-id", help="only this erasure request's events")
    t.add_argument("--type", help="only events of this type")
    t.set_defaults(audit_run=cmd_tail)
    au.add_parser("verify", help="recompute the hash chain; exit 1 if broken or truncated",
                  parents=common).set_defaults(audit_run=cmd_verify)
    e = au.add_parser("export", help="the whole log, streamed", parents=common)
    e.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    e.add_argument("-o", "--output", help="file to write (default stdout)")
    e.set_defaults(audit_run=cmd_export)
    p.set_defaults(run=lambda args: run_remote(args, args.audit_run))
