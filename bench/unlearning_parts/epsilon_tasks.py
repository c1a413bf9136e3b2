"""Epsilon mode's units of work, and where they run: in this process, or in ``--jobs K`` forked workers.

A configuration's epsilon run is a few hundred independent trainings (2 N retrains per forget set,
N runs per method and of ``auto``); the >= 30 s configuration needs thousands of CPU-seconds, so
they can run on K single-threaded worker processes at once (one core each, as the serial run
measures). Every task returns only numbers (times, the scored outputs, accuracies, gate
verdicts): what a task measures is the same in a worker as in the parent, and each run's time is
its own process's wall and CPU time, so speed-ups stay per-run ratios.

Workers are forked after the parent has loaded the data and drawn every forget set
(``STATE``), so no task ships examples; the original model travels once, as a file the workers
load and keep. Forking needs the CPU: with a CUDA device the run stays serial.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import torch

from app.ml.device import set_cpu_threads
from app.ml.spec import ModelSpec
from app.ml.train import evaluate, train_from_scratch
from bench.unlearning_parts import interim
from bench.unlearning_parts.epsilon import Evaluator
from bench.unlearning_parts.measure import Stage
from workers.unlearning import METHODS, engine
from workers.unlearning.base import UnlearnContext
from workers.verify.calibrate import calibrate_reference, conf

# What forked workers inherit: spec, examples, stages and evaluators per forget set, the device.
STATE: dict[str, Any] = {}
_ORIGINAL: dict[str, Any] = {}  # per process: path -> (model, meta), loaded once


def prepare(spec: ModelSpec, examples, stages: dict[str, Stage], evaluators: dict[str, Evaluator], device) -> None:
    STATE.clear()
    STATE.update(spec=spec, examples=examples, stages=stages, evaluators=evaluators, device=device)


def measured(ev: Evaluator, model, meta) -> dict[str, Any]:
    """What the metric and the accuracy ratios read of one model."""
    return {"outputs": ev.outputs(model, meta),
            "retain_acc": evaluate(ev.spec, model, meta, ev.retain, device=ev.device),
            "test_acc": evaluate(ev.spec, model, meta, ev.test, device=ev.device),
            "forget_acc": evaluate(ev.spec, model, meta, ev.forget, device=ev.device)}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - started, time.process_time() - cpu


def original_task(seed: int, path: str, calibrate_sets: int) -> dict[str, Any]:
    """Train the original (``seed``), calibrate the gate's reference on it, save it to ``path``."""
    spec, examples, device = STATE["spec"], STATE["examples"], STATE["device"]
    (model, meta), seconds, _ = _timed(lambda: train_from_scratch(spec, examples, device=device, seed=seed))
    reference = calibrate_reference(spec, examples, device=device, n_sets=calibrate_sets, subjects_per_set=1,
                                    seed=0, model=model, meta=meta)
    base = {label: {"retain_acc": evaluate(spec, model, meta, st.fs.retain[:3000], device=device),
                    "test_acc": evaluate(spec, model, meta, st.test, device=device)}
            for label, st in STATE["stages"].items()}
    torch.save(model.state_dict(), path)
    return {"path": path, "meta": meta, "reference": reference, "train_seconds": seconds, "base": base}


def retrain_task(label: str, seed: int) -> dict[str, Any]:
    st, ev = STATE["stages"][label], STATE["evaluators"][label]
    torch.manual_seed(seed)
    (model, meta), seconds, cpu = _timed(lambda: train_from_scratch(st.spec, st.fs.retain, device=st.device, seed=seed))
    return {"seconds": seconds, "cpu_seconds": cpu, **measured(ev, model, meta)}


def _original(orig: dict[str, Any]):
    if orig["path"] not in _ORIGINAL:
        spec, device = STATE["spec"], STATE["device"]
        model = spec.build(orig["meta"]).to(device)
        model.load_state_dict(torch.load(orig["path"], map_location=device, weights_only=True))
        model.eval()
        _ORIGINAL.clear()
        _ORIGINAL[orig["path"]] = model
    return _ORIGINAL[orig["path"]]


def method_task(label: str, name: str, seed: int, orig: dict[str, Any]) -> dict[str, Any]:
    """One run of method ``name`` on the original, its quick gate verdict and what the metric reads."""
    st, ev = STATE["stages"][label], STATE["evaluators"][label]
    st.reference = orig["reference"]
    original, meta = _original(orig), orig["meta"]
    method = METHODS[name]
    ctx = UnlearnContext(
        spec=st.spec, model=original, meta=meta, forget=st.fs.forget, retain=st.fs.retain,
        forget_subject_ids=list(st.fs.subject_ids), recipe=st.spec.recipe, device=st.device, seed=seed,
        config={**engine.DEFAULT_CONFIGS.get(st.spec.name, {}).get(name, {}), **st.method_config.get(name, {})},
        calibration=st.test,
    )
    result, seconds, cpu = _timed(lambda: method(ctx))
    report = st.verify(result.model, result.meta, orig["base"][label], exact=method.exact, method=name,
                       served_conf=conf(st.spec, original, meta, st.fs.forget, st.device))
    return {"seconds": seconds, "cpu_seconds": cpu, **measured(ev, result.model, result.meta),
            "gate": report.passed, "shift": report.shift,
            "gate_quick": all(g["passed"] for k, g in report.gates.items() if k != "audited_f")}


def auto_task(label: str, seed: int, orig: dict[str, Any], escalation) -> dict[str, Any]:
    """One ``engine.forget(policy="auto")``, as a job runs it (gate, cost rule, escalations)."""
    st, ev = STATE["stages"][label], STATE["evaluators"][label]
    st.reference = orig["reference"]
    outcome, seconds, cpu = _timed(lambda: engine.forget(
        spec=st.spec, model=_original(orig), meta=orig["meta"], forget=st.fs.forget, retain=st.fs.retain,
        test=st.test, holdout=st.holdout, forget_subject_ids=st.fs.subject_ids, forget_unseen=st.fs.unseen,
        policy="auto", device=st.device, seed=seed, baseline=orig["base"][label], reference=st.reference,
        gates=st.gates, config=st.method_config, escalation=escalation))
    tried = ">".join(f"{a['method']}{'' if a['passed'] else '(fail)'}" for a in outcome.attempts)
    rule = (getattr(outcome, "decision", None) or {}).get("rule", "")
    return {"seconds": seconds, "cpu_seconds": cpu, **measured(ev, outcome.model, outcome.meta),
            "gate": outcome.passed, "served": outcome.method, "decision": f"{rule}: {tried}" if rule else tried}


def interim_task(label: str, kind: str, seed: int, orig: dict[str, Any], noises: tuple[float, ...]) -> dict[str, Any]:
    """One interim step of a scheduled model (``bench/unlearning_parts/interim.py``): one measured run
    per row it feeds (``rows``: the candidate as published, then with each weight-noise level)."""
    st, ev = STATE["stages"][label], STATE["evaluators"][label]
    st.reference = orig["reference"]
    r = interim.run(kind, st, _original(orig), orig["meta"], orig["base"][label], orig["reference"], seed, noises)
    common = {k: r[k] for k in ("seconds", "cpu_seconds", "gate", "served", "decision", "cleared", "stranger_gap")}
    rows = {interim.row_name(kind): {**common, **measured(ev, r["model"], r["meta"])}}
    for sigma, model in r["noised"].items():
        rows[interim.row_name(kind, sigma)] = {**common, **measured(ev, model, r["meta"])}
    return {"rows": rows}


class Inline:
    """The serial executor: a task runs when submitted, in this process (``--jobs 1``, or CUDA)."""

    def submit(self, fn, *args) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            f.set_exception(exc)
        return f

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _worker_init() -> None:
    set_cpu_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def executor(jobs: int, device) -> Inline | ProcessPoolExecutor:
    """``jobs`` forked single-threaded workers over ``STATE``, or in-process when jobs <= 1 or on CUDA."""
    if jobs <= 1 or torch.device(device).type != "cpu":
        return Inline()
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init)
