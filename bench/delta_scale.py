"""Delta store at scale (issue 18): a synthetic interactions table registered from Delta, next to the
columnar store on the same rows.

Each phase runs in its own process (so each peak RSS is that phase's alone) on a private SQLite DB:
  setup    write table version 0 (the 20k-row registration sample of spec ``interactions``) and
           register ``big-delta`` from it (trains v1 on it); then an upstream writer appends N
           generated interactions (``--rows``, 100 per user on average; timed apart) and Lethe pins
           the new version: the scan of the subject column, the pseudonymisation and the subject ->
           rows index (what registration adds to training)
  collect  the erasure job's data collection for one subject (``workers.problem.collect``: the
           subject's rows read and flagged, train / test / held-out views, the manifest)
  erase    the DELETE in the table and the physical purge (VACUUM, log cut at a checkpoint) for 1
           subject, then for 1,000 subjects at once
  half     setup and collect again on a table of N/2 rows: the collection's peak memory should not
           follow the table's size (the job keeps one bit per row and split, not the rows)
The columnar store's setup / ingest / collect phases are those of ``bench/data_scale.py`` at the
same N, in the same run (its JSON-Lines bulk ingest is the columnar store's way in). Prints a table
and writes bench/results/delta_scale.{md,json}.

    python bench/delta_scale.py [--rows 10000000] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
USERS_PER_ROW = 1 / 100
SAMPLE = int(os.environ.get("LETHE_DELTA_SCALE_SAMPLE", 20_000))  # registration sample (version 0)


def _write(uri: str, n: int, n_users: int, seed: int, mode: str) -> float:
    """Generated interactions appended in 1M-row commits; returns seconds."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from app.ml.specs.interactions import generate

    t0 = time.perf_counter()
    cols: dict[str, list] = {"user": [], "user_id": [], "item_id": [], "label": [], "split": []}

    def flush() -> None:
        nonlocal mode
        if cols["user"]:
            write_deltalake(uri, pa.table(cols), mode=mode)
            mode = "append"
            for v in cols.values():
                v.clear()

    for r in generate(n, n_users=n_users, seed=seed):
        cols["user"].append(r["subject_id"])
        cols["user_id"].append(r["features"]["user_id"])
        cols["item_id"].append(r["features"]["item_id"])
        cols["label"].append(r["label"])
        cols["split"].append(r["split"])
        if len(cols["user"]) == 1_000_000:
            flush()
    flush()
    return time.perf_counter() - t0


def phase(name: str, rows: int, workdir: Path) -> dict:
    import torch
    from sqlmodel import Session

    from app.core.db import create_schema, make_engine
    from app.core.security import subject_key
    from app.data import delta
    from app.db.models import Model
    from app.services.integrations import source_erasure
    from app.services.models import registration
    from app.services.requests import erasure
    from app.services.requests.subscribers import install_subscribers
    from workers import pipeline
    from workers.problem import collect
    install_subscribers()  # transitions write their outbox rows here as in the worker

    from bench.data_scale import _peak_mb, _rss_mb, _settings, first_batch

    settings = _settings(workdir)
    engine = make_engine(settings.db_url)
    uri = str(workdir / "table")
    n_users = max(1000, int(rows * USERS_PER_ROW))
    out: dict = {"phase": name, "store": "delta", "rss_start_mb": _rss_mb()}
    t0 = time.perf_counter()
    if name == "setup":  # register from version 0, then the upstream append and Lethe's re-pin
        create_schema(engine)
        _write(uri, SAMPLE, min(2000, max(100, SAMPLE // 10)), 0, "overwrite")  # = the spec's load_examples()
        with Session(engine) as s:
            registration.register(s, name="big-delta", spec="interactions", secret=settings.subject_key_secret,
                                  artifacts_dir=settings.artifacts_dir, device="cpu",
                                  config={"store": "delta", "chain": ["finetune", "retrain"],
                                          "source": {"uri": uri, "subject_column": "user", "split_column": "split"}})
            s.commit()
        out["register_s"] = time.perf_counter() - t0
        out["append_s"] = _write(uri, rows, n_users, 1, "append")
        t1 = time.perf_counter()
        with Session(engine) as s:
            out["version"] = source_erasure.repin(s, s.get(Model, "big-delta"), delta.open_table(uri),
                                                  settings.subject_key_secret)
            s.commit()
        out["pin_s"] = time.perf_counter() - t1
    elif name == "collect":
        worker = pipeline.Worker(settings=settings, engine=engine, device=torch.device("cpu"), sleep=lambda s: None)
        with Session(engine) as s:
            erasure.create_request(s, subject_key=subject_key(settings.subject_key_secret, "user-5"))
            s.commit()
        job_id = pipeline.next_job(worker, "big-delta")
        t0 = time.perf_counter()
        problem = collect(worker, job_id)
        out.update(retain=len(problem.retain), forget=len(problem.forget), manifest=problem.manifest)
        out["seconds"], out["peak_rss_mb"] = time.perf_counter() - t0, _peak_mb()
        out.update(first_batch(problem.retain))
    elif name == "erase":  # DELETE + purge of 1 subject, then of 1,000 at once
        # train-split users (u % 10 not in 0, 1); user-5 is the collect phase's
        train = [u for u in range(2, n_users) if u % 10 not in (0, 1) and u != 5]
        for label, users in (("1", train[:1]), ("1000", train[1:1001])):
            keys = {subject_key(settings.subject_key_secret, f"user-{u}") for u in users}
            t1 = time.perf_counter()
            version, deleted, present = delta.delete_rows(uri, "user", keys, settings.subject_key_secret)
            t2 = time.perf_counter()
            removed = len(delta.vacuum(uri))
            out[label] = {"delete_s": t2 - t1, "purge_s": time.perf_counter() - t2, "rows_deleted": deleted,
                          "subjects": len(present), "version": version, "files_removed": removed}
    out.setdefault("seconds", time.perf_counter() - t0)
    out.setdefault("peak_rss_mb", _peak_mb())
    out["peak_above_start_mb"] = out["peak_rss_mb"] - out["rss_start_mb"]
    return out


def run_phase(name: str, rows: int, workdir: Path, label: str = "delta") -> dict:
    env = {**os.environ, "LETHE_DATA_DIR": str(workdir), "LETHE_DATABASE_URL": f"sqlite:///{workdir / 'lethe.db'}",
           "LETHE_SUBJECT_KEY_SECRET": "bench-secret", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--phase", name, "--rows", str(rows), "--workdir", str(workdir)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} (delta) failed ({proc.returncode}):\n{proc.stdout[-1000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {label:<8} {name:<9} {result['seconds']:8.1f} s  peak {result['peak_rss_mb']:7.0f} MB "
          f"(+{result['peak_above_start_mb']:.0f} MB over the process after imports)", flush=True)
    return result


def table(d: dict[str, dict], c: dict[str, dict], half: dict[str, dict], rows: int) -> str:
    sample = int(os.environ.get("LETHE_DELTA_SCALE_SAMPLE", SAMPLE))  # --quick sets a smaller one
    def mb(x: dict) -> str:
        return f"{x['peak_rss_mb']:,.0f} (+{x['peak_above_start_mb']:,.0f})"

    lines = ["| | delta store | columnar store (same rows) |", "|---|---|---|",
             f"| samples | {rows + sample:,} | {rows + sample:,} |",
             f"| registration of the {sample:,}-row sample, v1 trained (s) | {d['setup']['register_s']:.1f} | "
             f"{c['setup']['seconds']:.1f} |",
             f"| getting {rows:,} new rows in (s) | upstream append {d['setup']['append_s']:.1f} (not Lethe's); "
             f"pin + index {d['setup']['pin_s']:.1f} | bulk ingest {c['ingest']['seconds']:.1f} |",
             f"| job data collection (s) | {d['collect']['seconds']:.1f} | {c['collect']['seconds']:.1f} |",
             f"| its peak RSS, MB (above the process after imports) | {mb(d['collect'])} | {mb(c['collect'])} |",
             f"| retain rows read | {d['collect']['retain']:,} | {c['collect']['retain']:,} |",
             f"| then one training batch, 256 random retain rows (s); peak RSS after it, MB | "
             f"{d['collect']['batch_s']:.2f}; {d['collect']['peak_after_batch_mb']:,.0f} | "
             f"{c['collect']['batch_s']:.2f}; {c['collect']['peak_after_batch_mb']:,.0f} |",
             f"| training batches in the loader's windowed order, mean of the first 64 (s) | "
             f"{d['collect'].get('train_batch_s', float('nan')):.3f} | "
             f"{c['collect'].get('train_batch_s', float('nan')):.3f} |",
             f"| the same collection on a table of {rows // 2 + sample:,} rows: s, peak RSS MB | "
             f"{half['collect']['seconds']:.1f}, {mb(half['collect'])} | n/a |"]
    for n in ("1", "1000"):
        e = d["erase"][n]
        lines.append(f"| DELETE + purge, {e['subjects']:,} subject(s) at once (s) | {e['delete_s']:.1f} + "
                     f"{e['purge_s']:.1f} ({e['rows_deleted']:,} rows, {e['files_removed']} files removed) | n/a |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000, help="interactions appended after registration")
    p.add_argument("--quick", action="store_true", help="20k rows, a 5k registration sample (a smoke run)")
    p.add_argument("--no-columnar", action="store_true", help="skip the columnar comparison")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for delta_scale.md and .json")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.rows, Path(args.workdir)), default=str), flush=True)
        # The result is out: leave without interpreter teardown, where a native thread pool
        # (Arrow's, torch's) being joined has aborted the process once in CI ("terminate called
        # without an active exception") after a phase had finished its work.
        os._exit(0)
    rows = 20_000 if args.quick else args.rows
    if args.quick:
        # a smaller registration sample (seconds, not tens), the same for the columnar comparison
        os.environ["LETHE_DELTA_SCALE_SAMPLE"] = os.environ["LETHE_INTERACTIONS_EXAMPLES"] = "5000"
    with tempfile.TemporaryDirectory(prefix="lethe-delta-scale-") as tmp:
        print(f"delta: {rows:,} rows in {tmp}", flush=True)
        d = {name: run_phase(name, rows, Path(tmp)) for name in ("setup", "collect", "erase")}
    with tempfile.TemporaryDirectory(prefix="lethe-delta-scale-half-") as tmp:
        print(f"delta: {rows // 2:,} rows in {tmp}", flush=True)
        half = {name: run_phase(name, rows // 2, Path(tmp), "delta/2") for name in ("setup", "collect")}
    c: dict[str, dict] = {}
    if not args.no_columnar:
        from bench import data_scale

        with tempfile.TemporaryDirectory(prefix="lethe-delta-scale-columnar-") as tmp:
            print(f"columnar: {rows:,} rows in {tmp}", flush=True)
            c = {name: data_scale.run_phase(name, "columnar", rows, Path(tmp)) for name in ("setup", "ingest", "collect")}
    md = table(d, c, half, rows) if c else json.dumps({"delta": d, "half": half}, indent=2, default=str)
    print("\n" + md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "delta_scale.md").write_text(md + "\n")
    (args.out / "delta_scale.json").write_text(json.dumps({"rows": rows, "delta": d, "half": half, "columnar": c}, indent=2,
                                                          default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
