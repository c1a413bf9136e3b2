"""A bundled configuration, end to end: train the original from the spec's data, then measure
every seed and forget set (``measure.bench_stage``).

Methods that need a specially trained model (``sisa``: a SISA ensemble; ``amnesiac``: an update
log) get one trained with ``app.ml.train.train_for_registration`` when the support modules exist
and the spec allows it; otherwise their rows say ``skipped`` and why.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

from app.ml.spec import ModelSpec
from app.ml.train import train_from_scratch
from bench.unlearning_parts.configs import SPECIAL_TRAINING, BenchConfig, draw_forget_set
from bench.unlearning_parts.measure import Stage, bench_stage
from workers.verify.report import Gates


def special_originals(cfg: BenchConfig, spec: ModelSpec, examples, device, workdir: Path, methods: list[str],
                      log) -> tuple[dict, dict]:
    """``({method: (model, meta)}, {method: reason skipped})`` for methods that need special training."""
    models, skipped = {}, {}
    for name, (module, training) in SPECIAL_TRAINING.items():
        if name not in methods:
            continue
        if importlib.util.find_spec(module) is None:
            skipped[name] = f"{module} absent: no training support"
        elif name == "amnesiac" and spec.subject_feature is not None:
            # Every step logs a full parameter delta: ~1 MB/step for the user/movie tables.
            skipped[name] = "update log of an embedding model is too large (app/ml/update_log.py)"
        else:
            try:
                from app.ml.train import train_for_registration

                models[name] = train_for_registration(spec, examples, training=training, workdir=workdir / name,
                                                      device=device, seed=0)
            except ValueError as exc:  # the support module refuses this spec (e.g. SISA + per-subject rows)
                skipped[name] = str(exc)
        if name in skipped:
            log(f"{cfg.key}: {name} skipped: {skipped[name]}")
    return models, skipped


def calibrated_reference(cfg: BenchConfig, spec, examples, model, meta, device, n_sets: int, log) -> dict | None:
    """``calibrate_reference`` as at registration (random single-subject sets), or None."""
    if n_sets <= 0 or cfg.large or importlib.util.find_spec("workers.verify.calibrate") is None:
        return None
    from workers.verify.calibrate import calibrate_reference

    ref = calibrate_reference(spec, examples, device=device, n_sets=n_sets, subjects_per_set=1, seed=0,
                              model=model, meta=meta)
    log(f"{cfg.key}: calibrated reference AUC {ref['mia_auc']:.3f}, forget acc {ref['forget_acc']:.3f} "
        f"({ref['seconds']:.0f} s)")
    return ref


def bench_config(cfg: BenchConfig, args, device, bar, log) -> tuple[list[dict], dict]:
    """Rows of every seed and forget set of one bundled configuration, and its ``infos`` entry."""
    spec = cfg.make_spec()
    examples = spec.load_examples()
    test = [e for e in examples if e.split == "test"]
    holdout = [e for e in examples if e.split == "holdout"]
    train = [e for e in examples if e.split == "train"]
    started = time.perf_counter()
    bar.set_description(f"{cfg.key}: training original")
    original, meta = train_from_scratch(spec, examples, device=device, seed=0)
    train_s = time.perf_counter() - started
    info = {"config": cfg.key, "spec": spec.name, "model": cfg.model, "train_seconds": train_s,
            "n_train": len(train), "n_test": len(test), "n_holdout": len(holdout),
            "n_train_subjects": len({e.subject_id for e in train}), "recipe": vars(spec.recipe),
            "method_config": cfg.method_config, "large": cfg.large, "sizes": list(cfg.sizes)}
    log(f"{cfg.key}: original trained in {train_s:.1f} s ({len(train)} samples)")
    reference = calibrated_reference(cfg, spec, examples, original, meta, device, args.calibrate_sets, log)
    info["reference"] = reference
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lethe-bench-") as tmp:
        special, skipped = special_originals(cfg, spec, examples, device, Path(tmp), args.methods, log)
        info["skipped"] = skipped
        for seed in range(args.seeds):
            for label in args.sizes or cfg.sizes:
                fs = draw_forget_set(spec, examples, label, seed)
                st = Stage(spec, fs, test, holdout, device, seed, reference, Gates(), cfg.method_config)
                base = {"config": cfg.key, "spec": spec.name, "forget_set": label, "n_subjects": len(fs.subjects),
                        "n_forget": len(fs.forget), "seed": seed}
                rows += bench_stage(st, base, original, meta, special, skipped, train, args, bar,
                                    audit=not cfg.large)
    return rows, info
