"""`lethe models ...`: drive a running stack's model registry over its HTTP API.

Also the pieces every remote command shares (``Remote``, ``client``, ``call``, ``out``,
``run_remote``, the ``--url`` / ``--key`` / ``--json`` options and ``remote_group``). The stack is
``--url`` / ``LETHE_URL`` (default: the local embedded stack on ``LETHE_PORT``) and the key
``--key`` / ``LETHE_KEY`` (default: the embedded stack's ``<data_dir>/admin.key``). Human output by
default, ``--json`` for scripts (one JSON object, the API's fields). Exit codes: 0 ok, 1 the
operation failed (e.g. a registration ended ``failed``, or the stack answered 5xx), 2 usage or a
refused request (4xx, or the stack cannot be reached).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from app.core.config import get_settings


@dataclass(frozen=True)
class Remote:
    """Where a remote command goes and how it answers: ``--url``, ``--key``, ``--json``."""

    url: str | None = None
    key: str | None = None
    json: bool = False


UrlOpt = Annotated[str | None, typer.Option("--url", help="Lethe base URL (default LETHE_URL, else the local "
                                                          "embedded stack)")]
KeyOpt = Annotated[str | None, typer.Option("--key", help="API key (default LETHE_KEY, else the embedded stack's "
                                                          "admin key)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON object on stdout")]


def remote(ctx: typer.Context, url: str | None, key: str | None, json_: bool) -> Remote:
    """The options given after the subcommand, else those before it (``lethe models --url U list``)."""
    before = ctx.parent.params if ctx.parent is not None else {}
    return Remote(url=url or before.get("url"), key=key or before.get("key"), json=json_ or bool(before.get("json_")))


def remote_group(help: str) -> typer.Typer:  # noqa: A002 - typer's own name for it
    """A command group whose subcommands take ``--url/--key/--json`` before them as well as after."""
    group = typer.Typer(help=help, add_completion=False)

    @group.callback()
    def connection(url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> None:
        pass  # kept in the group's context; ``remote`` reads them

    return group


class ApiError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text}
        self.status, self.body = response.status_code, body
        detail = body.get("detail") or (body.get("error") or {}).get("message") or response.text
        # A validation problem names each offending field: say which, and what it accepts.
        fields = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'body'}: {e.get('msg')}"
                           for e in body.get("errors") or [] if isinstance(e, dict))
        super().__init__(f"{response.status_code} {body.get('code', '')}: {detail}{f' ({fields})' if fields else ''}"
                         .strip())


def client(options: Remote) -> httpx.Client:
    settings = get_settings()
    url = options.url or os.environ.get("LETHE_URL") or f"http://127.0.0.1:{settings.port}"
    key = options.key or os.environ.get("LETHE_KEY")
    if not key and (settings.data_dir / "admin.key").exists():
        key = (settings.data_dir / "admin.key").read_text().strip()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60)


def call(c: httpx.Client, method: str, path: str, **kw: Any) -> dict[str, Any]:
    r = c.request(method, path, **kw)
    if r.status_code >= 400:
        raise ApiError(r)
    return r.json()


PIPE_WIDTH = 200  # columns of a table printed to a pipe or a file (no terminal, no COLUMNS)


def out(options: Remote, body: Any, human: Any) -> None:
    """``--json``: the API's object on one line; else ``human(body)``, a string or a rich renderable."""
    if options.json:
        print(json.dumps(body, default=str))
        return
    shown = human(body)
    if isinstance(shown, str):
        print(shown)
    else:
        from rich.console import Console

        # A pipe or a log has no width: rich's 80 columns cut every table cell to "sche…", "2026…".
        wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH
        Console(soft_wrap=True, width=wide).print(shown)


def run_remote(options: Remote, command: Callable[..., int], **kw: Any) -> int:
    """Run ``command(options, client, **kw)``; a refused request exits 2, a server-side failure 1."""
    c = client(options)  # not ``with``: a test's in-process TestClient would start the app's lifespan
    try:
        return command(options, c, **kw)
    except ApiError as exc:
        print(f"lethe: {exc}", file=sys.stderr)
        return 1 if exc.status >= 500 else 2
    except httpx.HTTPError as exc:
        print(f"lethe: cannot reach the stack: {exc}", file=sys.stderr)
        return 2
    finally:
        c.close()


def follow_registration(c: httpx.Client, view: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
    from app.cli.progress import reporter

    bar = reporter(f"registering {view['name']}", quiet=quiet, stream=sys.stderr)
    while True:
        view = call(c, "GET", f"/v1/models/registrations/{view['id']}")
        bar.update(view["percent"], view["stage"])
        if view["status"] in ("completed", "failed"):
            bar.close()
            return view
        time.sleep(0.5)


def cmd_register(r: Remote, c: httpx.Client, *, name: str, spec: str, weights: str | None, config: str | None,
                 no_follow: bool) -> int:
    body: dict[str, Any] = {"name": name, "spec": spec}
    if config:
        text = Path(config).read_text() if Path(config).is_file() else config
        body["config"] = json.loads(text)
    if weights and weights.startswith("models:/"):  # adopted from an MLflow registry by the worker
        body["weights_uri"] = weights
    elif weights:
        body["weights_base64"] = base64.b64encode(Path(weights).read_bytes()).decode()
    view = call(c, "POST", "/v1/models", json=body)
    if not no_follow:
        view = follow_registration(c, view, quiet=r.json)
    out(r, view, lambda v: f"model {v['name']} ({v['spec']}): {v['status']}"
        + (f", version {v['result']['version']} serving, test accuracy {v['result']['metrics'].get('test_acc')}"
           if v.get("result") else "") + (f"\n  error: {v['error']}" if v.get("error") else ""))
    return 1 if view["status"] == "failed" else 0


def cmd_list(r: Remote, c: httpx.Client) -> int:
    body = call(c, "GET", "/v1/models")
    out(r, body, lambda b: "\n".join(f"{m['name']:<20} v{m['serving_version']}  {m['description']}"
                                     for m in b["items"]) or "no models")
    return 0


def cmd_show(r: Remote, c: httpx.Client, *, name: str) -> int:
    body = call(c, "GET", f"/v1/models/{name}")
    out(r, body, lambda b: "\n".join(
        [f"{b['name']} (spec {b.get('spec')}): serving v{b['serving_version']}",
         *(f"  v{v['version']:<3} {v['method']:<13} {v['state']:<9} test_acc={v['metrics'].get('test_acc')}"
           for v in b["versions"]),
         *(f"  replica {rep['replica_id']}: v{rep['version']}" for rep in b["replicas"])]))
    return 0


def parse_schedule(text: str) -> dict[str, Any] | None:
    """``--schedule``: JSON, ``exact_within_s=3600,max_owed=50,interim=params``, or '' (reset to the default)."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("{"):
        return json.loads(text)
    out_: dict[str, Any] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key == "interim":
            out_[key] = value
        elif value.lower() in ("", "null", "none"):
            out_[key] = None
        else:
            out_[key] = float(value) if key == "exact_within_s" else int(value) if value.isdigit() else value
    return out_


def cmd_policy(r: Remote, c: httpx.Client, *, name: str, chain: str | None, methods: str | None,
               schedule: str | None = None) -> int:
    if chain is not None or methods is not None or schedule is not None:
        changes: dict[str, Any] = {}
        if chain is not None:
            changes["chain"] = [m.strip() for m in chain.split(",") if m.strip()] or None
        if methods is not None:
            changes["methods"] = json.loads(methods)
        if schedule is not None:
            changes["schedule"] = parse_schedule(schedule)
        body = call(c, "PUT", f"/v1/models/{name}/policy", json=changes)
    else:
        body = call(c, "GET", f"/v1/models/{name}/policy")

    def text(b: dict[str, Any]) -> str:
        s = b["schedule"]
        return (f"{b['model']}: chain {' -> '.join(b['chain'])} ({b['chain_source']}); "
                f"method overrides {json.dumps(b['methods'])}; schedule: exact within {s['exact_within_s']:g} s, "
                f"max_owed {s['max_owed']}, interim {s['interim']} ({b['schedule_source']})")
    out(r, body, text)
    return 0


def cmd_exact_now(r: Remote, c: httpx.Client, *, name: str) -> int:
    body = call(c, "POST", f"/v1/models/{name}/exact-now")
    out(r, body, lambda b: f"model {b['model']}: exact job requested for {b['owed']} owed erasure(s)")
    return 0


def cmd_rollback(r: Remote, c: httpx.Client, *, name: str, version: int) -> int:
    body = call(c, "POST", f"/v1/models/{name}/rollback", json={"version": version})
    out(r, body, lambda b: f"model {b['model']}: serving v{b['serving_version']}")
    return 0


models_app = remote_group("list, show, register models and set their unlearning policy")
Name = Annotated[str, typer.Argument(help="the model's name")]


@models_app.command("register", help="register a model of an installed spec (a job with a progress bar)")
def register(ctx: typer.Context, name: Name,
             spec: Annotated[str, typer.Option(help="spec entry-point name (group lethe.models)")],
             weights: Annotated[str | None, typer.Option(
                 help="safetensors state dict to adopt as version 1 instead of training; or models:/NAME@ALIAS "
                      "(models:/NAME/VERSION) to adopt it from the MLflow registry")] = None,
             config: Annotated[str | None, typer.Option(help="JSON (or a JSON file): training, chain, methods")] = None,
             no_follow: Annotated[bool, typer.Option("--no-follow", help="return after the 202")] = False,
             url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_register, name=name, spec=spec, weights=weights,
                      config=config, no_follow=no_follow)


@models_app.command("list", help="registered models")
def list_models(ctx: typer.Context, url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_list)


@models_app.command("show", help="versions, replicas, metrics")
def show(ctx: typer.Context, name: Name, url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_show, name=name)


@models_app.command("policy", help="show, or with --chain/--methods/--schedule set, the model's unlearning policy")
def policy(ctx: typer.Context, name: Name,
           chain: Annotated[str | None, typer.Option(
               help="comma list of methods, ending with an exact one ('' resets)")] = None,
           methods: Annotated[str | None, typer.Option(help="JSON of per-method config overrides")] = None,
           schedule: Annotated[str | None, typer.Option(
               help="exact_within_s=SECONDS,max_owed=N,interim=none|params|auto (or JSON; '' resets)")] = None,
           url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_policy, name=name, chain=chain, methods=methods,
                      schedule=schedule)


@models_app.command("exact-now", help="start the exact job for every owed erasure of the model now")
def exact_now(ctx: typer.Context, name: Name, url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_exact_now, name=name)


@models_app.command("rollback", help="serve an earlier version again (refused if it still carries an erasure)")
def rollback(ctx: typer.Context, name: Name, version: Annotated[int, typer.Argument(help="the version to serve")],
             url: UrlOpt = None, key: KeyOpt = None, json_: JsonOpt = False) -> int:
    return run_remote(remote(ctx, url, key, json_), cmd_rollback, name=name, version=version)
