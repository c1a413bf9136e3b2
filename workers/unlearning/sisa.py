"""``sisa``: exact unlearning for a model trained as a SISA ensemble (Bourtoule et al., "Machine
Unlearning", IEEE S&P 2021; ``app/ml/sisa.py``).

Each shard that held a forgotten subject restarts from its checkpoint before the first slice
that held one and retrains the remaining slices on the retain data; the other shards keep their
weights. The candidate equals an ensemble trained from scratch without the subjects, so it is
``exact``. New slice checkpoints go to a new directory next to the served one (the served
version's files are never touched) and the returned ``meta["sisa"]`` points there. Raises
``ValueError`` for a model that is not a SISA ensemble (``engine.method_chain`` never chains it
for one).
"""

from __future__ import annotations

from app.ml.sisa import is_sisa, unlearn_sisa
from workers.unlearning import register
from workers.unlearning.base import UnlearnContext, UnlearnResult, finish


@register("sisa", exact=True)
def unlearn(ctx: UnlearnContext) -> UnlearnResult:
    if not is_sisa(ctx.meta):
        raise ValueError("sisa needs a model trained as a SISA ensemble (meta['sisa']); use retrain")
    # Forget samples carry the subject key, which is what training assigned shards by.
    keys = {e.subject_id for e in ctx.forget}
    model, meta, _ = unlearn_sisa(ctx.spec, ctx.model, ctx.meta, retain=ctx.retain, forget_keys=keys,
                                  device=ctx.device, progress=ctx.progress)
    return finish(ctx, model, meta)
