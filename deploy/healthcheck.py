"""Container health checks, one per role: ``python deploy/healthcheck.py api|worker|beat``.

Docker's HEALTHCHECK and the Kubernetes probes run this; exit 0 is healthy, 1 is not.

- ``api``: ``GET /healthz`` on the local port answers 200 (the process serves HTTP).
- ``worker`` (the GPU ``unlearn`` worker and the ``housekeeping`` one): a Celery ``ping`` sent
  through the broker to this container's node only (``celery@<hostname>``, Celery's default node
  name) is answered. The reply comes from the worker's main process, which keeps consuming
  control messages while a pool child runs a long unlearning job, so a busy worker is healthy; a
  hung consumer, or a worker cut off from the broker (it can do no work then), is not. It loads
  only the Celery app of ``app.core.queue`` (about 1 s), not the tasks and torch (about 6 s)
  that ``celery -A workers.celery_app inspect ping`` would import every interval.
- ``beat``: beat has no control channel to ping, so its heartbeat is its schedule file. The
  persistent scheduler rewrites it (``shelve`` with ``writeback``) after sending a task at most
  every ``sync_every`` (3 min); with the housekeeping task due every few seconds a live beat
  touches it at least that often. Stale for longer than ``--max-age`` (default 10 min): the
  scheduling loop is stuck.
"""

from __future__ import annotations

import argparse
import glob
import os
import socket
import sys
import time
import urllib.request


def check_api(port: int, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:  # noqa: S310
            return r.status == 200
    except OSError:
        return False


def check_worker(node: str, timeout: float) -> bool:
    from app.core.queue import get_celery

    try:
        replies = get_celery().control.ping(destination=[node], timeout=timeout)
    except Exception:  # noqa: BLE001 - a broker that cannot be reached is an unhealthy worker
        return False
    return any(node in reply for reply in replies)


def check_beat(schedule: str, max_age_s: float) -> bool:
    # shelve may add a suffix (.db; .dat/.dir for dbm.dumb): the newest of them is the heartbeat.
    mtimes = [os.path.getmtime(p) for p in glob.glob(glob.escape(schedule) + "*")]
    return bool(mtimes) and time.time() - max(mtimes) <= max_age_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["api", "worker", "beat"])
    parser.add_argument("--port", type=int, default=8000, help="api: the port uvicorn listens on")
    parser.add_argument("--node", default=f"celery@{socket.gethostname()}", help="worker: the Celery node name")
    parser.add_argument("--schedule", default="/tmp/celerybeat-schedule", help="beat: its -s schedule file")
    parser.add_argument("--max-age", type=float, default=600.0, help="beat: seconds the schedule may stay unchanged")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    args = parser.parse_args(argv)
    if args.role == "api":
        ok = check_api(args.port, args.timeout)
    elif args.role == "worker":
        ok = check_worker(args.node, args.timeout)
    else:
        ok = check_beat(args.schedule, args.max_age)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
