"""`lethe keys create | list | revoke | rotate`: API keys of a running stack (scope ``admin``).

``create`` and ``rotate`` print the clear key once (``--json``: in the ``key`` field); the stack
keeps only its digest. A revoked or rotated-away key is refused by every replica at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx

from app.cli_models import call, connection_options, out, run_remote
from app.core.security import SCOPES


def secret_text(body: dict[str, Any]) -> str:
    print(f"key {body['id']} ({body['name']}, scopes {' '.join(body['scopes'])}); store it now, "
          "it is not shown again:", file=sys.stderr)
    return body["key"]  # alone on stdout, so `KEY=$(lethe keys create ...)` works


def cmd_create(args: argparse.Namespace, c: httpx.Client) -> int:
    out(args, call(c, "POST", "/v1/keys", json={"name": args.name, "scopes": args.scope}), secret_text)
    return 0


def cmd_list(args: argparse.Namespace, c: httpx.Client) -> int:
    out(args, call(c, "GET", "/v1/keys"), keys_table)
    return 0


def keys_table(body: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table()
    for name in ("id", "name", "scopes", "created", "state"):
        table.add_column(name, no_wrap=name == "id")
    for k in body["items"]:
        table.add_row(k["id"], k["name"], " ".join(k["scopes"]), str(k["created_at"])[:19],
                      "revoked" if k["revoked"] else "live")
    return table


def cmd_revoke(args: argparse.Namespace, c: httpx.Client) -> int:
    out(args, call(c, "DELETE", f"/v1/keys/{args.id}"), lambda k: f"key {k['id']} ({k['name']}) revoked")
    return 0


def cmd_rotate(args: argparse.Namespace, c: httpx.Client) -> int:
    out(args, call(c, "POST", f"/v1/keys/{args.id}/rotate"), secret_text)
    return 0


def add_keys_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="create, list, revoke, rotate API keys", parents=[connection_options(False)])
    ks = p.add_subparsers(dest="keys_cmd", required=True)
    common = [connection_options(True)]
    cr = ks.add_parser("create", help="a new key; prints the clear key once", parents=common)
    cr.add_argument("--name", required=True)
    cr.add_argument("--scope", action="append", required=True, choices=SCOPES, help="repeat for several scopes")
    cr.set_defaults(keys_run=cmd_create)
    ks.add_parser("list", help="every key (never a secret)", parents=common).set_defaults(keys_run=cmd_list)
    rv = ks.add_parser("revoke", help="revoke a key: refused at once everywhere", parents=common)
    rv.add_argument("id")
    rv.set_defaults(keys_run=cmd_revoke)
    ro = ks.add_parser("rotate", help="a new secret for a key; the old one is refused at once", parents=common)
    ro.add_argument("id")
    ro.set_defaults(keys_run=cmd_rotate)
    p.set_defaults(run=lambda args: run_remote(args, args.keys_run))
