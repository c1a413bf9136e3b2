"""SISA training (app/ml/sisa.py): assignment, the ensemble as a servable model, and the exactness
of shard retraining, bit for bit against training from scratch without the subjects."""

import hashlib
from pathlib import Path

import pytest
import torch

from app.ml.checkpoint import ChecksumMismatch, companion_dirs, load_checkpoint, read_meta, save_checkpoint
from app.ml.sisa import SISAEnsemble, assign, load_slice, train_sisa, unlearn_sisa
from app.ml.specs import get_spec
from app.ml.train import evaluate, predict_logits

FORGET = {"toy-02", "toy-07"}  # shards 0 and 3 (slices 0 and 1): shards 1 and 2 stay untouched


pytestmark = pytest.mark.usefixtures("deterministic_torch")  # bit-for-bit comparisons

@pytest.fixture(scope="module")
def train(toy_examples):
    return [e for e in toy_examples if e.split == "train"]


@pytest.fixture(scope="module")
def sisa_trained(toy, train, tmp_path_factory):
    return train_sisa(toy, train, out_dir=tmp_path_factory.mktemp("sisa") / "v1", device="cpu", seed=0)


def params_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def digest(directory: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(directory).iterdir())}


def test_assignment_is_by_subject_and_stable(train):
    cells = {e.subject_id: assign(e.subject_id, 4, 3) for e in train}
    assert cells == {s: assign(s, 4, 3) for s in cells}  # no order or seed dependence
    assert {k for k, _ in cells.values()} == {0, 1, 2, 3}
    assert {assign(s, 4, 3)[0] for s in FORGET} == {0, 3}


def test_meta_layout_and_ensemble_serves_like_one_model(toy, toy_examples, sisa_trained, tmp_path):
    model, meta = sisa_trained
    section = meta["sisa"]
    assert (section["shards"], section["slices"]) == (4, 3)
    assert set(section["slice_sha256"]) == {f"s{k}-{r}" for k in range(4) for r in ("init", "r0", "r1", "r2")}
    assert digest(section["dir"]) == {f"{n}.safetensors": sha for n, sha in section["slice_sha256"].items()}
    assert sum(section["counts"].values()) == sum(e.split == "train" for e in toy_examples)
    # Saved and loaded through the ordinary checkpoint path, it is the same ensemble.
    sha = save_checkpoint(tmp_path / "v1.safetensors", model, meta, {"method": "train"})
    loaded, meta2, _ = load_checkpoint(tmp_path / "v1.safetensors", toy, expected_sha256=sha)
    assert isinstance(loaded, SISAEnsemble) and params_equal(loaded, model) and meta2 == meta
    assert companion_dirs(read_meta(tmp_path / "v1.safetensors")) == [Path(section["dir"])]
    # Logits are log mean probabilities of the constituents.
    feats = [e.features for e in toy_examples[:20]]
    batch = toy.collate(feats, meta)
    mean = torch.stack([m(**batch).softmax(-1) for m in model.members]).mean(0)
    assert torch.allclose(predict_logits(toy, model, meta, feats, device="cpu").softmax(-1), mean, atol=1e-6)
    test = [e for e in toy_examples if e.split == "test"]
    assert evaluate(toy, model, meta, test, device="cpu") > 0.6


def test_unlearning_equals_training_from_scratch_bit_for_bit(toy, train, sisa_trained, tmp_path):
    model, meta = sisa_trained
    served_files = digest(meta["sisa"]["dir"])
    retain = [e for e in train if e.subject_id not in FORGET]
    # Rows come back from the registry in any order: retraining must not depend on it.
    new, new_meta, starts = unlearn_sisa(toy, model, meta, retain=retain[::-1], forget_keys=FORGET, device="cpu")
    scratch, scratch_meta = train_sisa(toy, retain, out_dir=tmp_path / "scratch", device="cpu", seed=0)
    assert starts == {0: 0, 3: 1}
    assert params_equal(new, scratch)
    # Every slice checkpoint too (weights; file bytes differ: safetensors orders header metadata freely).
    assert new_meta["sisa"]["slice_sha256"].keys() == scratch_meta["sisa"]["slice_sha256"].keys()
    for name in new_meta["sisa"]["slice_sha256"]:
        k, stage = int(name[1]), name.split("-")[1]
        stage = None if stage == "init" else int(stage[1:])
        assert params_equal(load_slice(toy, new_meta["sisa"], k, stage)[0], load_slice(toy, scratch_meta["sisa"], k, stage)[0])
    for k in (1, 2):  # untouched shards keep their weights
        assert params_equal(new.members[k], model.members[k])
    for k in (0, 3):
        assert not params_equal(new.members[k], model.members[k])
    # The served version's files are untouched; the candidate's live in a new directory beside them.
    assert digest(meta["sisa"]["dir"]) == served_files
    assert new_meta["sisa"]["dir"] != meta["sisa"]["dir"]
    assert Path(new_meta["sisa"]["dir"]).parent == Path(meta["sisa"]["dir"]).parent


def test_stale_ensemble_is_retrained_from_scratch(toy, train, sisa_trained, tmp_path):
    """Served weights that are not their slice checkpoints must not be trusted: retrain every shard."""
    model, meta = sisa_trained
    stale = SISAEnsemble([m for m in model.members])
    stale.load_state_dict(model.state_dict())
    with torch.no_grad():
        stale.members[1].net[0].bias.add_(1.0)
    retain = [e for e in train if e.subject_id not in FORGET]
    new, _, starts = unlearn_sisa(toy, stale, meta, retain=retain, forget_keys=FORGET, device="cpu",
                                  out_dir=tmp_path / "new")
    assert starts == {0: 0, 1: 0, 2: 0, 3: 0}
    scratch, _ = train_sisa(toy, retain, out_dir=tmp_path / "scratch", device="cpu", seed=0)
    assert params_equal(new, scratch)


def test_tampered_slice_checkpoint_is_refused(toy, train, tmp_path):
    model, meta = train_sisa(toy, train, out_dir=tmp_path / "v1", device="cpu", epochs_per_slice=1)
    path = Path(meta["sisa"]["dir"]) / "s0-init.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch):
        unlearn_sisa(toy, model, meta, retain=train, forget_keys={"toy-02"}, device="cpu")


def test_refuses_unroutable_per_subject_specs_and_non_empty_dirs(toy, train, tmp_path):
    class Unroutable(type(get_spec("movielens"))):
        subject_input = None  # per-subject rows, but no way to route a subject to their shard

    with pytest.raises(ValueError, match="per-subject"):
        train_sisa(Unroutable(), [], out_dir=tmp_path / "m", device="cpu")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        train_sisa(toy, train, out_dir=tmp_path / "used", device="cpu")


def test_fanned_out_shards_nobody_claims_are_trained_by_the_job_and_equal_inline(toy, train, tmp_path):
    from app.ml.sisa import set_shard_runner
    from app.ml.sisa_tasks import FanOut

    model, meta = train_sisa(toy, train, out_dir=tmp_path / "v1", device="cpu", seed=0)  # its own: others edit theirs
    retain = [e for e in train if e.subject_id not in FORGET]
    sent: list[str] = []
    runner = FanOut(sent.append, claim_timeout_s=0, poll_s=0)  # a broker with no free worker (embedded default)
    previous = set_shard_runner(runner)
    try:
        fanned, fanned_meta, starts = unlearn_sisa(toy, model, meta, retain=retain, forget_keys=FORGET, device="cpu",
                                                   out_dir=tmp_path / "fanned")
    finally:
        set_shard_runner(previous)
    inline, _, _ = unlearn_sisa(toy, model, meta, retain=retain, forget_keys=FORGET, device="cpu",
                                out_dir=tmp_path / "inline")
    assert [Path(p).name for p in sent] == ["shard-0.task.json", "shard-3.task.json"] and starts == {0: 0, 3: 1}
    assert sorted(runner.took_over) == [0, 3]
    assert params_equal(fanned, inline)
    assert not list((tmp_path / "fanned").glob("shard-*"))  # no task file (the shard's samples) is left


def test_the_scheduler_cost_of_an_exact_sisa_job_counts_waves_of_touched_shards():
    from app.ml.policy import sisa_job_seconds

    assert sisa_job_seconds(10.0, 4) == 40.0  # one worker: one after another
    assert sisa_job_seconds(10.0, 4, workers=2, overhead_s=3.0) == 23.0
    assert sisa_job_seconds(10.0, 3, workers=8) == 10.0
    assert sisa_job_seconds(10.0, 0, overhead_s=3.0) == 3.0
