"""Unlearning benchmark: every registered method against exact retraining, measured in one run.

For each configuration (a model spec, possibly scaled up), seed and forget set (one subject, 1 %
and 10 % of the training subjects, drawn per seed; the >= 1-minute configuration runs one subject
and 10 % only, to keep a full run near 20 minutes), the original model is unlearned by every
method in ``workers.unlearning.METHODS`` and by ``retrain``, each candidate is measured with the
quick verification gate (``workers/verify/report.py``: forget / retain / test accuracy, loss-MIA
AUC and whether it passes) and compared with the retrain of the same forget set and seed. Then
policy ``auto`` is run through the engine (``engine.forget(policy="auto")``, escalations
included) and its total time is set against retrain's. On the small configurations an audit-mode
MIA (``workers/verify/audit.py``: LiRA / RMIA with reference models, TPR at 1 % and 5 % FPR)
scores every candidate of the largest forget set. DESIGN.md section 8's targets are judged on
the configuration whose full retrain takes >= 1 minute (``movielens-large``), where pipeline
overhead does not hide a method's cost.

Methods that need a specially trained model (``sisa``: a SISA ensemble; ``amnesiac``: an update
log) get one trained with ``app.ml.train.train_for_registration`` when the support modules exist
and the spec allows it; otherwise their rows say ``skipped`` and why.

    python bench/unlearning.py                 # full run (~20 min on 2 shared cores)
    python bench/unlearning.py --quick         # 1 seed, small sets, small specs
    lethe bench unlearning --configs toy --quick --out /tmp/x
    lethe bench unlearning --model NAME [--db-url URL] [--record-chain [--url URL --key KEY]]

``--epsilon N`` scores with the NeurIPS 2023 competition's metric instead (N runs per side, the
retrain floor); ``--interim params,auto [--interim-noise 0.01,0.03]`` adds the scheduler's interim
forget, run by ``workers/interim.py``'s own functions (``bench/unlearning_parts/interim.py``).

``--model`` measures a model registered in a Lethe database instead (its serving version, its
live registry samples, its recorded reference, chain and method overrides); ``--record-chain``
then sets its ``auto`` chain to the cheapest methods that passed every run, ending with the
exact fallback (``bench/unlearning_parts/registered.py``).

Writes ``unlearning.md``, ``unlearning.csv`` (one row per run), ``unlearning.json`` and
``unlearning.png`` under ``--out`` (default ``bench/results``; ``bench/results/model-NAME`` with
``--model``). The code lives in ``bench/unlearning_parts/`` (a package, so ``lethe bench`` lists
this script only); this file is the entry point ``lethe bench unlearning`` runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `python bench/unlearning.py`
    sys.path.insert(0, str(ROOT))

from bench.unlearning_parts.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
