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
