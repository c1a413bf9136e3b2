"""`lethe keys create | list | revoke | rotate`: API keys of a running stack (scope ``admin``).

``create`` and ``rotate`` print the clear key once (``--json``: in the ``key`` field); the stack
keeps only its digest. A revoked or rotated-away key is refused by every replica at once.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated, Any

import httpx
import typer

from app.cli.models import JsonOpt, KeyOpt, Remote, UrlOpt, call, out, remote, remote_group, run_remote
from app.core.security import SCOPES

Scope = StrEnum("Scope", {scope: scope for scope in SCOPES})  # --scope's choices: the one list of scopes


def secret_text(body: dict[str, Any]) -> str:
    print(f"key {body['id']} ({body['name']}, scopes {' '.join(body['scopes'])}); store it now, "
          "it is not shown again:", file=sys.stderr)
    return body["key"]  # alone on stdout, so `KEY=$(lethe keys create ...)` works


def cmd_create(r: Remote, c: httpx.Client, *, name: str, scopes: list[str]) -> int:
    out(r, call(c, "POST", "/v1/keys", json={"name": name, "scopes": scopes}), secret_text)
    return 0


def cmd_list(r: Remote, c: httpx.Client) -> int:
    out(r, call(c, "GET", "/v1/keys"), keys_table)
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


def cmd_revoke(r: Remote, c: httpx.Client, *, key_id: str) -> int:
    out(r, call(c, "DELETE", f"/v1/keys/{key_id}"), lambda k: f"key {k['id']} ({k['name']}) revoked")
    return 0


def cmd_rotate(r: Remote, c: httpx.Client, *, key_id: str) -> int:
    out(r, call(c, "POST", f"/v1/keys/{key_id}/rotate"), secret_text)
    return 0


keys_app = remote_group("create, list, revoke, rotate API keys")
KeyId = Annotated[str, typer.Argument(metavar="ID", help="the key's id (lethe keys list)")]


@keys_app.command("create", help="a new key; prints the clear key once")
def create(ctx: typer.Context, name: Annotated[str, typer.Option(help="what the key is for")],
           scope: Annotated[list[Scope], typer.Option(help="repeat for several scopes")],
           url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_create, name=name, scopes=[s.value for s in scope])


@keys_app.command("list", help="every key (never a secret)")
def list_keys(ctx: typer.Context, url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_list)


@keys_app.command("revoke", help="revoke a key: refused at once everywhere")
def revoke(ctx: typer.Context, key_id: KeyId, url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_revoke, key_id=key_id)


@keys_app.command("rotate", help="a new secret for a key; the old one is refused at once")
def rotate(ctx: typer.Context, key_id: KeyId, url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_rotate, key_id=key_id)
