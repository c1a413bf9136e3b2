"""Every approximate method is a seeded random function of the served model (issue 10 section 3).

The competition metric (``workers/verify/epsilon.py``) scores a deterministic unlearner 0: its
outputs have no spread where N retrains have plenty. So two seeds must give different weights, and
the recorded seed must replay the erasure bit for bit (the job records it; ``workers/problem.py``).
"""

import pytest
import torch

from app.ml.update_log import train_logged
from workers.unlearning import METHODS, get_method
from workers.unlearning.base import UnlearnContext

from tests.workers.conftest import FORGET_SUBJECTS

APPROXIMATE = sorted(name for name, m in METHODS.items() if not m.exact)
# Short runs: the property does not depend on the length; keeps each test well under a second.
SHORT = {"finetune": {"steps": 5}, "neggrad_plus": {"steps": 5}, "salun": {"steps": 5},
         "scrub": {"cycles": 1, "retain_steps": 3}, "reinit_repair": {"cycles": 1, "steps_per_cycle": 3},
         "ssd": {"repair_steps": 3}, "amnesiac": {}}


@pytest.fixture(scope="module")
def logged(toy, toy_examples, tmp_path_factory):
    """A toy model trained with an update log (what ``amnesiac`` needs)."""
    return train_logged(toy, toy_examples, out_dir=tmp_path_factory.mktemp("seeds") / "log", device="cpu")


def run(name, spec, model, meta, sets, seed):
    ctx = UnlearnContext(spec=spec, model=model, meta=meta, forget=sets["forget"], retain=sets["retain"],
                         forget_subject_ids=FORGET_SUBJECTS, recipe=spec.recipe, device="cpu", seed=seed,
                         config=SHORT.get(name, {}), calibration=sets["test"])
    return get_method(name)(ctx).model.state_dict()


def test_every_approximate_method_is_covered():
    assert set(APPROXIMATE) <= set(SHORT), "a new approximate method needs a short setting here"


@pytest.mark.parametrize("name", APPROXIMATE)
def test_seeds_differ_and_a_seed_replays(name, toy, toy_trained, toy_sets, request):
    model, meta = request.getfixturevalue("logged")[:2] if name == "amnesiac" else toy_trained
    a, again, b = (run(name, toy, model, meta, toy_sets, seed) for seed in (3, 3, 4))
    assert all(torch.equal(a[k], again[k]) for k in a), f"{name}: the same seed gave different weights"
    assert any(not torch.equal(a[k], b[k]) for k in a), f"{name}: two seeds gave identical weights"
