"""Parts of the unlearning benchmark (``bench/unlearning.py`` is its entry script).

A package, not ``bench/*.py`` files, so that ``lethe bench`` (``app.cli.bench.bench_names``) does not
list the parts as benchmarks of their own:

- ``configs``: bundled configurations, targets, forget sets;
- ``measure``: one forget set, every method and ``auto``, verified against retrain;
- ``bundled``: a bundled configuration end to end (train the original, then measure);
- ``registered``: a model registered in a Lethe database (``--model``, ``--record-chain``);
- ``summary``: means, DESIGN.md section 8 targets, chains the runs support;
- ``report``: unlearning.md / .csv / .json / .png;
- ``epsilon*``: the competition metric (``--epsilon N``); ``interim``: the scheduler's interim forget
  scored through the worker's own code (``--interim params,auto``, issue 16);
- ``cli``: arguments and the run.
"""
