import math
from collections import Counter

import torch

from app.ml.data import make_loader
from app.ml.device import pick_device
from app.ml.spec import TrainRecipe
from app.ml.specs import get_spec
from app.ml.train import evaluate, per_example_loss, predict, train_from_scratch


def split(examples, name):
    return [e for e in examples if e.split == name]


def test_toy_memorises_and_beats_majority(toy, toy_examples, toy_trained):
    model, meta = toy_trained
    test = split(toy_examples, "test")
    majority = max(Counter(e.label for e in test).values()) / len(test)
    assert evaluate(toy, model, meta, split(toy_examples, "train"), device="cpu") == 1.0
    assert evaluate(toy, model, meta, test, device="cpu") > majority + 0.2


def test_training_is_deterministic(toy, toy_examples):
    recipe = TrainRecipe(epochs=3, batch_size=32, lr=3e-3)
    (m1, _), (m2, _) = (train_from_scratch(toy, toy_examples, device="cpu", seed=7, recipe=recipe) for _ in range(2))
    (m3, _) = train_from_scratch(toy, toy_examples, device="cpu", seed=8, recipe=recipe)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


def test_progress_and_train_split_only(toy, toy_examples):
    seen = []
    recipe = TrainRecipe(epochs=4, batch_size=32, lr=3e-3)
    train_from_scratch(toy, toy_examples, device="cpu", recipe=recipe, progress=seen.append)
    assert seen == [0.25, 0.5, 0.75, 1.0]
    try:
        train_from_scratch(toy, split(toy_examples, "holdout"), device="cpu", recipe=recipe)
    except ValueError as exc:
        assert "train" in str(exc)
    else:
        raise AssertionError("holdout examples must never be trained on")


def test_predict_evaluate_loss(toy, toy_examples, toy_trained):
    model, meta = toy_trained
    test = split(toy_examples, "test")
    out = predict(toy, model, meta, [e.features for e in test], device="cpu")
    assert len(out) == len(test)
    assert all(isinstance(y, int) and 0.25 <= p <= 1.0 for y, p in out)
    acc = sum(y == e.label for (y, _), e in zip(out, test)) / len(test)
    assert abs(acc - evaluate(toy, model, meta, test, device="cpu")) < 1e-9
    assert math.isnan(evaluate(toy, model, meta, [], device="cpu"))
    losses = per_example_loss(toy, model, meta, test, device="cpu")
    assert losses.shape == (len(test),) and (losses >= 0).all()
    assert losses.mean() > per_example_loss(toy, model, meta, split(toy_examples, "train"), device="cpu").mean()


def test_loader_is_seeded(toy, toy_examples, toy_trained):
    _, meta = toy_trained
    def first_labels(seed):
        batch, labels = next(iter(make_loader(toy, meta, toy_examples, batch_size=16, shuffle=True, seed=seed)))
        assert batch["x"].shape == (16, 16)
        return labels.tolist()
    assert first_labels(1) == first_labels(1) != first_labels(2)
    ordered = next(iter(make_loader(toy, meta, toy_examples, batch_size=4, shuffle=False)))[1]
    assert ordered.tolist() == [e.label for e in toy_examples[:4]]


def test_digits_quick_training():
    spec = get_spec("digits")
    examples = spec.load_examples()
    recipe = TrainRecipe(epochs=8, batch_size=64, lr=2e-3)
    model, meta = train_from_scratch(spec, examples, device="cpu", recipe=recipe)
    assert evaluate(spec, model, meta, split(examples, "test"), device="cpu") > 0.9


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        pick_device("tpu")
    except ValueError:
        pass
    else:
        raise AssertionError("unknown device accepted")
