"""Hot swap under load (DESIGN.md sections 5 and 8: 0 failed predictions during a swap).

A paced load generator (a few threads, one keep-alive httpx client each) calls
``POST /v1/models/toy/predict`` on a stack with ``LETHE_API_WORKERS`` replicas while M
erasures of toy training subjects run one after another, each producing a new model version
that every replica must swap in. Phases: *before* (load only, the baseline), *during* (from
the first erasure's submission to the last one's completion), *after* (load only).

Reported: requests, failures (any non-200 or transport error), p50/p99 latency per phase and
the ratio during/before, distinct ``model_version`` values seen (swaps observed), and *stale
answers*: requests sent after the client saw erasure k reported ``completed`` that were still
answered by a version older than k's ``version_after`` (target 0).

    python bench/swap.py [--quick]      (or: lethe bench swap [--quick])
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (TOY_TRAIN_SUBJECTS, arg_parser, bench_stack, install_signal_handlers, md_table,  # noqa: E402
                    ms, percentile, ratio, write_results)

BODY = {"inputs": [{"x": [0.5] * 16}]}


class Load:
    """``threads`` closed-loop clients paced to ``rate`` requests/s in total."""

    def __init__(self, url: str, headers: dict[str, str], threads: int, rate: float) -> None:
        self.url, self.headers, self.threads, self.rate = url, headers, threads, rate
        self.results: list[tuple[float, float, int, int | None]] = []  # sent, done, status, version
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        interval = self.threads / self.rate
        next_at = time.perf_counter() + interval * i / self.threads
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as c:
            while not self._stop.is_set():
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_at = max(next_at + interval, time.perf_counter() - interval)
                sent = time.perf_counter()
                try:
                    r = c.post("/v1/models/toy/predict", json=BODY)
                    version = r.json().get("model_version") if r.status_code == 200 else None
                    status = r.status_code
                except httpx.HTTPError:
                    status, version = 0, None
                self.results.append((sent, time.perf_counter(), status, version))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=40)


def phase(results: list[tuple[float, float, int, int | None]], start: float, end: float) -> dict[str, Any]:
    rows = [r for r in results if start <= r[0] < end]
    lat = [d - s for s, d, status, _ in rows if status == 200]
    return {"requests": len(rows), "failures": sum(1 for r in rows if r[2] != 200),
            "rps": round(len(rows) / (end - start), 1) if end > start else None,
            "p50_ms": ms(percentile(lat, 50)), "p99_ms": ms(percentile(lat, 99))}


def main(argv: list[str] | None = None) -> int:
    p = arg_parser(__doc__.splitlines()[0])
    p.add_argument("--erasures", type=int, help="M erasures, one after another (default 5, quick 1)")
    p.add_argument("--replicas", type=int, default=2, help="LETHE_API_WORKERS")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--rate", type=float, help="total predict requests/s (default 60, quick 30)")
    p.add_argument("--before-s", type=float, help="baseline load duration (default 15, quick 3)")
    p.add_argument("--after-s", type=float, help="load after the last completion (default 5, quick 2)")
    args = p.parse_args(argv)
    m = args.erasures or (1 if args.quick else 5)
    rate = args.rate or (30.0 if args.quick else 60.0)
    before_s = args.before_s if args.before_s is not None else (3.0 if args.quick else 15.0)
    after_s = args.after_s if args.after_s is not None else (2.0 if args.quick else 5.0)
    subjects = TOY_TRAIN_SUBJECTS[:m]
    settings = {"api_workers": args.replicas, "load_threads": args.threads, "target_rate_rps": rate,
                "erasures": m, "model": "toy", "backend": args.backend, "LETHE_BATCH_WINDOW_S": 0.5,
                "before_s": before_s, "after_s": after_s}
    install_signal_handlers()
    with bench_stack(backend=args.backend, redis_db=args.redis_db, api_workers=args.replicas,
                     extra_env={"LETHE_BATCH_WINDOW_S": "0.5"}) as stack:
        with stack.client() as c:
            start_version = c.get("/v1/models/toy").json()["serving_version"]
        erasures: list[dict[str, Any]] = []
        with Load(stack.url, stack.headers, args.threads, rate) as load:
            t_before = time.perf_counter()
            time.sleep(before_s)
            t_during = time.perf_counter()
            with stack.client() as c:
                for subject in subjects:
                    submitted = time.perf_counter()
                    r = c.post("/v1/erasure-requests", json={"subject_id": subject})
                    r.raise_for_status()
                    body = stack.wait_status(r.json()["id"], ("completed", "failed", "no_data"), timeout=300)
                    seen = time.perf_counter()
                    toy = (body.get("result") or {}).get("models", {}).get("toy", {})
                    erasures.append({"subject": subject, "status": body["status"], "seen_completed_at": seen,
                                     "client_wall_s": round(seen - submitted, 3),
                                     "time_to_forget_s": (body.get("result") or {}).get("time_to_forget_s"),
                                     "version_after": toy.get("version_after"), "method": toy.get("method")})
            t_after = time.perf_counter()
            time.sleep(after_s)
        t_end = time.perf_counter()  # the load threads have stopped: nothing is sent after this
        results = list(load.results)
        with stack.client() as c:
            replicas = c.get("/v1/models/toy").json()["replicas"]

    ok = [r for r in results if r[2] == 200]
    versions = sorted({r[3] for r in ok if r[3] is not None})
    stale = 0
    for sent, _, status, version in ok:
        if any(e["version_after"] and sent > e["seen_completed_at"] and version < e["version_after"]
               for e in erasures):
            stale += 1
    before, during, after = (phase(results, t_before, t_during), phase(results, t_during, t_after),
                             phase(results, t_after, t_end))
    failures = sum(1 for r in results if r[2] != 200)
    data = {
        "settings": settings,
        "total_requests": len(results), "failures": failures,
        "statuses": {str(s): sum(1 for r in results if r[2] == s) for s in sorted({r[2] for r in results})},
        "before": before, "during": during, "after": after,
        "p50_ratio_during_before": ratio(during["p50_ms"], before["p50_ms"]),
        "p99_ratio_during_before": ratio(during["p99_ms"], before["p99_ms"]),
        "start_version": start_version, "versions_seen": versions, "swaps_observed": len(versions) - 1,
        "swaps_expected": sum(1 for e in erasures if e["status"] == "completed"),
        "stale_after_completion": stale,
        "erasures": [{k: v for k, v in e.items() if k != "seen_completed_at"} for e in erasures],
        "replicas_at_end": [{"replica_id": r.get("replica_id"), "version": r.get("version")} for r in replicas],
    }
    rows = [[name, ph["requests"], ph["failures"], ph["rps"], ph["p50_ms"], ph["p99_ms"],
             ratio(ph["p50_ms"], before["p50_ms"]), ratio(ph["p99_ms"], before["p99_ms"])]
            for name, ph in (("before (baseline)", before), ("during erasures", during), ("after", after))]
    table = md_table(["phase", "requests", "failures", "req/s", "p50 ms", "p99 ms", "p50 ratio", "p99 ratio"], rows)
    summary = md_table(["total requests", "failures (target 0)", "swaps observed / expected",
                        "stale answers after completion (target 0)", "erasure time-to-forget s"],
                       [[len(results), failures, f"{len(versions) - 1} / {data['swaps_expected']}", stale,
                         ", ".join(str(e["time_to_forget_s"]) for e in erasures)]])
    notes = [
             f"{args.replicas} API replicas (uvicorn workers), 1 Celery worker, {args.backend}, Redis broker; toy "
             f"model; {args.threads} load threads paced to {rate:g} req/s; {m} erasures one after another; "
             "LETHE_BATCH_WINDOW_S=0.5, other settings default.",
             "The worker, the replicas and the load generator share the machine's CPUs: latency during erasures "
             "includes the unlearning job's CPU use, not only the swap.",
             f"versions seen: {versions}"]
    write_results(args.out, "swap", title="Hot swap under load", table=table + "\n\n" + summary, notes=notes,
                  data=data)
    return 0 if failures == 0 and stale == 0 and all(e["status"] == "completed" for e in erasures) else 1


if __name__ == "__main__":
    sys.exit(main())
