"""``amnesiac``: undo the logged updates of every batch that held the subject, then repair on the
retain set (Graves, Nagisetty & Ganesh, "Amnesiac Machine Learning", AAAI 2021;
``app/ml/update_log.py`` says when the subtraction is exact and when it is a heuristic).

Opt-in at registration (``training={"update_log": True}``): a model without an update log raises
``ValueError`` (``engine.method_chain`` never chains it for one). The repair steps are logged
like training steps, so a later erasure can undo them too; the candidate's log lives in a new
directory without the erased subjects' batches or keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.ml.update_log import UpdateLog, logged_batches, logged_step, make_optimizer, new_log_dir, subtract_updates
from workers.unlearning import register
from workers.unlearning.base import Deadline, UnlearnContext, UnlearnResult, finish, resolve_config, working_copy


@dataclass(frozen=True)
class AmnesiacConfig:
    # Retain steps after the subtraction. The subtraction alone leaves the weights off any
    # trajectory: measured, 0 steps drops digits test accuracy to ~0.1-0.25 and toy to ~0.3-0.56;
    # 50 steps recover toy (and reach the retrain AUC), digits needs ~100 for 12 subjects.
    steps: int = 100
    # Multiple of the recipe's learning rate for the repair (the recipe's rate is tuned for AdamW).
    lr_scale: float = 1.0
    # None: the recipe's batch size.
    batch_size: int | None = None


@register("amnesiac", exact=False)
def unlearn(ctx: UnlearnContext) -> UnlearnResult:
    cfg = resolve_config(AmnesiacConfig, ctx.config)
    log = UpdateLog.of(ctx.meta)  # ValueError without a log
    keys = {e.subject_id for e in ctx.forget}
    removed = log.batches_of(keys)
    model, meta = working_copy(ctx)
    subtract_updates(model, log, removed)
    writer = log.rewrite(new_log_dir(Path(log.dir).parent), drop_batches=removed, drop_subjects=keys)
    if cfg.steps and ctx.retain:
        # The log's optimiser (not plain AdamW): the repair steps must stay undoable too.
        optimizer = writer.optimizer if writer.optimizer != "sgd" else "adamw_nomomentum"
        opt = make_optimizer(model, optimizer, ctx.recipe.lr * cfg.lr_scale, ctx.recipe.weight_decay)
        stream = logged_batches(ctx.spec, meta, ctx.retain, batch_size=cfg.batch_size or ctx.recipe.batch_size,
                                seed=ctx.seed, batching=writer.batching, device=ctx.device)
        deadline = Deadline(ctx.time_budget_s)
        model.train()
        for step in range(cfg.steps):
            if deadline.expired():
                break
            _, batch, labels, subjects = next(stream)
            logged_step(model, opt, batch, labels, subjects, writer)
            ctx.progress((step + 1) / cfg.steps)
    meta = {**meta, "update_log": writer.close()}
    return finish(ctx, model, meta)
