"""A real Fides server (``ethyca-fides`` 2.86.2) for ``make test-fides``, shut off from every network.

Fides runs in its own network namespace (``unshare -n``) whose only interface is ``lo``: it can reach
nothing but itself. It gets its own Redis server inside the namespace, and three ``socat`` bridges over
unix sockets in a private folder:

* PostgreSQL: the namespace's 127.0.0.1:5432 -> the host's PostgreSQL (its own fresh database);
* Lethe: the namespace's 127.0.0.1:<lethe port> -> the Lethe stack on the host's loopback (the webhook);
* Fides: the host's 127.0.0.1:<fides port> -> Fides' 8080 in the namespace (Lethe's resume, the test).

The namespace script writes its interface list to ``netns-links.txt`` before Fides starts, so the test
can assert the isolation. Fides needs Python 3.13 (on 3.11 pip resolves 2.78.2) and starts only from a
folder with empty ``data/saas/{config,icon,dataset}`` (the wheel does not ship them).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

CLIENT_ID, CLIENT_SECRET = "lethe-test-root", "lethe-test-root-secret"


@dataclass
class Fides:
    venv: Path
    workdir: Path
    db_url: str
    port: int  # on the host's loopback
    lethe_port: int
    delay_timeout_min: int | None = None  # Fides' privacy_request_delay_timeout, minutes (None: default 3600)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def start(self, timeout: float = 240) -> None:
        sock = self.workdir / "sock"
        for d in ("data/saas/config", "data/saas/icon", "data/saas/dataset", "sock"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        pg = urlsplit(self.db_url.replace("+psycopg", ""))
        host_side = [
            f"socat UNIX-LISTEN:{sock}/pg.sock,fork,unlink-early TCP:{pg.hostname}:{pg.port or 5432}",
            f"socat UNIX-LISTEN:{sock}/lethe.sock,fork,unlink-early TCP:127.0.0.1:{self.lethe_port}",
            f"socat TCP-LISTEN:{self.port},bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:{sock}/fides.sock",
        ]
        env = {
            "FIDES__DATABASE__SERVER": "127.0.0.1", "FIDES__DATABASE__PORT": "5432",
            "FIDES__DATABASE__USER": pg.username or "postgres", "FIDES__DATABASE__PASSWORD": pg.password or "unused",
            "FIDES__DATABASE__DB": pg.path.lstrip("/"),
            "FIDES__REDIS__HOST": "127.0.0.1", "FIDES__REDIS__PORT": "6379", "FIDES__REDIS__DB_INDEX": "0",
            "FIDES__REDIS__PASSWORD": "fides-test-redis",
            "FIDES__SECURITY__APP_ENCRYPTION_KEY": "lethe-test-fides-app-key-32chars",
            "FIDES__SECURITY__OAUTH_ROOT_CLIENT_ID": CLIENT_ID,
            "FIDES__SECURITY__OAUTH_ROOT_CLIENT_SECRET": CLIENT_SECRET,
            "FIDES__USER__ANALYTICS_OPT_OUT": "true",  # a no-op in 2.86; the namespace is what makes it certain
            **({"FIDES__EXECUTION__PRIVACY_REQUEST_DELAY_TIMEOUT": str(self.delay_timeout_min)}
               if self.delay_timeout_min is not None else {}),
        }
        inside = "\n".join([
            "set -e",
            "ip link set lo up",
            "ip -o link show | awk -F': ' '{print $2}' > netns-links.txt",
            f"socat TCP-LISTEN:5432,bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:{sock}/pg.sock &",
            f"socat TCP-LISTEN:{self.lethe_port},bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:{sock}/lethe.sock &",
            f"socat UNIX-LISTEN:{sock}/fides.sock,fork,unlink-early TCP:127.0.0.1:8080 &",
            "redis-server --port 6379 --bind 127.0.0.1 --requirepass fides-test-redis --save '' --appendonly no "
            "> redis.log 2>&1 &",
            *(f"export {k}={shlex.quote(v)}" for k, v in env.items()),
            f"exec {self.venv}/bin/fides webserver --port 8080",
        ])
        log = open(self.workdir / "fides.log", "ab")
        for cmd in host_side:
            self.procs.append(subprocess.Popen(shlex.split(cmd), stdout=subprocess.DEVNULL, stderr=log,
                                               start_new_session=True))
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FIDES")}
        self.procs.append(subprocess.Popen(["unshare", "-n", "bash", "-c", inside], cwd=self.workdir, env=clean,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[-1].poll() is not None:
                raise AssertionError(f"Fides exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=3).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"Fides not healthy after {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.procs.clear()

    def log_tail(self) -> str:
        path = self.workdir / "fides.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def netns_links(self) -> list[str]:
        return (self.workdir / "netns-links.txt").read_text().split()

    def client(self) -> httpx.Client:
        r = httpx.post(f"{self.api}/oauth/token", timeout=60, data={
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "grant_type": "client_credentials"})
        r.raise_for_status()
        return httpx.Client(base_url=self.api, timeout=60,
                            headers={"Authorization": f"Bearer {r.json()['access_token']}"})


def configure(c: httpx.Client, *, webhook_url: str, lethe_key: str, policy: str = "lethe_erasure") -> None:
    """README's Fides recipe, step by step: the connection to Lethe, an erasure policy, its two-way
    pre-execution webhook."""
    calls = [
        ("PATCH", "/connection", [{"name": "Lethe", "key": "lethe", "connection_type": "https", "access": "write"}]),
        ("PUT", "/connection/lethe/secret", {"url": webhook_url, "authorization": f"Bearer {lethe_key}"}),
        ("PATCH", "/dsr/policy", [{"name": "Lethe erasure", "key": policy}]),
        ("PATCH", f"/dsr/policy/{policy}/rule", [{"name": "Erase", "key": "erase", "action_type": "erasure",
                                                  "masking_strategy": {"strategy": "null_rewrite",
                                                                       "configuration": {}}}]),
        ("PATCH", f"/dsr/policy/{policy}/rule/erase/target", [{"name": "User data", "key": "user_data",
                                                                "data_category": "user"}]),
        ("PUT", f"/dsr/policy/{policy}/webhook/pre_execution",
         [{"connection_config_key": "lethe", "direction": "two_way", "name": "Lethe unlearning",
           "key": "lethe_unlearning"}]),
    ]
    for method, path, body in calls:
        r = c.request(method, path, json=body)
        assert r.status_code == 200 and not (isinstance(r.json(), dict) and r.json().get("failed")), \
            f"{method} {path}: {r.status_code} {r.text[:500]}"


def submit(c: httpx.Client, identity: dict, policy: str = "lethe_erasure") -> str:
    r = c.post("/privacy-request", json=[{"identity": identity, "policy_key": policy}])
    assert r.status_code == 200 and r.json()["succeeded"], r.text[:500]
    return r.json()["succeeded"][0]["id"]


def status(c: httpx.Client, pid: str) -> str:
    items = c.get("/privacy-request", params={"request_id": pid}).json()["items"]
    return items[0]["status"]


def wait_status(c: httpx.Client, pid: str, statuses: tuple[str, ...], timeout: float = 180) -> tuple[str, float]:
    """(status, seconds waited) once the privacy request reaches one of ``statuses``."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        last = status(c, pid)
        if last in statuses:
            return last, time.monotonic() - t0
        time.sleep(0.3)
    raise AssertionError(f"privacy request {pid} did not reach {statuses}; last: {last}")
