"""Command line of ``bench/unlearning.py``: parse, run the bundled configurations or one registered
model, write the outputs after each configuration (a run stopped early keeps what it measured),
and with ``--record-chain`` set the registered model's ``auto`` chain from what passed."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tqdm import tqdm

from app.cli.models import ApiError
from app.core.errors import LetheError
from app.ml.device import pick_device, set_cpu_threads
from bench.unlearning_parts.bundled import bench_config
from bench.unlearning_parts.epsilon import EPSILON_METHODS, EPSILON_SETS
from bench.unlearning_parts.configs import CONFIGS, FULL_CONFIGS, QUICK_CONFIGS, RESULTS_DIR, SIZES
from bench.unlearning_parts.registered import bench_model, load_registered, record_chain, safe_url
from bench.unlearning_parts.report import machine, write_outputs
from bench.unlearning_parts.summary import passing_chain
from workers.unlearning import METHODS, engine


def _pct(text: str) -> str:
    """argparse %-formats help strings: a literal % must be doubled."""
    return text.replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark every registered unlearning method against retrain.")
    p.add_argument("--quick", action="store_true", help=_pct("1 seed, forget sets '1 subject' and '10%', small specs"))
    p.add_argument("--configs", "--specs", dest="configs", help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--seeds", type=int, help="seeds per forget-set size (default 2; --quick 1)")
    p.add_argument("--sizes", help=_pct(f"comma list of forget sets: {', '.join(SIZES)}"))
    p.add_argument("--audit-sizes", default="10%", help="forget sets that get the audit-mode MIA (small configs)")
    p.add_argument("--n-shadow", type=int, help="reference models per audit (even; 0 = no audit; default 4, --quick 2)")
    p.add_argument("--audit-seeds", type=int, default=1, help="seeds that get the audit (reference models cost trainings)")
    p.add_argument("--calibrate-sets", type=int, default=0,
                   help="calibrate_reference sets per small config (0: no reference, as for a model registered "
                        "without calibration: the gate centres on AUC 0.5 and the held-out accuracy band)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: shared cores, see set_cpu_threads)")
    p.add_argument("--finetune-epochs", type=int, default=1,
                   help="--epsilon on a pretrained-encoder config (sotu): epochs of its full fine-tune arm")
    p.add_argument("--methods", help="comma list of methods to run beside retrain and auto (default: all registered)")
    p.add_argument("--render", type=Path, help="only re-render outputs from this saved unlearning.json")
    p.add_argument("--note", action="append", default=[], help="a line of context for the report (repeatable)")
    p.add_argument("--out", type=Path, help="output directory (default bench/results; with --model "
                                            "bench/results/model-NAME)")
    e = p.add_argument_group("epsilon mode: the competition metric (bench/unlearning_parts/epsilon.py)")
    e.add_argument("--epsilon", type=int, metavar="N", help="N retrains (and N more for the floor) and N runs "
                                                            "per method and auto; default configs: movielens")
    e.add_argument("--epsilon-sets", default=",".join(EPSILON_SETS), help=_pct(f"comma list of {EPSILON_SETS}"))
    e.add_argument("--epsilon-examples", type=int, default=1000, help="forget examples scored per set (cap)")
    e.add_argument("--auto-min-exact-seconds", type=float, help="override the spec's Escalation.min_exact_seconds "
                   "for auto (0: try approximate methods even where a retrain is cheap, as on a dearer model)")
    e.add_argument("--jobs", type=int, default=1, help="worker processes of one torch thread each (CPU; runs are "
                   "independent, so times stay per run: use at most one per free core)")
    e.add_argument("--interim", help="comma list of params, auto: also score the scheduler's interim forget "
                   "(issue 16) as the worker runs it (bench/unlearning_parts/interim.py)")
    e.add_argument("--interim-noise", default="", help="comma list of relative weight-noise levels: one more row per "
                   "interim and level, so that a deterministic interim (params) gets a score other than the peaky "
                   "guard's 0 (e.g. 0.01)")
    e.add_argument("--epsilon-seed", type=int, default=0, help="seed of the original model and the random "
                                                               "forget-set draws (a new one re-measures out of sample)")
    m = p.add_argument_group("a registered model (instead of the bundled configs)")
    m.add_argument("--model", help="measure the serving version of this model, registered in --db-url")
    m.add_argument("--db-url", help="SQLAlchemy URL of the Lethe database (default: LETHE_DATABASE_URL, else the "
                                    "embedded default DB)")
    m.add_argument("--data-dir", type=Path, help="the stack's data directory, where a columnar store keeps its "
                                                 "parts (default: LETHE_DATA_DIR)")
    m.add_argument("--record-chain", action="store_true",
                   help="set the model's auto chain to the cheapest methods that passed every run, then retrain "
                        "(sisa for a SISA model)")
    m.add_argument("--url", help="Lethe base URL for --record-chain (default LETHE_URL; none: write the DB directly)")
    m.add_argument("--key", help="admin API key for --record-chain over the API (default LETHE_KEY)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    q = args.quick
    if args.model and args.configs:
        p.error("--model measures one registered model: drop --configs")
    if args.record_chain and not args.model:
        p.error("--record-chain needs --model")
    default = "movielens" if args.epsilon else ",".join(QUICK_CONFIGS if q else FULL_CONFIGS)
    args.configs = [c.strip() for c in (args.configs or default).split(",")]
    from bench.unlearning_parts.exact_design import CONFIGS as EXACT_CONFIGS
    from bench.unlearning_parts.sisa_parallel import CONFIGS as SISA_PARALLEL_CONFIGS

    EXACT_CONFIGS = EXACT_CONFIGS + SISA_PARALLEL_CONFIGS  # noqa: N806 - epsilon-mode configs of issue 20
    unknown = [c for c in args.configs if c not in CONFIGS and not (args.epsilon and c in EXACT_CONFIGS)]
    if unknown:
        p.error(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
    sizes = args.sizes or ("1 subject,10%" if q else None)
    args.sizes = [s.strip() for s in sizes.split(",")] if sizes else None  # None: each config's own
    if any(s not in SIZES for s in args.sizes or ()):
        p.error(f"--sizes: choose from {', '.join(SIZES)}")
    args.audit_sizes = [s.strip() for s in args.audit_sizes.split(",")]
    args.methods_arg = bool(args.methods)
    names = [m.strip() for m in args.methods.split(",")] if args.methods else sorted(METHODS)
    if any(m not in METHODS for m in names):
        p.error(f"--methods: choose from {', '.join(sorted(METHODS))}")
    args.methods = ["retrain"] + sorted(set(names) - {"retrain"})
    args.methods_eps = [m for m in (names if args.methods_arg else EPSILON_METHODS) if not METHODS[m].exact]
    args.epsilon_sets = [s.strip() for s in args.epsilon_sets.split(",")]
    if args.epsilon is not None and (args.epsilon < 3 or any(s not in EPSILON_SETS for s in args.epsilon_sets)):
        p.error(f"--epsilon needs N >= 3 and --epsilon-sets from {', '.join(EPSILON_SETS)}")
    from bench.unlearning_parts.interim import INTERIMS

    args.interim = [k.strip() for k in args.interim.split(",")] if args.interim else []
    if any(k not in INTERIMS for k in args.interim) or (args.interim and not args.epsilon):
        p.error(f"--interim needs --epsilon and a comma list of {', '.join(INTERIMS)}")
    try:
        args.interim_noise = [float(x) for x in args.interim_noise.split(",") if x.strip()]
    except ValueError:
        p.error("--interim-noise: a comma list of numbers")
    if any(not 0 < x < 1 for x in args.interim_noise):
        p.error("--interim-noise: each level in (0, 1)")
    args.seeds = args.seeds or (1 if q else 2)
    args.n_shadow = (2 if q else 4) if args.n_shadow is None else args.n_shadow
    if args.out is None:
        args.out = RESULTS_DIR / f"model-{args.model}" if args.model else RESULTS_DIR
    if args.model:
        from app.core.config import get_settings

        settings = get_settings()
        args.db_url = args.db_url or settings.db_url
        args.data_dir = args.data_dir or Path(settings.data_dir)
    return args


def render(path: Path, out: Path, notes: list[str]) -> str:
    """Re-render the md / csv / png of a saved ``unlearning.json`` (no runs) with this code."""
    data = json.loads(path.read_text())
    args = parse_args(data["argv"])
    args.device = next((a.split("=", 1)[1] for a in data["argv"] if a.startswith("--device=")), "cpu")
    rows = [{k: (float("nan") if v is None and k in ("seconds", "verify_seconds") else v) for k, v in r.items()}
            for r in data["rows"]]
    return write_outputs(out, rows, data["configs"], args, data["elapsed_s"], argv=data["argv"],
                         host=data["machine"], chains_used=data.get("chains_used", {}),
                         notes=[*data.get("notes", []), *notes], recorded=data.get("recorded_chain"))


def run_bundled(args: argparse.Namespace, device, argv: list[str], log) -> str:
    started = time.perf_counter()
    per_stage = len(args.methods) + 1
    total = sum(args.seeds * len(args.sizes or CONFIGS[k].sizes) * per_stage for k in args.configs)
    rows, infos = [], []
    chains_used = {CONFIGS[k].make_spec().name: engine.method_chain(CONFIGS[k].make_spec().name, "auto")
                   for k in args.configs}
    with tqdm(total=total, file=sys.stderr, unit="run", dynamic_ncols=True) as bar:
        for key in args.configs:
            config_rows, info = bench_config(CONFIGS[key], args, device, bar, log)
            rows += config_rows
            infos.append(info)
            info["seconds"] = time.perf_counter() - started
            md = write_outputs(args.out, rows, infos, args, time.perf_counter() - started, argv=argv, host=machine(),
                               chains_used=chains_used, notes=args.note)
    return md


def run_registered(args: argparse.Namespace, device, argv: list[str], log) -> str:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lethe-bench-") as tmp:
        reg = load_registered(args.db_url, args.model, device, Path(tmp), args.data_dir)
        log(f"{reg.key}: serving v{reg.version} of spec {reg.spec_name}, {len(reg.examples)} live samples")
        chain = reg.config.get("chain")
        chains_used = {reg.spec.name: engine.method_chain(reg.spec.name, "auto", {reg.spec.name: tuple(chain)}
                                                          if chain else None, meta=reg.meta)}
        total = args.seeds * len(args.sizes or SIZES) * (len(args.methods) + 1)
        with tqdm(total=total, file=sys.stderr, unit="run", dynamic_ncols=True) as bar:
            rows, info = bench_model(reg, args, device, bar, log)
    info["seconds"] = time.perf_counter() - started
    supported = passing_chain(rows, reg.key, last=reg.exact_fallback)

    def write(recorded: dict | None) -> str:
        return write_outputs(args.out, rows, [info], args, time.perf_counter() - started, argv=argv, host=machine(),
                             chains_used=chains_used, notes=args.note, recorded=recorded)

    md, recorded = write(None), None  # written first: a refused or failed recording keeps the measurements
    if args.record_chain:
        before, via = record_chain(name=reg.name, chain=supported, db_url=args.db_url, url=args.url, key=args.key)
        recorded = {"model": reg.name, "chain": supported, "previous": before, "via": via}
        md = write(recorded)
    tail = (f"chain recorded for {reg.name}: {' > '.join(supported)} (before: {' > '.join(recorded['previous'])}; "
            f"set {recorded['via']})" if recorded else
            f"chain these runs support for {reg.name}: {' > '.join(supported)} (not recorded: add --record-chain)")
    return f"{md}\n{tail}"


def redacted(argv: list[str]) -> list[str]:
    """``argv`` as the report records it: no API key, no database password."""
    out, hide = [], {"--key": lambda v: "***", "--db-url": safe_url}
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if eq and name in hide:
            out.append(f"{name}={hide[name](value)}")
        elif i and argv[i - 1] in hide:
            out.append(hide[argv[i - 1]](arg))
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(render(args.render, args.out, args.note))
        return 0
    set_cpu_threads(args.threads)
    device = pick_device(args.device)
    args.device = str(device)
    log = lambda msg: tqdm.write(msg, file=sys.stderr)  # noqa: E731
    argv = redacted(sys.argv[1:] if argv is None else argv)
    try:
        if args.epsilon:
            from bench.unlearning_parts import epsilon_report, exact_design, sisa_parallel

            # Exact-by-design configs run the marginal protocol for their exact path (issue 20).
            for part in (exact_design, sisa_parallel):
                mine = [c for c in args.configs if c in part.CONFIGS]
                args.configs = [c for c in args.configs if c not in mine]
                if mine:
                    print(part.run(argparse.Namespace(**{**vars(args), "configs": mine}), device, argv, log))
            if args.configs:
                print(epsilon_report.run(args, device, argv, log))
        else:
            print(run_registered(args, device, argv, log) if args.model else run_bundled(args, device, argv, log))
    except (LetheError, ApiError, httpx.HTTPError) as exc:  # unknown model, refused chain, no stack: say so
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
