"""``lethe bench unlearning --epsilon N --configs wdbc_head`` (issue 20) runs end to end, shortened:
the marginal protocol's table, the full fine-tune baseline and the ratio come out of one run."""

from __future__ import annotations

import dataclasses
import json

from app.ml.specs.wdbc_head import WdbcHeadSpec


def test_exact_design_bench_writes_its_table(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from bench.unlearning_parts.cli import main

    monkeypatch.setattr(WdbcHeadSpec, "recipe", dataclasses.replace(WdbcHeadSpec.recipe, epochs=1))
    assert main(["--epsilon", "3", "--configs", "wdbc_head", "--methods", "finetune", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "unlearning-exact-wdbc_head.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == {"original (no erasure)", "retrain (head, cached features)",
                         "retrain (head, backbone in the job)", "finetune (single original)"}
    head = rows["retrain (head, cached features)"]
    assert head["protocol"] == "marginal" and rows["finetune (single original)"]["protocol"] == "single"
    assert head["speedup_vs_full"] > 0 and 0 <= head["F"] <= 1 and data["info"]["n"] == 3
    md = (tmp_path / "unlearning-exact-wdbc_head.md").read_text()
    assert "| retrain (head, cached features) | marginal |" in md and "Targets:" in md


def test_the_pretrained_encoder_arm_writes_its_table(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """``--configs sotu`` on a slice (5 training and 2 test presidents, 3 paragraphs each): the
    shared cache, the once-timed backbone pass and the encoder's full fine-tune are in the table."""
    from app.ml.specs.sotu import SotuSpec
    from bench.unlearning_parts.cli import main

    full = SotuSpec().load_examples()
    people = {split: sorted({e.subject_id for e in full if e.split == split})[:n] for split, n in
              (("train", 5), ("test", 2), ("holdout", 1))}
    taken: dict[str, int] = {}
    small = []
    for e in full:
        if e.subject_id in people[e.split] and taken.get(e.subject_id, 0) < 3:
            taken[e.subject_id] = taken.get(e.subject_id, 0) + 1
            small.append(e)
    monkeypatch.setattr(SotuSpec, "load_examples", lambda self: list(small))
    monkeypatch.setattr(SotuSpec, "recipe", dataclasses.replace(SotuSpec.recipe, epochs=2))
    assert main(["--epsilon", "3", "--configs", "sotu", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "unlearning-exact-sotu.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == {"original (no erasure)", "retrain (head, cached features)"}  # no approximate by default
    info = data["info"]
    assert info["forget_set"] == "1 heavy user" and info["n_forget"] == 3 and info["n_train"] == 15
    assert info["backbone_pass"]["samples"] == 21 and info["no_cache_retrain"]["seconds"] > 0
    assert info["full_finetune"]["1.0"]["epochs"] == 1 and 0 <= info["full_finetune"]["1.0"]["test_acc"] <= 1
    assert rows["retrain (head, cached features)"]["speedup_vs_full"] > 0
    md = (tmp_path / "unlearning-exact-sotu.md").read_text()
    assert "from the published weights" in md and "| retrain (head, cached features) | marginal |" in md
