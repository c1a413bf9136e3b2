"""SISA shards retrained in parallel, one task per shard (issue 20 section 4).

An erasure that touches several shards of a SISA ensemble (``app/ml/sisa.py``) retrains them
independently; :class:`FanOut` (registered with ``sisa.set_shard_runner`` by a worker at start-up)
sends one task per touched shard through ``send`` (a Celery ``send_task`` on the ``unlearn`` queue,
``workers/tasks.py``) and waits, over the shared file system, until every shard has reported:

  - ``shard-K.task.json`` in the new version's SISA directory: what the shard trains on (its own
    retain samples -- personal data, removed as soon as the shard is done and in any case when the
    group ends; erased subjects are never in it);
  - ``shard-K.claim``: written by the task that runs it, touched every ``HEARTBEAT_S`` seconds;
  - ``shard-K.done.json``: the shard's checkpoint hashes and counts, written atomically last.

A single touched shard is trained in the job (a task would add only its hand-over). The job that
sent them keeps its lease meanwhile and alone publishes (its fence check is unchanged),
so the group publishes once. A shard nobody claimed within ``claim_timeout_s`` (every worker busy:
the embedded default's single worker is running this very job) or whose claim went stale (its task
died mid-way and the broker has not redelivered it) is trained by the job itself. A shard has one
claimant at a time (the claim file is created exclusively; a silent one is taken over), so a task
that reaches a worker after the job took its shard over does nothing, and a redelivered one after
the group ended finds no task file. Cost: about one shard's time when each shard finds a free worker, plus
the polling interval; the erasure scheduler's estimate of an exact job's cost is
``policy.sisa_job_seconds`` (the slowest touched shard, not their sum, when fanned out).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.ml.sisa import ShardResult, ShardWork, run_inline, train_shard
from app.ml.spec import Example

log = logging.getLogger("lethe.sisa")
HEARTBEAT_S = 2.0
STALE_S = 30.0  # a claim silent this long belongs to a dead run (15 missed heartbeats)


def _paths(out_dir: Path, k: int) -> tuple[Path, Path, Path]:
    return out_dir / f"shard-{k}.task.json", out_dir / f"shard-{k}.claim", out_dir / f"shard-{k}.done.json"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_task(work: ShardWork, k: int, start: int) -> Path:
    """The task file of shard ``k``: everything ``train_shard`` needs, as JSON."""
    task, _, _ = _paths(work.out_dir, k)
    slices = [[[e.subject_id, e.split, e.features, int(e.label)] for e in s] for s in work.parts[k]]
    payload = {"spec": work.spec.name, "inner": work.inner, "cfg": work.cfg, "shard": k, "start": start,
               "old": work.old, "out_dir": str(work.out_dir), "slices": slices}
    work.out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(task, json.dumps(payload))
    return task


class _Heartbeat:
    def __init__(self, path: Path) -> None:
        self.path, self.stop = path, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            self.path.touch()

    def __enter__(self) -> None:
        self.path.touch()
        self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


def _claim(path: Path, stale_s: float) -> bool:
    """Take the shard's claim: create the file exclusively, or replace one silent for ``stale_s``
    (its claimant died). False while another live claimant holds it."""
    for _ in range(2):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            try:
                if time.time() - path.stat().st_mtime < stale_s:
                    return False
            except FileNotFoundError:
                continue  # released meanwhile: try again
            path.unlink(missing_ok=True)
    return False


def run_shard_file(task_file: str | os.PathLike[str], *, device: Any = "cpu",
                   stale_s: float = STALE_S) -> dict[str, Any] | None:
    """Train the shard a task file describes (what the Celery task runs). Returns its report; ``None``
    when the group is already over (a redelivery after the job collected every shard) or another
    live claimant is training it (the job took it over while this task waited in the queue: two
    runs of one shard would race on its files, and bytes are equal only on identical hardware and
    thread counts)."""
    from app.ml.specs import get_spec

    task = Path(task_file)
    k = int(task.name.split("-")[1].split(".")[0])
    _, claim, done = _paths(task.parent, k)
    if done.exists():
        return json.loads(done.read_text())
    if not task.exists() or not _claim(claim, stale_s):
        log.info("SISA shard %d: claimed by another run or already collected; nothing to do", k)
        return None
    try:
        payload = json.loads(task.read_text())
    except FileNotFoundError:
        claim.unlink(missing_ok=True)
        log.info("SISA shard %d: task file gone, the job collected its group already", k)
        return None
    spec = get_spec(payload["spec"])
    slices = [[Example(sid, split, feats, label) for sid, split, feats, label in s] for s in payload["slices"]]
    with _Heartbeat(claim):
        result = train_shard(spec, payload["inner"], payload["cfg"], slices, k, payload["start"], payload["old"],
                             Path(payload["out_dir"]), device)
    report = {"shas": result.shas, "counts": result.counts}
    _write_atomic(done, json.dumps(report))
    task.unlink(missing_ok=True)  # the shard's samples leave the disk as soon as it is done
    return report


class FanOut:
    """A ``sisa.ShardRunner`` that sends one task per touched shard and waits for all of them."""

    def __init__(self, send: Callable[[str], Any], *, claim_timeout_s: float = 15.0, stale_s: float = STALE_S,
                 poll_s: float = 0.25, sleep: Callable[[float], None] = time.sleep) -> None:
        self.send, self.claim_timeout_s, self.stale_s, self.poll_s, self.sleep = (
            send, claim_timeout_s, stale_s, poll_s, sleep)
        self.took_over: list[int] = []  # shards this process trained itself (for tests and logs)

    def __call__(self, work: ShardWork) -> dict[int, ShardResult]:
        if len(work.touched) == 1:  # nothing runs beside it: a task would add only its hand-over
            return run_inline(work)
        files = {k: write_task(work, k, start) for k, start in sorted(work.touched.items())}
        try:
            for f in files.values():
                self.send(str(f))
            sent = time.time()
            results: dict[int, ShardResult] = {}
            while len(results) < len(files):
                for k, f in files.items():
                    if k in results:
                        continue
                    _, claim, done = _paths(work.out_dir, k)
                    if not done.exists():
                        claimed = claim.stat().st_mtime if claim.exists() else None
                        idle = time.time() - (claimed or sent)
                        if idle < (self.stale_s if claimed else self.claim_timeout_s):
                            continue
                        log.warning("SISA shard %d %s for %.0f s: training it in the job", k,
                                    "went silent" if claimed else "was not picked up", idle)
                        if run_shard_file(f, device=work.device, stale_s=self.stale_s) is None and not done.exists():
                            continue  # a worker claimed it meanwhile: wait for it
                        self.took_over.append(k)
                    report = json.loads(done.read_text())
                    results[k] = ShardResult(report["shas"], report["counts"])
                    work.tick()
                if len(results) < len(files):
                    self.sleep(self.poll_s)
            return results
        finally:
            for k, f in files.items():
                for p in (f, *_paths(work.out_dir, k)[1:]):
                    p.unlink(missing_ok=True)
