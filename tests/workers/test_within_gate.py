"""The within-subject MIA gate: a subject's trained samples vs their own never-trained ones."""

from __future__ import annotations

from dataclasses import replace

from app.ml.train import train_from_scratch
from workers.verify.report import Gates, verify_candidate

SUBJECTS = ["toy-02", "toy-03", "toy-04", "toy-07", "toy-08", "toy-09"]


def _split(toy_examples):  # noqa: ANN001, ANN202
    """Half of each forget subject's samples are trained on, the other half never are."""
    train = [e for e in toy_examples if e.split == "train"]
    seen, unseen, rest = [], [], []
    for e in train:
        if e.subject_id in SUBJECTS:
            (seen if len([x for x in seen if x.subject_id == e.subject_id]) < 5 else unseen).append(e)
        else:
            rest.append(e)
    unseen = [replace(e, split="test") for e in unseen]
    return seen, unseen, rest


def _verify(toy, model, meta, seen, unseen, rest, toy_examples, exact=False):  # noqa: ANN001, ANN202
    holdout = [e for e in toy_examples if e.split == "holdout"]
    test = [e for e in toy_examples if e.split == "test"]
    return verify_candidate(spec=toy, candidate=model, meta=meta, forget=seen, retain=rest, test=test,
                            holdout=holdout, forget_subject_ids=[], baseline={}, reference=None, gates=Gates(),
                            device="cpu", exact=exact, method="x", forget_unseen=unseen)


def test_within_subject_gate_fails_a_remembering_model_and_passes_a_retrain(toy, toy_examples) -> None:  # noqa: ANN001
    seen, unseen, rest = _split(toy_examples)
    assert len(seen) == 30 and len(unseen) == 30
    remembering, meta = train_from_scratch(toy, seen + rest, device="cpu", seed=0)
    report = _verify(toy, remembering, meta, seen, unseen, rest, toy_examples)
    assert report.mia_test == "within_subject_auc" and report.n_forget_unseen == 30
    assert report.within_auc > 0.6 and not report.gates["mia"]["passed"]
    retrained, meta2 = train_from_scratch(toy, rest, device="cpu", seed=0)
    report2 = _verify(toy, retrained, meta2, seen, unseen, rest, toy_examples)
    assert abs(report2.within_auc - 0.5) < abs(report.within_auc - 0.5)
    assert report2.gates["mia"]["passed"], report2.gates["mia"]
