"""Batching: time-to-forget of 1 request alone vs 100 requests submitted together (DESIGN.md section 8:
100 erasure requests in one minute -> one batched job, <= 2x the time of a single request).

After one unmeasured warm-up erasure, the baseline (same run, same stack) is one erasure of one training subject, submitted alone; wall time
from submission until the client sees ``completed``, and the API's ``result.time_to_forget_s``.
Then N requests for N other distinct training subjects, submitted as fast as a few threads
can; wall time from the first submission until the last request is ``completed`` (statuses are
read from the DB directly, so polling does not load the API). Jobs used: distinct
``result.models.<model>.job_id`` of the N requests, cross-checked against ``UnlearningJob`` rows.

The full run uses the ``digits`` model (a few hundred synthetic training subjects); ``--quick``
uses ``toy`` with 5 requests. ``LETHE_BATCH_WINDOW_S`` is 3 s unless ``--window`` says otherwise:
the single request pays the window too, so the ratio compares like with like.

    python bench/batching.py [--quick]      (or: lethe bench batching [--quick])
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ROOT, TOY_TRAIN_SUBJECTS, arg_parser, bench_stack, install_signal_handlers,  # noqa: E402
                    md_table, ratio, write_results)

TERMINAL = ("completed", "failed", "no_data", "cancelled")


def train_subjects(model: str) -> list[str]:
    if model == "toy":
        return list(TOY_TRAIN_SUBJECTS)
    sys.path.insert(0, str(ROOT))
    from app.ml.specs import get_spec

    return sorted({e.subject_id for e in get_spec(model).load_examples() if e.split == "train"})


def main(argv: list[str] | None = None) -> int:
    p = arg_parser(__doc__.splitlines()[0])
    p.add_argument("--model", help="demo model (default digits, quick toy)")
    p.add_argument("-n", "--requests", type=int, help="batch size (default 100, quick 5)")
    p.add_argument("--window", type=float, default=3.0, help="LETHE_BATCH_WINDOW_S")
    p.add_argument("--threads", type=int, default=8, help="submitting threads")
    args = p.parse_args(argv)
    model = args.model or ("toy" if args.quick else "digits")
    n = args.requests or (5 if args.quick else 100)
    subjects = train_subjects(model)
    if len(subjects) < n + 2:
        p.error(f"{model} has only {len(subjects)} training subjects; need {n + 2}")
    warmup_subject, single_subject, batch_subjects = subjects[0], subjects[1], subjects[2:n + 2]
    install_signal_handlers()
    with bench_stack(backend=args.backend, redis_db=args.redis_db, api_workers=1, demo_models=model,
                     extra_env={"LETHE_BATCH_WINDOW_S": str(args.window)}) as stack:
        # Warm-up (not measured): the worker's first job pays one-off imports and allocations.
        with stack.client() as c:
            r = c.post("/v1/erasure-requests", json={"subject_id": warmup_subject})
            r.raise_for_status()
            warmup = stack.wait_status(r.json()["id"], TERMINAL, timeout=600)
        # Baseline: one request alone.
        with stack.client() as c:
            t0 = time.perf_counter()
            r = c.post("/v1/erasure-requests", json={"subject_id": single_subject})
            r.raise_for_status()
            single = stack.wait_status(r.json()["id"], TERMINAL, timeout=600, every=0.1)
            single_wall = time.perf_counter() - t0

        # N requests at once.
        def submit(subject: str, c: httpx.Client) -> str:
            resp = c.post("/v1/erasure-requests", json={"subject_id": subject})
            resp.raise_for_status()
            return resp.json()["id"]

        clients = [stack.client() for _ in range(args.threads)]
        try:
            t1 = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                ids = list(pool.map(lambda ij: submit(ij[1], clients[ij[0] % len(clients)]),
                                    enumerate(batch_subjects)))
            submit_s = time.perf_counter() - t1
        finally:
            for c in clients:
                c.close()
        marks = ",".join(["%s"] * len(ids))
        deadline = time.monotonic() + 900
        while True:
            done = stack.db_query(f"SELECT count(*) FROM erasurerequest WHERE id IN ({marks}) "
                                  f"AND status IN ('completed','failed','no_data','cancelled')", tuple(ids))[0][0]
            if done == len(ids):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done}/{len(ids)} requests finished in time:\n{stack.logs()}")
            stack.check_alive()
            time.sleep(0.1)
        batch_wall = time.perf_counter() - t1
        with stack.client() as c:
            bodies = [c.get(f"/v1/erasure-requests/{i}").json() for i in ids]
        jobs = stack.db_query("SELECT id, request_ids, status, method, timings FROM unlearningjob "
                              "WHERE model_name = %s ORDER BY started_at", (model,))

    def model_result(body: dict[str, Any]) -> dict[str, Any]:
        return ((body.get("result") or {}).get("models") or {}).get(model) or {}

    statuses = {s: sum(1 for b in bodies if b["status"] == s) for s in sorted({b["status"] for b in bodies})}
    failures = sum(1 for b in bodies if b["status"] != "completed") + (single["status"] != "completed")
    batch_job_ids = sorted({model_result(b).get("job_id") for b in bodies if model_result(b).get("job_id")})
    single_job = model_result(single).get("job_id")
    ttf = [b["result"]["time_to_forget_s"] for b in bodies if (b.get("result") or {}).get("time_to_forget_s")]
    job_rows = [{"job_id": j[0], "requests": len(j[1]) if isinstance(j[1], list) else None, "status": j[2],
                 "method": j[3], "timings": j[4]} for j in jobs]
    warmup_job = model_result(warmup).get("job_id")
    db_batch_jobs = [j for j in job_rows if j["job_id"] not in (single_job, warmup_job)]
    data = {
        "settings": {"model": model, "requests": n, "LETHE_BATCH_WINDOW_S": args.window, "backend": args.backend,
                     "submit_threads": args.threads, "api_workers": 1, "worker_concurrency": 1},
        "single": {"wall_s": round(single_wall, 3), "time_to_forget_s": (single.get("result") or {}).get(
            "time_to_forget_s"), "status": single["status"], "job_id": single_job,
            "method": model_result(single).get("method")},
        "batch": {"requests": n, "submit_s": round(submit_s, 3), "wall_s": round(batch_wall, 3),
                  "max_time_to_forget_s": max(ttf) if ttf else None, "statuses": statuses,
                  "jobs_from_results": len(batch_job_ids), "jobs_in_db": len(db_batch_jobs),
                  "methods": sorted({str(model_result(b).get("method")) for b in bodies})},
        "ratio_wall": ratio(batch_wall, single_wall),
        "ratio_time_to_forget": ratio(max(ttf) if ttf else None, (single.get("result") or {}).get("time_to_forget_s")),
        "failures": failures,
        "warmup": {"status": warmup["status"], "time_to_forget_s": (warmup.get("result") or {}).get("time_to_forget_s")},
        "jobs": job_rows,
    }
    rows = [["1 request (baseline)", 1, data["single"]["wall_s"], data["single"]["time_to_forget_s"], 1,
             data["single"]["method"], 1.0],
            [f"{n} requests", n, data["batch"]["wall_s"], data["batch"]["max_time_to_forget_s"],
             f"{len(batch_job_ids)} (DB: {len(db_batch_jobs)})", ", ".join(data["batch"]["methods"]),
             data["ratio_wall"]]]
    table = md_table(["case", "requests", "wall s (submit -> all completed)", "max time_to_forget_s",
                      "UnlearningJob rows", "method", "ratio vs 1 (target <= 2)"], rows)
    notes = [f"model {model}, {args.backend}, 1 API replica, 1 Celery worker (concurrency 1), Redis broker, "
             f"LETHE_BATCH_WINDOW_S={args.window:g}; {n} distinct training subjects submitted by {args.threads} "
             f"threads in {submit_s:.2f} s.",
             "One warm-up erasure runs first and is not counted (the worker's first job pays one-off costs).",
             "Both cases include the batch window: the worker waits that long after the first queued request.",
             f"failures (not completed): {failures}"]
    write_results(args.out, "batching", title="Batched erasures: 1 vs N requests", table=table, notes=notes,
                  data=data)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
