"""Why a scheduled model's interims run beside its exact job in a process of their own (issue 16).

A training loop of small torch ops gives the GIL back at every op and must take it again after;
a CPU-bound Python thread in the same process keeps it for up to ``sys.getswitchinterval()`` (5 ms)
each time (the convoy effect). ``python bench/gil.py`` times the same loop (a MovieLens-shaped
embeddings + MLP model, one torch thread, batch 256) alone, beside a busy Python thread at several
switch intervals, and beside the same busy work in another process -- what ``workers/alongside.py``
does for interim jobs -- and prints each as a share of the loop alone, measured in the same run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time


def _busy(stop: threading.Event | None = None, seconds: float | None = None) -> None:
    end = None if seconds is None else time.monotonic() + seconds
    while not (stop is not None and stop.is_set()) and not (end is not None and time.monotonic() > end):
        sum(i * i for i in range(10_000))


def _loop(steps: int):  # noqa: ANN202
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    users, movies = torch.nn.Embedding(1000, 128), torch.nn.Embedding(2000, 128)
    mlp = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    opt = torch.optim.AdamW([*users.parameters(), *movies.parameters(), *mlp.parameters()], lr=1e-3)

    def run(n: int = steps) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            u, m, y = torch.randint(0, 1000, (256,)), torch.randint(0, 2000, (256,)), torch.rand(256)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                mlp(torch.cat([users(u), movies(m)], dim=1)).squeeze(1), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return n / (time.perf_counter() - t0)

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400, help="training steps per measurement")
    a = ap.parse_args(argv)
    run = _loop(a.steps)
    run(max(5, a.steps // 8))  # warm-up
    alone = run()
    rows = [("alone", alone)]
    default = sys.getswitchinterval()
    try:
        for interval in (default, 0.001, 0.0001):
            sys.setswitchinterval(interval)
            stop = threading.Event()
            th = threading.Thread(target=_busy, args=(stop,), daemon=True)
            th.start()
            rows.append((f"beside a busy thread, switch interval {interval * 1000:g} ms", run()))
            stop.set()
            th.join()
    finally:
        sys.setswitchinterval(default)
    proc = multiprocessing.get_context("spawn").Process(target=_busy, kwargs={"seconds": 600.0}, daemon=True)
    proc.start()
    time.sleep(1.0)  # its interpreter is up and busy
    rows.append(("beside a busy process (workers/alongside.py)", run()))
    proc.terminate()
    proc.join()
    print(f"| training loop | steps/s | share of alone |\n|---|---|---|")
    for label, rate in rows:
        print(f"| {label} | {rate:.1f} | {rate / alone:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
