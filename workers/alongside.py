"""The process that runs a scheduled model's interim jobs while its exact job trains (issue 16).

Started by ``pipeline.InterimsAlongside`` (``python -m workers.alongside``), it reads one JSON line on
stdin -- the worker's settings, database URL, device, lease owner and Redis publish URL -- then opens
and runs the model's due interim jobs under that owner's lease (``pipeline.open_interim``,
``pipeline.run_job``: the same code the thread ran) until stdin closes; the job under way then
finishes and the process exits. Its own process, so that its Python work never holds the GIL the
exact job's training loop needs. A job it leaves open (killed, crashed) is an orphan the drain
resumes after the exact job, as a thread's was.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import threading

log = logging.getLogger("lethe.worker")
POLL_S = 0.5


def main() -> int:
    boot = json.loads(sys.stdin.readline())
    import torch

    from app.core.config import Settings
    from app.core.db import make_engine
    from app.core.logging import configure_logging
    from app.ml.device import set_cpu_threads
    from app.services.requests.subscribers import install_subscribers
    from workers import pipeline
    from workers.context import Worker

    settings = Settings(**boot["settings"])
    configure_logging(settings.log_level)
    install_subscribers()  # the interims' transitions write their callbacks' outbox rows, as in the worker
    set_cpu_threads(settings.torch_threads)
    publish = (lambda name, version: None)
    if boot.get("publish_url"):
        from app.serving.holder import publish_update

        publish = functools.partial(publish_update, boot["publish_url"])
    w = Worker(settings=settings, engine=make_engine(boot["db_url"]) if boot.get("db_url") else None,
               device=torch.device(boot["device"]), owner=boot["owner"], publish=publish)
    stop = threading.Event()

    def until_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_eof, daemon=True, name="lethe-alongside-stdin").start()
    model = boot["model"]
    while not stop.is_set():
        job_id = None
        try:
            if (job_id := pipeline.open_interim(w, model)) is None:
                stop.wait(POLL_S)
                continue
            pipeline.run_job(w, job_id)
        except Exception:  # noqa: BLE001 - the job stays open: the drain resumes it after the exact job
            log.warning("interim job alongside the exact job of %s failed", model, exc_info=True,
                        extra={"job_id": job_id})
            stop.wait(POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
