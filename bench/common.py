"""Shared helpers of the benchmarks: a real Lethe stack in subprocesses, load, statistics, results.

A stack is ``python -m app.cli run`` (bootstrap + Celery worker + uvicorn) started with
``LETHE_*`` variables in its own process group, on loopback, against a fresh PostgreSQL
database ``lethe_bench_<hex>`` (or a SQLite file) and a dedicated Redis DB index (flushed
first) as broker and pub/sub. ``bench_stack`` always stops the processes, drops the database
and removes the data directory, also when the benchmark fails or gets SIGTERM/SIGINT.

Throughput is measured with a small asyncio HTTP/1.1 keep-alive client (``blast``) rather than
httpx: on a 2-core machine the load generator shares the CPUs with the server, and httpx
costs several times more CPU per request than the server's own framework overhead would
leave room for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
ADMIN_KEY = "lethe_bench_admin_key_0123456789abcdef"
PG_ADMIN_URL = os.environ.get("LETHE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("LETHE_BENCH_REDIS", "redis://127.0.0.1:6379")
DEFAULT_REDIS_DB = 15  # the smoke tests use 14, so a running benchmark and `make test` do not share a broker
TOY_TRAIN_SUBJECTS = [f"toy-{i:02d}" for i in range(40) if i % 5 in (2, 3, 4)]


# ---------------------------------------------------------------- CLI and results


def arg_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny counts, for the smoke test")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for NAME.md and NAME.json")
    p.add_argument("--redis-db", type=int, default=DEFAULT_REDIS_DB, help="Redis DB index (flushed first)")
    p.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    return p


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            # Other work on the machine skews every number: record the load when the results are written.
            "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(out_dir: Path, name: str, *, title: str, table: str, notes: list[str],
                  data: dict[str, Any]) -> tuple[Path, Path]:
    """Print the table and write ``NAME.md`` and ``NAME.json`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "machine": machine(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **data}
    md = "\n".join([f"# {title}", "", table, "", *[f"- {n}" for n in notes], ""])
    md_path, json_path = out_dir / f"{name}.md", out_dir / f"{name}.json"
    md_path.write_text(md)
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(md)
    print(f"wrote {md_path} and {json_path}")
    return md_path, json_path


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def install_signal_handlers() -> None:
    """SIGTERM/SIGINT become SystemExit so ``finally`` blocks (stack cleanup) run."""
    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)


# ---------------------------------------------------------------- the stack


@dataclass
class Stack:
    url: str
    db_url: str
    data_dir: Path
    proc: subprocess.Popen
    env: dict[str, str]
    headers: dict[str, str] = field(default_factory=lambda: {"Authorization": f"Bearer {ADMIN_KEY}"})

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def wait_status(self, request_id: str, statuses: tuple[str, ...], timeout: float = 300,
                    every: float = 0.1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        with self.client() as c:
            while time.monotonic() < deadline:
                body = c.get(f"/v1/erasure-requests/{request_id}").json()
                if body.get("status") in statuses:
                    return body
                self.check_alive()
                time.sleep(every)
        raise RuntimeError(f"request {request_id} did not reach {statuses} in {timeout}s; last: {body}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the stack exited ({self.proc.returncode}):\n{self.logs()}")

    def logs(self, tail: int = 4000) -> str:
        path = self.data_dir / "run.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def db_connect(self):  # noqa: ANN201 - psycopg or sqlite3 connection
        if self.db_url.startswith("sqlite"):
            import sqlite3

            return sqlite3.connect(self.db_url.split("///", 1)[1], timeout=30)
        import psycopg

        return psycopg.connect(self.db_url.replace("+psycopg", ""), autocommit=True)

    def db_query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read the stack's DB directly (``%s`` placeholders; rewritten for SQLite)."""
        conn = self.db_connect()
        try:
            if self.db_url.startswith("sqlite"):
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_pg_database() -> tuple[str, Callable[[], None]]:
    import psycopg

    name = f"lethe_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    sa_url = "postgresql+psycopg://" + PG_ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"
    return sa_url, drop


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    # The group may still hold children (uvicorn workers, the Celery worker) after the parent exited;
    # a Celery worker in its batch-window sleep never finishes a warm shutdown, hence the short grace.
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        proc.poll()  # reap the parent, or its zombie keeps the group alive
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextlib.contextmanager
def bench_stack(*, backend: str = "postgresql", redis_db: int = DEFAULT_REDIS_DB, api_workers: int = 1,
                demo_models: str = "toy", extra_env: dict[str, str] | None = None, min_replicas: int | None = None,
                ready_timeout: float = 240.0, keep_dir: bool = False) -> Iterator[Stack]:
    """Start ``lethe run`` on loopback; always stop it, drop its DB and remove its data dir."""
    import redis

    if redis_db not in (14, 15):
        raise ValueError("benchmarks use Redis DB 14 or 15 only")
    data_dir = Path(tempfile.mkdtemp(prefix="lethe-bench-"))
    drop: Callable[[], None] = lambda: None  # noqa: E731
    proc: subprocess.Popen | None = None
    try:
        if backend == "postgresql":
            db_url, drop = create_pg_database()
        else:
            db_url = f"sqlite:///{data_dir / 'lethe.db'}"
        redis_url = f"{REDIS_BASE}/{redis_db}"
        redis.Redis.from_url(redis_url).flushdb()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
        env.update({
            "LETHE_DATA_DIR": str(data_dir), "LETHE_DATABASE_URL": db_url, "LETHE_HOST": "127.0.0.1",
            "LETHE_PORT": str(port), "LETHE_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY, "LETHE_DEMO_MODELS": demo_models,
            "LETHE_SUBJECT_KEY_SECRET": "bench-secret", "LETHE_REDIS_URL": redis_url, "LETHE_BROKER_URL": redis_url,
            "LETHE_API_WORKERS": str(api_workers), "LETHE_DEVICE": "cpu", "LETHE_LOG_LEVEL": "WARNING",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        })
        log = open(data_dir / "run.log", "ab")  # noqa: SIM115 - closed with the process group
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "run"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        stack = Stack(url=f"http://127.0.0.1:{port}", db_url=db_url, data_dir=data_dir, proc=proc, env=env)
        _wait_ready(stack, ready_timeout, min_replicas or api_workers)
        yield stack
    finally:
        if proc is not None:
            _stop_group(proc)
        try:
            drop()
        except Exception as exc:  # noqa: BLE001 - report, keep cleaning
            print(f"warning: could not drop the benchmark database: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            redis.Redis.from_url(f"{REDIS_BASE}/{redis_db}").flushdb()
        if not keep_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


def _wait_ready(stack: Stack, timeout: float, replicas: int) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            if httpx.get(f"{stack.url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    else:
        raise RuntimeError(f"stack not ready in {timeout}s:\n{stack.logs()}")
    # Every uvicorn worker is a replica; wait until each has loaded and heartbeated every model.
    with stack.client() as c:
        models = [m["name"] for m in c.get("/v1/models").json()["items"]]
        while time.monotonic() < deadline:
            if all(len(c.get(f"/v1/models/{m}").json()["replicas"]) >= replicas for m in models):
                return
            time.sleep(0.3)
    raise RuntimeError(f"fewer than {replicas} replicas became live:\n{stack.logs()}")


# ---------------------------------------------------------------- raw keep-alive load


@dataclass
class Result:
    sent: float  # time.perf_counter()
    done: float
    status: int  # 0: transport error
    body: bytes


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split(b" ", 2)[1])
    length, chunked, close = None, False, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readline()
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts), close
    body = await reader.readexactly(length) if length else b""
    return status, body, close


async def _connection(host: str, port: int, make: Callable[[int], tuple[str, str, bytes, dict[str, str]]],
                      counter: Iterator[int], total: int, stop_at: float, out: list[Result]) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at:
        i = next(counter)
        if i >= total:
            break
        method, path, body, extra = make(i)
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}",
                "Content-Type: application/json", *[f"{k}: {v}" for k, v in extra.items()]]
        payload = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        sent = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(payload)
            status, data, close = await asyncio.wait_for(_read_response(reader), timeout=30)
            out.append(Result(sent, time.perf_counter(), status, data))
            if close:
                writer.close()
                reader = writer = None
        except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError,
                IndexError) as exc:
            out.append(Result(sent, time.perf_counter(), 0, repr(exc).encode()))
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def blast(url: str, make: Callable[[int], tuple[str, str, bytes, dict[str, str]]], *, total: int,
          concurrency: int, max_seconds: float) -> tuple[list[Result], float]:
    """Send up to ``total`` requests over ``concurrency`` keep-alive connections, for at most ``max_seconds``.

    ``make(i)`` returns ``(method, path, body, extra_headers)`` of request ``i``. Returns the
    results and the wall time from the first send to the last answer.
    """
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    out: list[Result] = []
    counter = iter(range(10**12))

    async def main() -> float:
        t0 = time.perf_counter()
        stop_at = t0 + max_seconds
        await asyncio.gather(*[_connection(host, int(port), make, counter, total, stop_at, out)
                               for _ in range(concurrency)])
        return time.perf_counter() - t0

    wall = asyncio.run(main())
    return out, wall


def summarise(results: list[Result], wall: float) -> dict[str, Any]:
    lat = [r.done - r.sent for r in results if 200 <= r.status < 300]
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    return {"requests": len(results), "seconds": round(wall, 3),
            "rps": round(len(results) / wall, 1) if wall else None, "statuses": statuses,
            "p50_ms": ms(percentile(lat, 50)), "p99_ms": ms(percentile(lat, 99))}


def auth_header() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}
