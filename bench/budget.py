"""How far past its time budget an approximate attempt runs before the engine cuts it (issue 23).

The unit test ``tests/workers/test_escalation.py::test_engine_bounds_approximate_attempts_by_the_budget``
checks *that* an endless attempt is cut and escalation skips the next approximate method; how
close to the budget the cut lands is wall-clock behaviour (a loaded 2-core CI machine adds
hundreds of milliseconds), so it is measured here instead: ``python bench/budget.py --runs 5``.
Prints, per run, the budget, the attempt's seconds and the overshoot, then the median and max.
"""

from __future__ import annotations

import argparse
import statistics

from app.ml.policy import Escalation
from app.ml.specs import get_spec
from app.ml.train import evaluate, train_from_scratch
from workers.unlearning.engine import forget

FORGET = ["toy-02", "toy-03", "toy-04", "toy-07"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--retrain-seconds", type=float, default=0.4, help="recorded retrain time; budget = 0.5 x this")
    args = ap.parse_args()
    toy = get_spec("toy")
    examples = toy.load_examples()
    model, meta = train_from_scratch(toy, examples, device="cpu", seed=0)
    train = [e for e in examples if e.split == "train"]
    sets = {"forget": [e for e in train if e.subject_id in FORGET],
            "retain": [e for e in train if e.subject_id not in FORGET],
            "test": [e for e in examples if e.split == "test"], "holdout": [e for e in examples if e.split == "holdout"]}
    baseline = {"retain_acc": evaluate(toy, model, meta, sets["retain"], device="cpu"),
                "test_acc": evaluate(toy, model, meta, sets["test"], device="cpu")}
    over = []
    print(f"{'run':>3} {'budget_s':>8} {'attempt_s':>9} {'overshoot_s':>11}")
    for i in range(args.runs):
        out = forget(spec=toy, model=model, meta=meta, forget_subject_ids=FORGET, device="cpu", baseline=baseline,
                     reference={"retrain_seconds": args.retrain_seconds},
                     chains={"toy": ("finetune", "neggrad_plus", "retrain")},
                     config={"finetune": {"steps": 10**7, "lr_scale": 1e-6}},
                     escalation=Escalation(approx_budget_share=0.5), **sets)
        budget, first = out.decision["budget_s"], out.attempts[0]
        over.append(first["seconds"] - budget)
        print(f"{i:>3} {budget:>8.2f} {first['seconds']:>9.3f} {over[-1]:>11.3f}")
    print(f"overshoot median {statistics.median(over):.3f} s, max {max(over):.3f} s over {len(over)} runs")


if __name__ == "__main__":
    main()
