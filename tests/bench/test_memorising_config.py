"""The memorising CNN configuration of the epsilon benchmark (issue 10): a subset of MNIST with a
fixed share of wrong labels, so that members carry a per-example trace."""

from bench.unlearning_parts.configs import CONFIGS, MnistMemo
from app.ml.specs import get_spec


def test_mnist_memo_is_a_fixed_noisy_subset_of_the_mnist_spec() -> None:
    memo = CONFIGS["mnist-memo"].make_spec()
    assert isinstance(memo, MnistMemo) and memo.name == "mnist"  # the engine applies the mnist policy
    examples = memo.load_examples()
    assert len({e.subject_id for e in examples}) == MnistMemo.SUBJECTS
    base = {(e.subject_id, tuple(e.features["pixels"])): e for e in get_spec("mnist").load_examples()}
    flipped = [e for e in examples if base[(e.subject_id, tuple(e.features["pixels"]))].label != e.label]
    assert 0.15 < len(flipped) / len(examples) < 0.25  # ~20 % wrong labels, in every split
    assert {e.split for e in flipped} == {"train", "test", "holdout"}
    assert [e.label for e in memo.load_examples()] == [e.label for e in examples]  # the same every time
    assert memo.build(memo.make_meta([])).head[1].in_features == 2 * 16 * 49  # the wider network
