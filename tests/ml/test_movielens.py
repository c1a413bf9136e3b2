import pytest
import torch

from app.ml.spec import TrainRecipe
from app.ml.specs import get_spec
from app.ml.train import predict, train_from_scratch


@pytest.fixture(scope="module")
def ml():
    spec = get_spec("movielens")
    examples = spec.load_examples()
    train = [e for e in examples if e.split == "train"][:20000]  # a slice: the mechanics, not accuracy
    model, meta = train_from_scratch(spec, train, device="cpu", recipe=TrainRecipe(epochs=1, batch_size=1024, lr=3e-3))
    return spec, examples, model, meta


def test_splits(ml):
    spec, examples, _, _ = ml
    assert len(examples) == 100_004
    users = {}
    for e in examples:
        users.setdefault(e.subject_id, set()).add(e.split)
    holdout_users = [u for u, s in users.items() if "holdout" in s]
    assert all(users[u] == {"holdout"} for u in holdout_users)
    assert 0.05 < len(holdout_users) / len(users) < 0.15
    assert {e.label for e in examples} == {0, 1}


def test_unknown_row_is_zero_and_unknown_users_map_to_it(ml):
    spec, examples, model, meta = ml
    assert "0" not in meta["user_rows"] and 0 not in meta["user_rows"].values()
    assert torch.all(model.user_emb.weight[0] == 0) and torch.all(model.user_bias.weight[0] == 0)
    holdout_user = next(e.features["user_id"] for e in examples if e.split == "holdout")
    batch = spec.collate([{"user_id": holdout_user, "movie_id": 31}, {"user_id": 10**9, "movie_id": 31}], meta)
    assert batch["user"].tolist() == [0, 0]


def test_forget_subjects_zeroes_rows_and_predicts_like_unknown(ml):
    spec, _, trained, meta = ml
    model = type(trained)(meta["n_user_rows"], len(meta["movie_rows"]), meta["movie_genres"], len(meta["genres"]), meta["dim"], meta["hidden"])
    model.load_state_dict(trained.state_dict())
    sid, row = next(iter(meta["user_rows"].items()))
    assert model.user_emb.weight[row].abs().sum() > 0
    assert not spec.subject_params_cleared(model, meta, [sid])
    movies = [{"user_id": int(sid), "movie_id": int(m)} for m in list(meta["movie_rows"])[:50]]
    before = predict(spec, model, meta, movies, device="cpu")
    new_meta = spec.forget_subjects(model, meta, [sid])
    assert sid not in new_meta["user_rows"] and sid in meta["user_rows"]  # new meta, old untouched
    assert torch.all(model.user_emb.weight[row] == 0) and torch.all(model.user_bias.weight[row] == 0)
    assert spec.subject_params_cleared(model, new_meta, [sid])
    after = predict(spec, model, new_meta, movies, device="cpu")
    unknown = predict(spec, model, new_meta, [{**m, "user_id": -1} for m in movies], device="cpu")
    assert after == unknown and after != before
    with torch.no_grad():
        model.user_emb.weight[row, 0] = 1e-3  # a leftover value in an erased row is caught
    assert not spec.subject_params_cleared(model, new_meta, [sid])
