"""User-sharded SISA for a recommender (app/ml/sisa.py, issue 10 section 4): every constituent
holds rows only for its own users and items, a known user is answered by their shard, an erasure
retrains only the owning shard and equals, bit for bit, the ensemble trained from scratch without
the user, and the erased user is then scored exactly like a stranger id."""

import hashlib
from pathlib import Path

import pytest
import torch

from app.ml.checkpoint import read_meta
from app.ml.ensemble import SISAEnsemble, base_meta, subject_params_cleared
from app.ml.sisa import assign, load_slice, train_sisa, unlearn_sisa
from app.ml.specs import get_spec
from app.ml.train import predict_logits

SHARDS, SLICES = 4, 3
STRANGER = 10**9  # a user id no model has seen


pytestmark = pytest.mark.usefixtures("deterministic_torch")  # bit-for-bit comparisons

@pytest.fixture(scope="module")
def ml():
    return get_spec("movielens")


@pytest.fixture(scope="module")
def small(ml):
    """The first 60 MovieLens users' ratings (~7k train samples): seconds on one core."""
    return [e for e in ml.load_examples() if int(e.subject_id) <= 60]


@pytest.fixture(scope="module")
def train(small):
    return [e for e in small if e.split == "train"]


@pytest.fixture(scope="module")
def user(train):
    """A user in a later slice (the restart is from a mid-shard checkpoint, not the initialisation)."""
    return next(s for s in sorted({e.subject_id for e in train}, key=int) if assign(s, SHARDS, SLICES)[1] == 2)


@pytest.fixture(scope="module")
def trained(ml, train, tmp_path_factory):
    return train_sisa(ml, train, out_dir=tmp_path_factory.mktemp("recsys") / "v1", device="cpu", seed=0,
                      shards=SHARDS, slices=SLICES)


@pytest.fixture(scope="module")
def erased(ml, train, trained, user):
    model, meta = trained
    retain = [e for e in train if e.subject_id != user]
    return unlearn_sisa(ml, model, meta, retain=retain[::-1], forget_keys={user}, device="cpu")


def same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def digest(directory: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(directory).iterdir())}


def nonzero_rows(table: torch.nn.Embedding) -> set[int]:
    return set(torch.nonzero(table.weight.abs().sum(-1)).flatten().tolist())


def test_each_constituent_holds_rows_only_for_its_own_users_and_items(ml, train, trained):
    model, meta = trained
    for k, member in enumerate(model.members):
        mine = [e.features for e in train if assign(e.subject_id, SHARDS, SLICES)[0] == k]
        users = {meta["user_rows"][str(f["user_id"])] for f in mine}
        movies = {meta["movie_rows"][str(f["movie_id"])] for f in mine}
        assert nonzero_rows(member.user_emb) == users and nonzero_rows(member.movie_emb) == movies
        assert {meta["sisa"]["routes"][str(r)] for r in users} == {k}
    assert len(meta["sisa"]["routes"]) == len(meta["user_rows"])  # every user has exactly one shard


def test_a_user_is_answered_by_their_shard_and_a_stranger_by_every_shard(ml, train, trained, user):
    model, meta = trained
    shard = assign(user, SHARDS, SLICES)[0]
    movies = sorted({e.features["movie_id"] for e in train})[:50]
    known = [{"user_id": int(user), "movie_id": m} for m in movies]
    stranger = [{"user_id": STRANGER, "movie_id": m} for m in movies]
    batch = ml.collate(known, meta)
    assert torch.equal(predict_logits(ml, model, meta, known, device="cpu"),
                       model.members[shard].eval()(**batch).log_softmax(-1))
    cold = torch.stack([m.eval()(**ml.collate(stranger, meta)).log_softmax(-1) for m in model.members])
    assert torch.allclose(predict_logits(ml, model, meta, stranger, device="cpu"),
                          torch.logsumexp(cold, 0) - torch.log(torch.tensor(float(SHARDS))), atol=1e-6)
    # Unrouted (plain SISA mean), the same ensemble dilutes the user's own shard with cold starts.
    plain = SISAEnsemble(list(model.members))
    assert not torch.allclose(predict_logits(ml, plain, meta, known, device="cpu"),
                              predict_logits(ml, model, meta, known, device="cpu"))


def test_erasure_retrains_only_the_owning_shard_and_equals_scratch_bit_for_bit(ml, train, trained, erased, user,
                                                                                  tmp_path):
    model, meta = trained
    served_files = digest(meta["sisa"]["dir"])
    new, new_meta, starts = erased
    shard = assign(user, SHARDS, SLICES)[0]
    assert starts == {shard: 2}
    # From scratch without the user, with the recorded seeds and row layout (the layout keeps the
    # user's row as an inert zero row; see the module docstring of app/ml/sisa.py).
    retain = [e for e in train if e.subject_id != user]
    layout = ml.restrict(base_meta(meta), [e.features for e in retain])
    scratch, scratch_meta = train_sisa(ml, retain, out_dir=tmp_path / "scratch", device="cpu", seed=0,
                                       shards=SHARDS, slices=SLICES, layout=layout)
    assert same(new, scratch) and base_meta(new_meta) == base_meta(scratch_meta)
    assert new_meta["sisa"]["routes"] == scratch_meta["sisa"]["routes"]
    for name in new_meta["sisa"]["slice_sha256"]:
        k, stage = int(name[1]), name.split("-")[1]
        stage = None if stage == "init" else int(stage[1:])
        assert same(load_slice(ml, new_meta["sisa"], k, stage)[0], load_slice(ml, scratch_meta["sisa"], k, stage)[0])
    # Only the owning shard was retrained: the others' weights and checkpoint files are the old ones.
    new_files = digest(new_meta["sisa"]["dir"])
    for k in range(SHARDS):
        own = [n for n in new_files if n.startswith(f"s{k}-")]
        if k == shard:
            assert not same(new.members[k], model.members[k])
        else:
            assert same(new.members[k], model.members[k])
            assert all(new_files[n] == served_files[n] for n in own)
    assert digest(meta["sisa"]["dir"]) == served_files  # the served version's files are untouched


def test_the_users_row_is_gone_everywhere_and_no_checkpoint_names_them(ml, trained, erased, user):
    model, meta = trained
    new, new_meta, _ = erased
    row = meta["user_rows"][user]
    assert not subject_params_cleared(ml, model, meta, [user])
    assert subject_params_cleared(ml, new, new_meta, [user])  # the per-subject-parameter gate
    assert user not in new_meta["user_rows"] and str(row) not in new_meta["sisa"]["routes"]
    for member in new.members:
        assert not member.user_emb.weight[row].any() and not member.user_bias.weight[row].any()
    # Including the rewritten checkpoints before the user's slice, which the retrain restarted from.
    for path in Path(new_meta["sisa"]["dir"]).iterdir():
        assert user not in read_meta(path)["user_rows"]


def test_an_erased_user_is_scored_exactly_like_a_stranger(ml, small, trained, erased, user):
    model, meta = trained
    new, new_meta, _ = erased
    movies = sorted({e.features["movie_id"] for e in small if e.subject_id == user})
    as_user = [{"user_id": int(user), "movie_id": m} for m in movies]
    as_stranger = [{"user_id": STRANGER, "movie_id": m} for m in movies]
    assert not torch.equal(predict_logits(ml, model, meta, as_user, device="cpu"),
                           predict_logits(ml, model, meta, as_stranger, device="cpu"))
    assert torch.equal(predict_logits(ml, new, new_meta, as_user, device="cpu"),
                       predict_logits(ml, new, new_meta, as_stranger, device="cpu"))


def test_a_second_erasure_from_slice_zero_still_equals_scratch(ml, train, erased, user, tmp_path):
    """Erasures accumulate: from the first erasure's ensemble, a user of another shard whose slice is
    0 (the retrain restarts from the rewritten initialisation) -> scratch without both users."""
    first, first_meta, _ = erased
    shard = assign(user, SHARDS, SLICES)[0]
    second = next(s for s in sorted({e.subject_id for e in train}, key=int)
                  if assign(s, SHARDS, SLICES)[0] != shard and assign(s, SHARDS, SLICES)[1] == 0)
    retain = [e for e in train if e.subject_id not in (user, second)]
    new, new_meta, starts = unlearn_sisa(ml, first, first_meta, retain=retain, forget_keys={second}, device="cpu")
    assert starts == {assign(second, SHARDS, SLICES)[0]: 0}
    layout = ml.restrict(base_meta(first_meta), [e.features for e in retain])
    scratch, scratch_meta = train_sisa(ml, retain, out_dir=tmp_path / "scratch", device="cpu", seed=0,
                                       shards=SHARDS, slices=SLICES, layout=layout)
    assert same(new, scratch) and new_meta["sisa"]["routes"] == scratch_meta["sisa"]["routes"]
    assert subject_params_cleared(ml, new, new_meta, [user, second])
