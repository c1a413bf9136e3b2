"""User-sharded SISA on the MovieLens recommender (issue 10 section 4): the speed-up of one
user's exact erasure and the accuracy cost of the ensemble, against one full model, same run.

Baseline: the exact erasure of a plain model, ``retrain`` = ``train_from_scratch`` on the retain
set with the spec's recipe (what the chain's exact fallback runs), timed per seed. SISA: the
ensemble is trained once per (shards, slices); then each of ``--erasures`` random training users
is erased on its own from that ensemble (``unlearn_sisa``: the owning shard restarts from its
last checkpoint before the user's slice, checkpoints written as in production). Speed-up = median
full retrain / median SISA erasure; the worst case (a user in slice 0: the whole shard) and the
mean are reported too. Accuracy: test accuracy (rating >= 4, the test share of every training
user's ratings) of each ensemble (owner routing, the served aggregation) and of plain SISA mean
aggregation over all shards, against the full models' mean over seeds.
Only the unlearning computation is timed (no DB, no verification: both paths pay those alike).

``--large`` uses the benchmark's movielens-large (``bench/unlearning_parts/configs.py``: dim 128,
24 epochs at batch 256, a >= 1 minute retrain) to see where SISA's fixed costs stop mattering;
results go to ``sisa_recsys-large.md``.

    python bench/sisa_recsys.py [--quick] [--large] [--shards 4,8] [--slices 4] [--erasures 8]
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, arg_parser, md_table, write_results  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = arg_parser(__doc__.splitlines()[0])
    p.add_argument("--shards", default="4,8", help="comma list of shard counts")
    p.add_argument("--slices", type=int, default=4, help="slices per shard")
    p.add_argument("--erasures", type=int, default=8, help="single-user erasures timed per configuration")
    p.add_argument("--seeds", type=int, default=3, help="full-model trainings (time and accuracy spread)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1, as a worker: see set_cpu_threads)")
    p.add_argument("--large", action="store_true", help="the benchmark's movielens-large model (>= 1 min retrain)")
    args = p.parse_args(argv)

    from app.ml.device import set_cpu_threads
    from app.ml.sisa import SISAEnsemble, assign, train_sisa, unlearn_sisa
    from app.ml.specs import get_spec
    from app.ml.train import evaluate, train_from_scratch

    set_cpu_threads(args.threads)
    if args.large:
        from bench.unlearning_parts.configs import MovieLensLarge

        spec = MovieLensLarge()
    else:
        spec = get_spec("movielens")
    examples = spec.load_examples()
    if args.quick:
        examples = [e for e in examples if int(e.subject_id) <= 80]
        args.shards, args.erasures, args.seeds = "2,4", 2, 1
    train = [e for e in examples if e.split == "train"]
    test = [e for e in examples if e.split == "test"]
    users = sorted({e.subject_id for e in train}, key=int)
    picked = random.Random(0).sample(users, min(args.erasures, len(users)))
    # Unmeasured warm-up: the first training in a process pays torch's one-off start-up costs.
    train_from_scratch(spec, train[:2000], device="cpu", seed=0)
    print(f"MovieLens: {len(train)} train / {len(test)} test ratings, {len(users)} training users; "
          f"erasing {len(picked)} users one at a time")

    full_s, full_acc = [], []
    for seed in range(args.seeds):
        user = picked[seed % len(picked)]
        retain = [e for e in train if e.subject_id != user]
        t0 = time.perf_counter()
        model, meta = train_from_scratch(spec, retain, device="cpu", seed=seed)
        full_s.append(time.perf_counter() - t0)
        full_acc.append(evaluate(spec, model, meta, test, device="cpu"))
        print(f"full retrain seed {seed}: {full_s[-1]:.2f} s, test acc {full_acc[-1]:.4f}")
    base_s, base_acc = statistics.median(full_s), statistics.mean(full_acc)

    rows, runs = [], []
    for shards in [int(s) for s in args.shards.split(",")]:
        with tempfile.TemporaryDirectory(prefix="lethe-sisa-recsys-") as tmp:
            t0 = time.perf_counter()
            model, meta = train_sisa(spec, train, out_dir=Path(tmp) / "v1", device="cpu", seed=0, shards=shards,
                                     slices=args.slices)
            train_s = time.perf_counter() - t0
            acc = evaluate(spec, model, meta, test, device="cpu")
            acc_mean = evaluate(spec, SISAEnsemble(list(model.members)), meta, test, device="cpu")
            erase: list[dict[str, Any]] = []
            for i, user in enumerate(picked):
                retain = [e for e in train if e.subject_id != user]
                t0 = time.perf_counter()
                unlearn_sisa(spec, model, meta, retain=retain, forget_keys={user}, device="cpu",
                             out_dir=Path(tmp) / f"e{i}")
                erase.append({"user": user, "slice": assign(user, shards, args.slices)[1],
                              "seconds": time.perf_counter() - t0})
            secs = [e["seconds"] for e in erase]
            worst = [e["seconds"] for e in erase if e["slice"] == 0]
            run = {"shards": shards, "slices": args.slices, "train_s": train_s, "test_acc_routed": acc,
                   "test_acc_mean": acc_mean, "erasures": erase, "erase_median_s": statistics.median(secs),
                   "erase_mean_s": statistics.mean(secs), "erase_slice0_s": statistics.mean(worst) if worst else None,
                   "speedup_median": base_s / statistics.median(secs), "speedup_mean": base_s / statistics.mean(secs),
                   "accuracy_cost_points": 100 * (base_acc - acc)}
            runs.append(run)
            rows.append([f"SISA S={shards} R={args.slices}", round(train_s, 2), round(run["erase_median_s"], 3),
                         round(run["erase_mean_s"], 3),
                         round(run["erase_slice0_s"], 3) if worst else "-",
                         round(run["speedup_median"], 1), round(acc, 4), round(acc_mean, 4),
                         round(run["accuracy_cost_points"], 2)])
            print(rows[-1])
    headers = ["model", "train s", "erasure median s", "erasure mean s", "erasure slice-0 s",
               "speed-up (median)", "test acc (routed)", "test acc (mean agg.)", "accuracy cost (points)"]
    rows.insert(0, [f"full model ({args.seeds} seeds)", round(base_s, 2), round(base_s, 3), round(statistics.mean(full_s), 3),
                    "-", 1.0, round(base_acc, 4), "-", 0.0])
    notes = [
        f"full model: retrain = train_from_scratch on the retain set ({spec.recipe.epochs} epochs); its erasure time "
        f"is its training time (median of {args.seeds}; test acc spread "
        f"{min(full_acc):.4f}-{max(full_acc):.4f})",
        "SISA erasure: unlearn_sisa of one user from the trained ensemble (owning shard restarted from its "
        "last clean slice checkpoint, checkpoints written), median / mean over the same users for every S",
        "accuracy cost = full model's mean test acc - SISA (routed, as served) test acc, in points",
        f"torch threads {args.threads}; numbers from one run on a shared machine (see machine.loadavg)",
    ]
    name = "sisa_recsys" + ("-large" if args.large else "") + ("-quick" if args.quick else "")
    write_results(args.out, name,
                  title=f"User-sharded SISA on MovieLens{' (large)' if args.large else ''}: single-user erasure "
                        "vs full retrain",
                  table=md_table(headers, rows), notes=notes,
                  data={"full": {"seconds": full_s, "test_acc": full_acc}, "sisa": runs, "users": picked,
                        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
