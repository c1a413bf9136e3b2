"""`lethe models ...`: drive a running stack's model registry over its HTTP API.

Also the pieces every remote command shares (``client``, ``call``, ``out``, ``run_remote``,
``connection_options``). The stack is ``--url`` / ``LETHE_URL`` (default: the local embedded stack on ``LETHE_PORT``) and
the key ``--key`` / ``LETHE_KEY`` (default: the embedded stack's ``<data_dir>/admin.key``). Human
output by default, ``--json`` for scripts (one JSON object, the API's fields). Exit codes: 0 ok,
1 the operation failed (e.g. a registration ended ``failed``, or the stack answered 5xx), 2 usage
or a refused request (4xx, or the stack cannot be reached).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from app.core.config import get_settings


class ApiError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text}
        self.status, self.body = response.status_code, body
        detail = body.get("detail") or (body.get("error") or {}).get("message") or response.text
        super().__init__(f"{response.status_code} {body.get('code', '')}: {detail}".strip())


def client(args: argparse.Namespace) -> httpx.Client:
    settings = get_settings()
    url = args.url or os.environ.get("LETHE_URL") or f"http://127.0.0.1:{settings.port}"
    key = args.key or os.environ.get("LETHE_KEY")
    if not key and (settings.data_dir / "admin.key").exists():
        key = (settings.data_dir / "admin.key").read_text().strip()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60)


def call(c: httpx.Client, method: str, path: str, **kw: Any) -> dict[str, Any]:
    r = c.request(method, path, **kw)
    if r.status_code >= 400:
        raise ApiError(r)
    return r.json()


def follow_registration(c: httpx.Client, view: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
    from tqdm import tqdm

    bar = tqdm(total=100, desc=f"registering {view['name']}", unit="%", disable=quiet, file=sys.stderr)
    while True:
        view = call(c, "GET", f"/v1/models/registrations/{view['id']}")
        bar.set_postfix_str(view["stage"])
        bar.update(round(view["percent"]) - bar.n)
        if view["status"] in ("completed", "failed"):
            bar.close()
            return view
        time.sleep(0.5)


def cmd_register(args: argparse.Namespace, c: httpx.Client) -> int:
    body: dict[str, Any] = {"name": args.name, "spec": args.spec}
    if args.config:
        text = Path(args.config).read_text() if Path(args.config).is_file() else args.config
        body["config"] = json.loads(text)
    if args.weights:
        body["weights_base64"] = base64.b64encode(Path(args.weights).read_bytes()).decode()
    view = call(c, "POST", "/v1/models", json=body)
    if not args.no_follow:
        view = follow_registration(c, view, quiet=args.json)
    out(args, view, lambda v: f"model {v['name']} ({v['spec']}): {v['status']}"
        + (f", version {v['result']['version']} serving, test accuracy {v['result']['metrics'].get('test_acc')}"
           if v.get("result") else "") + (f"\n  error: {v['error']}" if v.get("error") else ""))
    return 1 if view["status"] == "failed" else 0


def cmd_list(args: argparse.Namespace, c: httpx.Client) -> int:
    body = call(c, "GET", "/v1/models")
    out(args, body, lambda b: "\n".join(f"{m['name']:<20} v{m['serving_version']}  {m['description']}"
                                        for m in b["items"]) or "no models")
    return 0


def cmd_show(args: argparse.Namespace, c: httpx.Client) -> int:
    body = call(c, "GET", f"/v1/models/{args.name}")
    out(args, body, lambda b: "\n".join(
        [f"{b['name']} (spec {b.get('spec')}): serving v{b['serving_version']}",
         *(f"  v{v['version']:<3} {v['method']:<13} {v['state']:<9} test_acc={v['metrics'].get('test_acc')}"
           for v in b["versions"]),
         *(f"  replica {r['replica_id']}: v{r['version']}" for r in b["replicas"])]))
    return 0


def cmd_policy(args: argparse.Namespace, c: httpx.Client) -> int:
    if args.chain is not None or args.methods is not None:
        changes: dict[str, Any] = {}
        if args.chain is not None:
            changes["chain"] = [m.strip() for m in args.chain.split(",") if m.strip()] or None
        if args.methods is not None:
            changes["methods"] = json.loads(args.methods)
        body = call(c, "PUT", f"/v1/models/{args.name}/policy", json=changes)
    else:
        body = call(c, "GET", f"/v1/models/{args.name}/policy")
    out(args, body, lambda b: f"{b['model']}: chain {' -> '.join(b['chain'])} ({b['chain_source']}); "
                              f"method overrides {json.dumps(b['methods'])}")
    return 0


def cmd_rollback(args: argparse.Namespace, c: httpx.Client) -> int:
    body = call(c, "POST", f"/v1/models/{args.name}/rollback", json={"version": args.version})
    out(args, body, lambda b: f"model {b['model']}: serving v{b['serving_version']}")
    return 0


def out(args: argparse.Namespace, body: Any, human: Any) -> None:
    """``--json``: the API's object on one line; else ``human(body)``, a string or a rich renderable."""
    if args.json:
        print(json.dumps(body, default=str))
        return
    shown = human(body)
    if isinstance(shown, str):
        print(shown)
    else:
        from rich.console import Console

        Console(soft_wrap=True).print(shown)


def connection_options(suppress: bool) -> argparse.ArgumentParser:
    """--url/--key/--json, accepted before and after the subcommand (``lethe models register X --url U``)."""
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--url", help="Lethe base URL (default LETHE_URL, else the local embedded stack)",
                   **({"default": None} if not suppress else kw))
    p.add_argument("--key", help="API key (default LETHE_KEY, else the embedded stack's admin key)",
                   **({"default": None} if not suppress else kw))
    p.add_argument("--json", action="store_true", help="one JSON object on stdout", **kw)
    return p


def add_models_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, show, register models and set their unlearning policy",
                       parents=[connection_options(False)])
    ms = p.add_subparsers(dest="models_cmd", required=True)
    common = [connection_options(True)]
    r = ms.add_parser("register", help="register a model of an installed spec (a job with a progress bar)",
                      parents=common)
    r.add_argument("name")
    r.add_argument("--spec", required=True, help="spec entry-point name (group lethe.models)")
    r.add_argument("--weights", help="safetensors state dict to adopt as version 1 instead of training")
    r.add_argument("--config", help="JSON (or a JSON file): training, chain, methods")
    r.add_argument("--no-follow", action="store_true", help="return after the 202")
    r.set_defaults(models_run=cmd_register)
    ms.add_parser("list", help="registered models", parents=common).set_defaults(models_run=cmd_list)
    s = ms.add_parser("show", help="versions, replicas, metrics", parents=common)
    s.add_argument("name")
    s.set_defaults(models_run=cmd_show)
    pol = ms.add_parser("policy", help="show, or with --chain/--methods set, the model's unlearning policy",
                        parents=common)
    pol.add_argument("name")
    pol.add_argument("--chain", help="comma list of methods, ending with an exact one ('' resets)")
    pol.add_argument("--methods", help="JSON of per-method config overrides")
    pol.set_defaults(models_run=cmd_policy)
    rb = ms.add_parser("rollback", help="serve an earlier version again (refused if it still carries an erasure)",
                       parents=common)
    rb.add_argument("name")
    rb.add_argument("version", type=int)
    rb.set_defaults(models_run=cmd_rollback)
    p.set_defaults(run=run_models_command)


def run_models_command(args: argparse.Namespace) -> int:
    return run_remote(args, args.models_run)


def run_remote(args: argparse.Namespace, command: Any) -> int:
    """Run ``command(args, client)``; a refused request exits 2, a server-side failure 1."""
    c = client(args)  # not ``with``: a test's in-process TestClient would start the app's lifespan
    try:
        return command(args, c)
    except ApiError as exc:
        print(f"lethe: {exc}", file=sys.stderr)
        return 1 if exc.status >= 500 else 2
    except httpx.HTTPError as exc:
        print(f"lethe: cannot reach the stack: {exc}", file=sys.stderr)
        return 2
    finally:
        c.close()
