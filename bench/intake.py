"""Erasure intake and predict throughput against PostgreSQL (DESIGN.md section 8: erasure intake on
2 cores, PostgreSQL, >= 500 requests/s).

One stack (``LETHE_API_WORKERS`` replicas, default 2; PostgreSQL; Redis broker), driven by a
small asyncio keep-alive client with C concurrent connections (common.blast). Phases, each
bounded in requests and seconds, after an unmeasured warm-up:

- ``GET /healthz``: the framework's ceiling on this machine, the baseline of the ratios;
- ``POST /v1/erasure-requests`` for subjects with no data (-> ``no_data``, completes at once);
- ``POST /v1/erasure-requests`` for subjects with data (-> ``queued``; one Celery message each).
  Their samples are inserted straight into the DB beforehand (one ``sample`` row per subject,
  keyed by the same HMAC as the API uses), so seeding costs no benchmark time;
- ``POST /v1/models/toy/predict`` (one input).

The worker is kept idle with ``LETHE_BATCH_WINDOW_S=600`` (it waits for more requests instead of
unlearning), so the numbers are the API's and the database's alone. ``--profile`` samples the
API processes with py-spy during an extra no_data run and writes the hottest frames to
``intake_profile.txt``.

    python bench/intake.py [--quick] [--profile] [--compare] [-c N]   (or: lethe bench intake ...)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (arg_parser, auth_header, bench_stack, blast, install_signal_handlers, md_table,  # noqa: E402
                    ratio, summarise, write_results)

SECRET = "bench-secret"  # LETHE_SUBJECT_KEY_SECRET of bench_stack
TARGET_RPS = 500.0
SINGLE = "POST /v1/erasure-requests, no data, one transaction per request (second stack)"


def subject_key(subject_id: str) -> str:
    return hmac.new(SECRET.encode(), subject_id.encode(), hashlib.sha256).hexdigest()


def seed_subjects(stack: Any, subjects: list[str]) -> None:
    """One toy sample per subject, inserted directly (bench DB only)."""
    import psycopg

    features = json.dumps({"x": [0.1] * 16})
    with psycopg.connect(stack.db_url.replace("+psycopg", ""), autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(
                "COPY sample (model_name, subject_key, split, features, label, deleted, created_at) FROM STDIN") as cp:
            for s in subjects:
                cp.write_row(("toy", subject_key(s), "train", features, 0, False, "2024-01-01T00:00:00+00:00"))


def erasure_maker(prefix: str):  # noqa: ANN201
    headers = auth_header()

    def make(i: int) -> tuple[str, str, bytes, dict[str, str]]:
        return "POST", "/v1/erasure-requests", json.dumps({"subject_id": f"{prefix}-{i}"}).encode(), headers

    return make


def check(results: list, expect: bytes | None) -> int:
    """Failures: non-2xx, or a 2xx whose body lacks the expected status."""
    return sum(1 for r in results if not (200 <= r.status < 300) or (expect is not None and expect not in r.body))


def api_pids(stack: Any) -> list[int]:
    """The uvicorn process(es) of our own stack (same process group)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            if os.getpgid(int(d.name)) == stack.proc.pid and b"uvicorn" in b" ".join(cmd):
                pids.append(int(d.name))
        except (OSError, ProcessLookupError):
            continue
    return pids


def profile(stack: Any, out_dir: Path, seconds: float, concurrency: int, prefix: str) -> dict[str, Any]:
    """py-spy the API processes while no_data intake runs; summarise self and inclusive time."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"error": "py-spy not installed (pip install py-spy)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "intake_profile.raw"
    pid = min(api_pids(stack))  # the uvicorn parent; --subprocesses follows its workers
    spy_proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--subprocesses", "--format", "raw", "--rate", "200",
                                 "--nonblocking", "-d", str(int(seconds) + 1), "-o", str(raw)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(1.0)
    res, wall = blast(stack.url, erasure_maker(prefix), total=10**6, concurrency=concurrency,
                      max_seconds=seconds)
    spy_proc.wait(timeout=60)
    self_t, incl_t, total = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack_s, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack_s.split(";")]  # drop line numbers
        total += n
        self_t[frames[-1]] += n
        for f in set(frames):
            incl_t[f] += n
    lines = [f"py-spy, {seconds:g} s of no_data intake ({summarise(res, wall)['rps']} req/s while sampled), "
             f"{total} samples over all API threads (idle threads included)", "", "top self:"]
    lines += [f"{100 * c / total:6.1f}%  {f}" for f, c in self_t.most_common(30)]
    lines += ["", "top inclusive:"]
    lines += [f"{100 * c / total:6.1f}%  {f}" for f, c in incl_t.most_common(60)]
    (out_dir / "intake_profile.txt").write_text("\n".join(lines) + "\n")
    raw.unlink(missing_ok=True)
    return {"samples": total, "file": str(out_dir / "intake_profile.txt")}


def stack_http_impl(stack: Any) -> str:
    """Which HTTP parser and event loop uvicorn picks in the stack's environment ("auto" prefers the fast ones)."""
    code = ("import importlib.util as u; print(('httptools' if u.find_spec('httptools') else 'h11') + ' + ' + "
            "('uvloop' if u.find_spec('uvloop') else 'asyncio'))")
    return subprocess.run([sys.executable, "-c", code], env=stack.env, capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = arg_parser(__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, help="LETHE_API_WORKERS (default 2, quick 1: faster start)")
    p.add_argument("-c", "--concurrency", type=int, default=16, help="client connections")
    p.add_argument("--seconds", type=float, help="cap per phase (default 15, quick 3)")
    p.add_argument("--requests", type=int, help="cap per phase (default 6000, quick 150)")
    p.add_argument("--profile", action="store_true", help="also py-spy the API during a no_data run")
    p.add_argument("--pythonpath", help="prepend to the stack's PYTHONPATH (e.g. a dir with httptools + uvloop, "
                   "which uvicorn uses when importable) to measure their effect")
    p.add_argument("--compare", action="store_true",
                   help="also measure no_data intake on a second stack with one transaction per request "
                        "(LETHE_INTAKE_BATCH_MAX=1, LETHE_INTAKE_WRITERS=1): the group commit's baseline")
    args = p.parse_args(argv)
    if args.backend != "postgresql":
        p.error("intake is measured on PostgreSQL")
    args.workers = args.workers or (1 if args.quick else 2)
    seconds = args.seconds or (3.0 if args.quick else 15.0)
    total = args.requests or (150 if args.quick else 6000)
    run = uuid.uuid4().hex[:6]
    install_signal_handlers()
    phases: dict[str, dict[str, Any]] = {}
    prof: dict[str, Any] | None = None
    with bench_stack(backend="postgresql", redis_db=args.redis_db, api_workers=args.workers,
                     extra_env={"LETHE_BATCH_WINDOW_S": "600",
                                **({"PYTHONPATH": args.pythonpath} if args.pythonpath else {})}) as stack:
        http_impl = stack_http_impl(stack)
        seeded = [f"seeded-{run}-{i}" for i in range(total)]
        seed_subjects(stack, seeded)
        predict_body = json.dumps({"inputs": [{"x": [0.5] * 16}]}).encode()
        plans = [
            ("GET /healthz (baseline)", lambda i: ("GET", "/healthz", b"", {}), None),
            ("POST /v1/erasure-requests, no data -> no_data", erasure_maker(f"nodata-{run}"),
             b'"no_data"'),
            ("POST /v1/erasure-requests, with data -> queued", erasure_maker(f"seeded-{run}"),
             b'"queued"'),
            ("POST /v1/models/toy/predict", lambda i: ("POST", "/v1/models/toy/predict", predict_body, auth_header()),
             b'"model_version"'),
        ]
        # Warm-up: connections, caches, JIT-free Python paths, the key cache of every replica.
        blast(stack.url, erasure_maker(f"warm-{run}"), total=min(200, total), concurrency=args.concurrency,
              max_seconds=seconds)
        blast(stack.url, plans[3][1], total=min(200, total), concurrency=args.concurrency, max_seconds=seconds)
        for name, make, expect in plans:
            res, wall = blast(stack.url, make, total=total, concurrency=args.concurrency, max_seconds=seconds)
            phases[name] = {**summarise(res, wall), "failures": check(res, expect)}
            stack.check_alive()
        queued_in_db = stack.db_query("SELECT count(*) FROM erasuretarget WHERE status = 'queued'")[0][0]
        broker_depth = None
        try:
            import redis

            broker_depth = redis.Redis.from_url(stack.env["LETHE_REDIS_URL"]).llen("unlearn")
        except Exception:  # noqa: BLE001
            pass
        if args.profile:
            prof = profile(stack, args.out, seconds, args.concurrency, f"prof-{run}")
    if args.compare:
        with bench_stack(backend="postgresql", redis_db=args.redis_db, api_workers=args.workers,
                         extra_env={"LETHE_BATCH_WINDOW_S": "600", "LETHE_INTAKE_BATCH_MAX": "1",
                                    "LETHE_INTAKE_WRITERS": "1"}) as stack:
            make = erasure_maker(f"single-{run}")
            blast(stack.url, erasure_maker(f"warm1-{run}"), total=min(200, total), concurrency=args.concurrency,
                  max_seconds=seconds)
            res, wall = blast(stack.url, make, total=total, concurrency=args.concurrency, max_seconds=seconds)
            phases[SINGLE] = {**summarise(res, wall), "failures": check(res, b'"no_data"')}

    base = phases["GET /healthz (baseline)"]["rps"]
    grouped = phases["POST /v1/erasure-requests, no data -> no_data"]["rps"]
    rows = [[name, ph["requests"], ph["failures"], ph["rps"], ph["p50_ms"], ph["p99_ms"], ratio(ph["rps"], base),
             ratio(ph["rps"], TARGET_RPS) if "erasure" in name else "",
             ratio(grouped, ph["rps"]) if name == SINGLE else ""]
            for name, ph in phases.items()]
    table = md_table(["endpoint", "requests", "failures", "req/s", "p50 ms", "p99 ms", "req/s vs healthz",
                      "req/s vs 500 target", "group commit speed-up"], rows)
    failures = sum(ph["failures"] for ph in phases.values())
    data = {"settings": {"api_workers": args.workers, "concurrency": args.concurrency, "seconds_cap": seconds,
                         "requests_cap": total, "backend": "postgresql", "model": "toy",
                         "LETHE_BATCH_WINDOW_S": 600, "uvicorn_http_loop": http_impl,
                         "pythonpath": args.pythonpath, "client": "asyncio keep-alive HTTP/1.1, same machine"},
            "phases": phases, "failures": failures, "target_rps": TARGET_RPS,
            "intake_no_data_rps": phases["POST /v1/erasure-requests, no data -> no_data"]["rps"],
            "intake_queued_rps": phases["POST /v1/erasure-requests, with data -> queued"]["rps"],
            "predict_rps": phases["POST /v1/models/toy/predict"]["rps"],
            "queued_targets_in_db": queued_in_db, "broker_queue_depth": broker_depth, "profile": prof}
    notes = [f"{args.workers} API replicas (uvicorn workers, {http_impl}), PostgreSQL, Redis broker, toy model; {args.concurrency} "
             f"keep-alive connections from one asyncio client on the same machine; each phase capped at {total} "
             f"requests or {seconds:g} s; LETHE_BATCH_WINDOW_S=600 keeps the worker idle.",
             f"queued targets in the DB after the run: {queued_in_db}; Celery messages waiting in Redis: {broker_depth}.",
             "The client, the API processes and PostgreSQL share the machine's CPUs."]
    if args.compare:
        notes.append("The last row ran on a second, identical stack with LETHE_INTAKE_BATCH_MAX=1 and "
                     "LETHE_INTAKE_WRITERS=1 (every request its own transaction); 'group commit speed-up' is the "
                     "no_data row's req/s over it.")
    write_results(args.out, "intake", title="Erasure intake and predict throughput", table=table, notes=notes,
                  data=data)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
