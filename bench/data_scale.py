"""Data at scale (issue 9): a synthetic interaction set in the columnar store vs the JSON-row registry.

For each store, in its own process (so each peak RSS is that phase's alone) on a private SQLite DB:
  setup    register model ``big-<store>`` (spec ``interactions``, 20k-sample registration sample)
  ingest   bulk-ingest N generated interactions as JSON Lines through the same code path as
           ``POST /v1/models/{name}/samples`` (parse, validate, pseudonymise, store)
  collect  the erasure job's data collection for one subject (``workers.problem.collect``: the
           subject's rows flagged deleted, retain / test / held-out views, the data manifest)
  erase    (--erase, and in --quick) a whole erasure of another subject (``pipeline.drain``)
The columnar store runs at ``--rows`` (default 10 million), the row store at ``--baseline-rows``
(default 1 million: a size it survives on this machine). Prints a table with the ratios and
writes bench/results/data_scale.{md,json}.

    python bench/data_scale.py [--rows 10000000] [--baseline-rows 1000000] [--erase] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
USERS_PER_ROW = 1 / 100  # 100 interactions per user on average


def _settings(workdir: Path):  # noqa: ANN202
    from app.core.config import Settings

    return Settings(data_dir=workdir, database_url=f"sqlite:///{workdir / 'lethe.db'}", job_seed=0, batch_window_s=0,
                    deploy_timeout_s=5, subject_key_secret="bench-secret")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


TRAIN_BATCHES = 64  # batches timed in training order (the first ones pay their window's reads)


def first_batch(retain) -> dict:  # noqa: ANN001
    """One training batch (256 random retain rows) drawn through a job's view: what a method's
    first step reads (the delta view decodes the row groups the batch touches, into a bounded
    cache). Measured after the collection's own time and peak were taken."""
    import random

    indices = random.Random(0).sample(range(len(retain)), min(256, len(retain)))
    t0 = time.perf_counter()
    batch = retain.take(indices) if hasattr(retain, "take") else [retain[i] for i in indices]  # a view, or a list
    out = {"batch_s": time.perf_counter() - t0, "batch_rows": len(batch), "peak_after_batch_mb": _peak_mb()}
    # What training actually draws: the loader's seeded order (app/ml/data.make_loader), which for a
    # view larger than one window reads each segment once per epoch (RowsView.shuffled_order).
    windowed = getattr(retain, "shuffled_order", None)
    if windowed is not None and windowed(None, probe=True):
        import torch

        order = windowed(torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        for k in range(TRAIN_BATCHES):
            retain.take(order[k * 256:(k + 1) * 256].tolist())
        out["train_batch_s"] = (time.perf_counter() - t0) / TRAIN_BATCHES
    return out


def phase(name: str, store: str, rows: int, workdir: Path) -> dict:
    import torch
    from sqlmodel import Session

    from app.core.db import create_schema, make_engine
    from app.services.models import registration
    from app.services.requests import erasure
    from app.services.requests.subscribers import install_subscribers
    from app.services.models.bulk import BulkIngest
    from app.core.security import subject_key
    from workers import pipeline
    from workers.problem import collect
    install_subscribers()  # transitions write their outbox rows here as in the worker

    settings = _settings(workdir)
    engine = make_engine(settings.db_url)
    model = f"big-{store}"
    t0 = time.perf_counter()
    out: dict = {"phase": name, "store": store, "rss_start_mb": _rss_mb()}  # after imports: the process floor
    if name == "setup":
        create_schema(engine)
        with Session(engine) as s:
            registration.register(s, name=model, spec="interactions", secret=settings.subject_key_secret,
                                  artifacts_dir=settings.artifacts_dir, device="cpu",
                                  config={"store": store, "chain": ["finetune", "retrain"]})
            s.commit()
    elif name == "ingest":
        from app.ml.specs.interactions import generate

        with Session(engine) as s:
            bulk = BulkIngest(s, model_name=model, secret=settings.subject_key_secret, root=settings.data_dir,
                              actor="bench")
            lines: list[bytes] = []
            for row in generate(rows, n_users=max(1000, int(rows * USERS_PER_ROW)), seed=1):
                lines.append(json.dumps(row).encode())
                if len(lines) == 5000:
                    bulk.feed(lines)
                    lines = []
            bulk.feed(lines)
            out.update(bulk.finish())
            s.commit()
        out["rows_per_s"] = rows / (time.perf_counter() - t0)
    elif name in ("collect", "erase"):
        worker = pipeline.Worker(settings=settings, engine=engine, device=torch.device("cpu"), sleep=lambda s: None)
        subject = "user-5" if name == "collect" else "user-7"  # train-split users (u % 10 not in 0, 1)
        with Session(engine) as s:
            req, _ = erasure.create_request(s, subject_key=subject_key(settings.subject_key_secret, subject))
            s.commit()
            rid = req.id
        if name == "collect":
            job_id = pipeline.next_job(worker, model)
            t0 = time.perf_counter()
            problem = collect(worker, job_id)
            out.update(retain=len(problem.retain), forget=len(problem.forget), manifest=problem.manifest)
            out["seconds"], out["peak_rss_mb"] = time.perf_counter() - t0, _peak_mb()
            out.update(first_batch(problem.retain))
        else:
            pipeline.drain(worker, model)
            with Session(engine) as s:
                from app.db.models import ErasureRequest

                done = s.get(ErasureRequest, rid)
                out.update(status=done.status, method=(done.result or {}).get("models", {}).get(model, {}).get("method"))
    out.setdefault("seconds", time.perf_counter() - t0)
    out.setdefault("peak_rss_mb", _peak_mb())
    out["peak_above_start_mb"] = out["peak_rss_mb"] - out["rss_start_mb"]
    return out


def run_phase(name: str, store: str, rows: int, workdir: Path) -> dict:
    env = {**os.environ, "LETHE_DATA_DIR": str(workdir), "LETHE_DATABASE_URL": f"sqlite:///{workdir / 'lethe.db'}",
           "LETHE_SUBJECT_KEY_SECRET": "bench-secret", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--phase", name, "--store", store, "--rows", str(rows),
                           "--workdir", str(workdir)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} ({store}) failed ({proc.returncode}):\n{proc.stdout[-1000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {store:<8} {name:<8} {result['seconds']:8.1f} s  peak {result['peak_rss_mb']:7.0f} MB "
          f"(+{result['peak_above_start_mb']:.0f} MB over the process after imports)", flush=True)
    return result


def table(results: dict[str, dict[str, dict]], sizes: dict[str, int]) -> str:
    col, rows = results["columnar"], results["rows"]
    lines = ["| | columnar store | JSON-row registry | ratio (rows / columnar, per sample) |", "|---|---|---|---|",
             f"| samples | {sizes['columnar']:,} | {sizes['rows']:,} | |"]
    lines.append(f"| ingest rate (samples/s) | {col['ingest']['rows_per_s']:,.0f} | {rows['ingest']['rows_per_s']:,.0f} | "
                 f"{col['ingest']['rows_per_s'] / rows['ingest']['rows_per_s']:.2f}x faster |")
    lines.append(f"| ingest peak RSS (MB; above the process after imports) | {col['ingest']['peak_rss_mb']:,.0f} "
                 f"(+{col['ingest']['peak_above_start_mb']:,.0f}) | {rows['ingest']['peak_rss_mb']:,.0f} "
                 f"(+{rows['ingest']['peak_above_start_mb']:,.0f}) | |")
    per_col = col["collect"]["seconds"] / sizes["columnar"]
    per_rows = rows["collect"]["seconds"] / sizes["rows"]
    lines.append(f"| job data collection (s) | {col['collect']['seconds']:.2f} | {rows['collect']['seconds']:.2f} | "
                 f"{per_rows / per_col:.1f}x less time per sample |")
    c_mb, r_mb = (max(x["collect"]["peak_above_start_mb"], 1.0) for x in (col, rows))
    lines.append(f"| job data collection peak RSS (MB; above the process after imports) | "
                 f"{col['collect']['peak_rss_mb']:,.0f} (+{c_mb:,.0f}) | {rows['collect']['peak_rss_mb']:,.0f} "
                 f"(+{r_mb:,.0f}) | {(r_mb / sizes['rows']) / (c_mb / sizes['columnar']):.1f}x less memory per sample |")
    if "erase" in col:
        lines.append(f"| whole erasure of one subject (s) | {col['erase']['seconds']:.1f} ({col['erase']['status']}, "
                     f"{col['erase']['method']}) | {rows.get('erase', {}).get('seconds', float('nan')):.1f} "
                     f"({rows.get('erase', {}).get('status')}, {rows.get('erase', {}).get('method')}) | |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000, help="samples in the columnar run")
    p.add_argument("--baseline-rows", type=int, default=1_000_000, help="samples in the JSON-row run")
    p.add_argument("--erase", action="store_true",
                   help="also run a whole erasure (default: only in --quick). The big model's v1 was trained on its "
                        "20k-sample registration set, so after a bulk ingest its utility bar is that of the small set; "
                        "finetune then tends to miss it and the exact retrain runs over all N rows")
    p.add_argument("--quick", action="store_true", help="20k / 10k samples (a smoke run)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for data_scale.md and .json")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.store, args.rows, Path(args.workdir)), default=str), flush=True)
        # The result is out: leave without interpreter teardown, where a native thread pool
        # (Arrow's, torch's) being joined has aborted the process once in CI ("terminate called
        # without an active exception") after a phase had finished its work.
        os._exit(0)
    sizes = {"columnar": 20_000 if args.quick else args.rows, "rows": 10_000 if args.quick else args.baseline_rows}
    if args.quick:
        os.environ["LETHE_INTERACTIONS_EXAMPLES"] = "5000"  # a smaller registration sample: seconds, not tens
    results: dict[str, dict[str, dict]] = {}
    for store in ("columnar", "rows"):
        with tempfile.TemporaryDirectory(prefix=f"lethe-scale-{store}-") as tmp:
            print(f"{store}: {sizes[store]:,} samples in {tmp}", flush=True)
            phases = ["setup", "ingest", "collect"] + (["erase"] if args.erase or args.quick else [])
            results[store] = {name: run_phase(name, store, sizes[store], Path(tmp)) for name in phases}
    md = table(results, sizes)
    print("\n" + md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_scale.md").write_text(md + "\n")
    (args.out / "data_scale.json").write_text(json.dumps({"sizes": sizes, "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
