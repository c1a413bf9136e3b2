"""Soak: the heaviest real MovieLens users erased one after another, then more in one burst
(DESIGN.md section 8: 100 % of acknowledged erasures end ``completed``; test accuracy after
unlearning within 0.5 points of the retrained reference).

On one real stack serving the ``movielens`` demo model (``bench_stack``): the ``--sequential``
heaviest trained users (most training ratings; holdout users are never trained on, so they are
skipped) are erased one after another, each waited to its end; then the next ``--burst`` heaviest
users are submitted at once from as many threads and waited on together. One progress line per
request. Time-to-forget is each request's ``result.time_to_forget_s`` (receipt to the last live
replica serving a clean version). A request that does not end ``completed`` is listed with its
status, error and the gates its job's attempts failed (read from the job row).

Accuracy, measured in the same run on the same test set (the registry's live ``test`` samples
once every erasure has ended, i.e. the test ratings of the users who remain): the model served
at the start and at the end (over ``POST /v1/models/movielens/predict``), next to full retrains
from scratch (``app.ml.train.train_from_scratch``, the spec's own recipe, ``--retrain-seeds``
seeds) on the registry's retain set (live ``train`` samples) — a model that never saw the erased
users. The retrains run after the stack has stopped, so they do not share the cores with it.

    python bench/soak.py [--backend sqlite|postgresql] [--sequential 50] [--burst 50]
    lethe bench soak --sequential 5 --burst 5
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ROOT, Stack, arg_parser, bench_stack, install_signal_handlers, md_table,  # noqa: E402
                    percentile, write_results)

sys.path.insert(0, str(ROOT))
MODEL = "movielens"
TERMINAL = ("completed", "failed", "no_data", "cancelled", "rejected")
PREDICT_CHUNK = 1024  # the predict endpoint's max inputs per call


def heaviest_users(n: int) -> list[str]:
    """The ``n`` trained MovieLens users with the most training ratings, heaviest first."""
    from app.ml.specs import get_spec

    counts = Counter(e.subject_id for e in get_spec(MODEL).load_examples() if e.split == "train")
    if len(counts) < n:
        raise SystemExit(f"{MODEL} has only {len(counts)} trained users; asked for {n}")
    return [sid for sid, _ in sorted(counts.items(), key=lambda kv: (-kv[1], int(kv[0])))[:n]]


# ---------------------------------------------------------------- requests


def submit(stack: Stack, user: str, tag: str) -> tuple[str, float]:
    with stack.client() as c:
        resp = c.post("/v1/erasure-requests", json={"subject_id": user, "reason": "soak"},
                      headers={"Idempotency-Key": f"soak-{tag}-{user}"})
    if resp.status_code != 202:
        raise RuntimeError(f"submitting user {user}: {resp.status_code} {resp.text[:500]}")
    return resp.json()["id"], time.perf_counter()


def job_attempts(stack: Stack, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Methods a request's job tried: from its result, or (a failed request has none) its job row."""
    attempts = (((body.get("result") or {}).get("models") or {}).get(MODEL) or {}).get("attempts")
    if attempts:
        return attempts
    job_ids = [m["job_id"] for m in body.get("models") or [] if m.get("job_id")]
    if not job_ids:
        return []
    try:
        rows = stack.db_query("SELECT attempts FROM unlearningjob WHERE id = %s", (job_ids[0],))
    except Exception as exc:  # noqa: BLE001 - a report detail, never a reason to lose the run
        return [{"method": "?", "passed": False, "report": {"gates": {"db": {"passed": False, "reason": repr(exc)}}}}]
    raw = rows[0][0] if rows else None
    return (json.loads(raw) if isinstance(raw, str) else raw) or []


def outcome(stack: Stack, user: str, phase: str, body: dict[str, Any], wall_s: float) -> dict[str, Any]:
    result = body.get("result") or {}
    model = (result.get("models") or {}).get(MODEL) or {}
    attempts = job_attempts(stack, body)
    tried = []
    for a in attempts:
        gates = (a.get("report") or {}).get("gates") or {}
        tried.append({"method": a.get("method"), "passed": bool(a.get("passed")),
                      "failed_gates": {k: g.get("reason") for k, g in gates.items() if not g.get("passed")}})
    return {"phase": phase, "user": user, "id": body.get("id"), "status": body.get("status"),
            "error": body.get("error"), "time_to_forget_s": result.get("time_to_forget_s"), "wall_s": round(wall_s, 3),
            "method": model.get("method"), "version_after": model.get("version_after"),
            "job_id": next((m.get("job_id") for m in body.get("models") or []), None), "attempts": tried}


def progress_line(i: int, n: int, o: dict[str, Any]) -> str:
    ttf = o["time_to_forget_s"]
    line = (f"[{o['phase']} {i:>3}/{n}] user {o['user']:>4} -> {o['status']:<9} wall {o['wall_s']:7.1f} s"
            f"  ttf {'-' if ttf is None else f'{ttf:.1f} s'}  method {o['method'] or '-'}  v{o['version_after'] or '-'}"
            f"  {o['id']}")
    if o["status"] != "completed":
        failed = [f"{a['method']}: " + "; ".join(f"{k}: {r}" for k, r in a["failed_gates"].items())
                  for a in o["attempts"] if not a["passed"]]
        line += f"\n      error: {o['error']}" + "".join(f"\n      {f}" for f in failed)
    return line


def run_sequential(stack: Stack, users: list[str], timeout: float) -> list[dict[str, Any]]:
    out = []
    for i, user in enumerate(users, 1):
        rid, t0 = submit(stack, user, "seq")
        body = stack.wait_status(rid, TERMINAL, timeout=timeout, every=0.2)
        out.append(outcome(stack, user, "seq", body, time.perf_counter() - t0))
        print(progress_line(i, len(users), out[-1]), flush=True)
    return out


def run_burst(stack: Stack, users: list[str], timeout: float) -> tuple[list[dict[str, Any]], float]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, min(len(users), 50))) as pool:
        submitted = list(pool.map(lambda u: (u, *submit(stack, u, "burst")), users))
    print(f"[burst] {len(users)} requests accepted in {time.perf_counter() - t0:.2f} s", flush=True)
    pending = {rid: (user, sent) for user, rid, sent in submitted}
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with stack.client() as c:
        while pending and time.monotonic() < deadline:
            for rid, (user, sent) in list(pending.items()):
                body = c.get(f"/v1/erasure-requests/{rid}").json()
                if body.get("status") in TERMINAL:
                    del pending[rid]
                    out.append(outcome(stack, user, "burst", body, time.perf_counter() - sent))
                    print(progress_line(len(out), len(users), out[-1]), flush=True)
            stack.check_alive()
            time.sleep(0.5)
        for rid, (user, sent) in pending.items():  # still open at the deadline: reported, not waited on
            body = c.get(f"/v1/erasure-requests/{rid}").json()
            out.append(outcome(stack, user, "burst", body, time.perf_counter() - sent))
            print(progress_line(len(out), len(users), out[-1]) + "  (timed out)", flush=True)
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------- accuracy


def registry_examples(stack: Stack) -> list[Any]:
    """The registry's live samples of the model, as ``Example``s (features parsed from JSON)."""
    from app.ml.spec import Example

    rows = stack.db_query("SELECT subject_key, split, features, label FROM sample WHERE model_name = %s "
                          "AND deleted = %s", (MODEL, False))
    return [Example(key, split, json.loads(f) if isinstance(f, str) else f, int(label)) for key, split, f, label in rows]


def served_accuracy(stack: Stack, test: list[Any]) -> tuple[float, int]:
    """Accuracy of the served model on ``test`` over HTTP, and the one version that answered."""
    correct, versions = 0, set()
    with stack.client(timeout=120) as c:
        for start in range(0, len(test), PREDICT_CHUNK):
            chunk = test[start:start + PREDICT_CHUNK]
            resp = c.post(f"/v1/models/{MODEL}/predict", json={"inputs": [e.features for e in chunk]})
            resp.raise_for_status()
            body = resp.json()
            versions.add(body["model_version"])
            correct += sum(int(p["label"] == e.label) for p, e in zip(body["predictions"], chunk))
    if len(versions) != 1:
        raise RuntimeError(f"the served version changed while measuring accuracy: {sorted(versions)}")
    return correct / len(test), versions.pop()


def retrain_accuracy(examples: list[Any], test: list[Any], seeds: int) -> list[dict[str, Any]]:
    import torch

    from app.ml.specs import get_spec
    from app.ml.train import evaluate, train_from_scratch

    spec, out = get_spec(MODEL), []
    for seed in range(seeds):
        t0 = time.perf_counter()
        model, meta = train_from_scratch(spec, examples, device="cpu", seed=seed)
        out.append({"seed": seed, "test_acc": evaluate(spec, model, meta, test, device="cpu"),
                    "seconds": round(time.perf_counter() - t0, 2)})
        print(f"[retrain] seed {seed}: test acc {out[-1]['test_acc']:.4f} in {out[-1]['seconds']:.1f} s", flush=True)
    return out


# ---------------------------------------------------------------- report


def phase_row(name: str, items: list[dict[str, Any]], wall: float | None) -> list[Any]:
    ttf = [o["time_to_forget_s"] for o in items if o["status"] == "completed" and o["time_to_forget_s"] is not None]
    statuses = Counter(o["status"] for o in items)
    other = sum(v for k, v in statuses.items() if k not in ("completed", "failed"))
    jobs = len({o["job_id"] for o in items if o["job_id"]})
    p50, p95 = percentile(ttf, 50), percentile(ttf, 95)
    return [name, len(items), statuses.get("completed", 0), statuses.get("failed", 0), other,
            "-" if p50 is None else round(p50, 2), "-" if p95 is None else round(p95, 2),
            "-" if wall is None else round(wall, 1), jobs]


def main(argv: list[str] | None = None) -> int:
    p = arg_parser(__doc__.splitlines()[0])
    p.add_argument("--sequential", type=int, help="users erased one after another (default 50, quick 3)")
    p.add_argument("--burst", type=int, help="users then submitted at once (default 50, quick 3)")
    p.add_argument("--window", type=float, help="LETHE_BATCH_WINDOW_S (default: the stack's own setting)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for one request / the burst")
    p.add_argument("--retrain-seeds", type=int, default=3, help="full retrains for the reference accuracy")
    args = p.parse_args(argv)
    n_seq = args.sequential if args.sequential is not None else (3 if args.quick else 50)
    n_burst = args.burst if args.burst is not None else (3 if args.quick else 50)
    users = heaviest_users(n_seq + n_burst)
    seq_users, burst_users = users[:n_seq], users[n_seq:]
    extra_env = {"LETHE_BATCH_WINDOW_S": str(args.window)} if args.window is not None else {}
    install_signal_handlers()
    t_start = time.perf_counter()
    with bench_stack(backend=args.backend, redis_db=args.redis_db, demo_models=MODEL, extra_env=extra_env) as stack:
        print(f"stack ready ({args.backend}) in {time.perf_counter() - t_start:.1f} s; erasing {n_seq} users "
              f"one after another, then {n_burst} at once", flush=True)
        # The test set of the users who will remain, measured on the model served before any erasure.
        from app.core.security import subject_key

        secret = stack.env["LETHE_SUBJECT_KEY_SECRET"]
        erased_keys = {subject_key(secret, u) for u in users}
        start_examples = registry_examples(stack)
        final_test = [e for e in start_examples if e.split == "test" and e.subject_id not in erased_keys]
        acc_before, version_before = served_accuracy(stack, final_test)
        print(f"[served] v{version_before}: test acc {acc_before:.4f} on {len(final_test)} test ratings", flush=True)

        t0 = time.perf_counter()
        seq = run_sequential(stack, seq_users, args.timeout)
        seq_wall = time.perf_counter() - t0
        burst, burst_wall = run_burst(stack, burst_users, args.timeout) if burst_users else ([], 0.0)

        # The reference never saw any of the erased users, whatever became of their requests.
        end_examples = registry_examples(stack)
        retain = [e for e in end_examples if e.split == "train" and e.subject_id not in erased_keys]
        test = final_test
        fingerprint = lambda xs: sorted((e.subject_id, json.dumps(e.features, sort_keys=True)) for e in xs)  # noqa: E731
        same_test = fingerprint(test) == fingerprint([e for e in end_examples if e.split == "test"])
        acc_after, version_after = served_accuracy(stack, test)
        print(f"[served] v{version_after}: test acc {acc_after:.4f} on {len(test)} test ratings", flush=True)
        rows = stack.db_query("SELECT subject_key, deleted FROM sample WHERE model_name = %s", (MODEL,))
        still_held = {"live": sum(1 for key, deleted in rows if key in erased_keys and not deleted),
                      "flagged_deleted": sum(1 for key, deleted in rows if key in erased_keys and deleted)}
    retrains = retrain_accuracy(retain, test, args.retrain_seeds)
    retrain_accs = [r["test_acc"] for r in retrains]
    retrain_mean = statistics.fmean(retrain_accs)

    everything = seq + burst
    completed = sum(o["status"] == "completed" for o in everything)
    failed = sum(o["status"] == "failed" for o in everything)
    table = md_table(["phase", "requests", "completed", "failed", "other", "ttf p50 (s)", "ttf p95 (s)", "wall (s)",
                      "jobs"],
                     [phase_row("sequential", seq, seq_wall), phase_row("burst", burst, burst_wall),
                      phase_row("all", everything, None)])
    spread = f"{min(retrain_accs):.4f}..{max(retrain_accs):.4f}" if len(retrain_accs) > 1 else "-"
    acc_table = md_table(["model", "test acc", "vs retrain mean (points)"], [
        [f"served at the start (v{version_before})", round(acc_before, 4), round(100 * (acc_before - retrain_mean), 2)],
        [f"served at the end (v{version_after})", round(acc_after, 4), round(100 * (acc_after - retrain_mean), 2)],
        [f"full retrain without the {len(users)} users ({len(retrains)} seeds, range {spread})",
         round(retrain_mean, 4), 0.0],
    ])
    methods = Counter(o["method"] or "-" for o in everything if o["status"] == "completed")
    not_completed = [o for o in everything if o["status"] != "completed"]
    notes = [
        f"backend {args.backend}; {n_seq} heaviest trained MovieLens users one after another, then the next "
        f"{n_burst} submitted at once; target {len(everything)} completed / 0 failed: "
        f"**{completed} / {failed}**" + ("" if completed == len(everything) else " (missed)"),
        "time-to-forget: result.time_to_forget_s of the completed requests (receipt -> last live replica serves a "
        "clean version); wall: submission -> the client saw the end",
        f"served methods (per request): {dict(methods)}",
        f"accuracy on the {len(test)} test ratings of the users who remain (all three rows, same set); the registry's "
        f"live test set at the end is exactly that set: {same_test}; retain set {len(retain)} ratings; test acc gap end vs retrain "
        f"{100 * (acc_after - retrain_mean):+.2f} points (target within 0.5)",
        f"samples of the erased users still in the registry at the end: {still_held['live']} live, "
        f"{still_held['flagged_deleted']} flagged deleted but not yet hard-deleted (their erasure is still owed)",
        f"total run {time.perf_counter() - t_start:.0f} s",
    ]
    for o in not_completed:
        gates = "; ".join(f"{a['method']}: " + ", ".join(f"{k}: {r}" for k, r in a["failed_gates"].items())
                          for a in o["attempts"] if not a["passed"])
        notes.append(f"not completed: {o['phase']} user {o['user']} request {o['id']} job {o['job_id']} "
                     f"status {o['status']} error {o['error']!r}" + (f"; failed attempts: {gates}" if gates else ""))
    write_results(args.out, "soak", title="Soak: sequential and burst erasures of heavy MovieLens users",
                  table=table + "\n\n" + acc_table, notes=notes, data={
                      "backend": args.backend, "sequential": n_seq, "burst": n_burst, "completed": completed,
                      "failed": failed, "total": len(everything), "seq_wall_s": round(seq_wall, 2),
                      "burst_wall_s": round(burst_wall, 2), "phases": {
                          name: dict(zip(["phase", "requests", "completed", "failed", "other", "ttf_p50_s", "ttf_p95_s",
                                          "wall_s", "jobs"], phase_row(name, items, None)))
                          for name, items in (("sequential", seq), ("burst", burst), ("all", everything))},
                      "accuracy": {"served_start": acc_before, "served_start_version": version_before,
                                   "served_end": acc_after, "served_end_version": version_after,
                                   "retrain": retrains, "retrain_mean": retrain_mean,
                                   "gap_points": 100 * (acc_after - retrain_mean), "n_test": len(test),
                                   "n_retain": len(retain), "same_test_set": same_test},
                      "still_held_samples": still_held, "requests": everything})
    return 0 if completed == len(everything) else 1


if __name__ == "__main__":
    sys.exit(main())
