"""``retrain``: exact unlearning, a fresh model trained on the retain set with the original recipe.

The reference every approximate method must approach (Cao & Yang, "Towards Making Systems
Forget with Machine Unlearning", S&P 2015, call it the exact baseline). Meta is rebuilt from the
retain set, so erased subjects have no per-subject row at all. A SISA ensemble is retrained as one:
full sharded training with the served ensemble's configuration (``app/ml/sisa.py``).

A model whose spec declares public parameters (issue 20, ``app/ml/public.py``) gets the same call,
which then re-initialises and retrains only what saw people: the public part is rebuilt from its
source and must hash to the registered value; a spec that splits into backbone and head trains the
head on the per-sample feature cache recorded in ``meta["public"]["cache"]`` (personal data: the
retain set's entries only; the erased subjects' files were deleted when their samples were).
"""

from __future__ import annotations

from app.ml.sisa import is_sisa, retrain_sisa
from app.ml.train import train_from_scratch
from workers.unlearning import register
from workers.unlearning.base import UnlearnContext, UnlearnResult, finish


@register("retrain", exact=True)
def unlearn(ctx: UnlearnContext) -> UnlearnResult:
    if is_sisa(ctx.meta):
        model, meta = retrain_sisa(ctx.spec, ctx.meta, ctx.retain, device=ctx.device, progress=ctx.progress)
        return finish(ctx, model, meta)
    cache = (ctx.meta.get("public") or {}).get("cache")
    model, meta = train_from_scratch(
        ctx.spec, ctx.retain, device=ctx.device, seed=ctx.seed, recipe=ctx.recipe, progress=ctx.progress,
        feature_cache=cache,
    )
    return finish(ctx, model, meta)
