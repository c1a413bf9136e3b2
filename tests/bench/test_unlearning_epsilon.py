"""Epsilon mode of the unlearning benchmark (``--epsilon N``): person-level forget sets, the floor,
the per-method table and the gate's false-pass rate, on the toy spec at N = 3 (a few seconds)."""

from __future__ import annotations

import csv
import json

import pytest

from bench.unlearning_parts.cli import main
from bench.unlearning_parts.epsilon import person_set
from bench.unlearning_parts.epsilon_summary import false_pass


def test_person_sets(toy, toy_examples):
    train = [e for e in toy_examples if e.split == "train"]
    counts = {s: sum(e.subject_id == s for e in train) for s in {e.subject_id for e in train}}
    heavy = person_set(toy, toy_examples, "1 heavy user")
    assert len(heavy.subjects) == 1 and counts[heavy.subjects[0]] == max(counts.values())
    ten = person_set(toy, toy_examples, "10 random users")
    assert len(ten.subjects) == 10 and {e.subject_id for e in ten.forget} == set(ten.subjects)
    assert not {e.subject_id for e in ten.retain} & set(ten.subjects)
    assert person_set(toy, toy_examples, "10 random users").subjects == ten.subjects  # fixed draw
    with pytest.raises(ValueError):
        person_set(toy, toy_examples, "2 users")


def test_false_pass_counts_passed_candidates_of_methods_below_half_the_floor():
    rows = [{"method": "finetune", "F": 0.04, "floor": 0.1, "gate_passed": 3, "quick_passed": 5, "gate_runs": 8},
            {"method": "ssd", "F": 0.08, "floor": 0.1, "gate_passed": 5, "quick_passed": 5, "gate_runs": 8},
            {"method": "auto", "F": 0.0, "floor": 0.1, "gate_passed": 8, "quick_passed": None, "gate_runs": 8}]
    assert false_pass(rows) == {"passed": 8, "false_pass": 3, "rate": 3 / 8}
    assert false_pass(rows, "quick_passed")["rate"] == 0.5


def test_epsilon_mode_end_to_end(tmp_path):
    out = tmp_path / "eps"
    assert main(["--epsilon", "3", "--configs", "toy", "--epsilon-sets", "10 random users", "--methods", "finetune",
                 "--out", str(out)]) == 0
    files = {p.name for p in out.iterdir()}
    assert {f"unlearning-epsilon-toy.{ext}" for ext in ("md", "csv", "json", "png")} <= files
    rows = list(csv.DictReader((out / "unlearning-epsilon-toy.csv").open()))
    by = {r["method"]: r for r in rows}
    assert set(by) == {"retrain (2nd set: floor)", "finetune", "auto"}
    floor = float(by["finetune"]["floor"])
    assert float(by["retrain (2nd set: floor)"]["share_of_floor"]) == pytest.approx(1.0) and floor > 0
    assert int(by["finetune"]["gate_runs"]) == 3 and int(by["auto"]["n_models"]) == 3
    data = json.loads((out / "unlearning-epsilon-toy.json").read_text())
    assert data["info"]["floor_B"] == 1 and "false_pass" in data and "false_pass_quick_only" in data
    assert "Gate false-pass rate" in (out / "unlearning-epsilon-toy.md").read_text()


def test_jobs_runs_the_same_measurements_in_forked_workers(tmp_path):
    """--jobs 2 forks workers for the runs; every seeded run (retrains, the floor, each method) must
    give the numbers the serial run gives (auto is left out: its time budget makes it timing-dependent)."""
    rows = {}
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}"
        assert main(["--epsilon", "3", "--configs", "toy", "--epsilon-sets", "10 random users", "--methods",
                     "finetune", "--jobs", str(jobs), "--out", str(out)]) == 0
        rows[jobs] = {r["method"]: r for r in csv.DictReader((out / "unlearning-epsilon-toy.csv").open())}
        assert json.loads((out / "unlearning-epsilon-toy.json").read_text())["info"]["jobs"] == jobs
    for method in ("retrain (2nd set: floor)", "finetune"):
        for col in ("F", "floor", "retain_acc", "test_acc", "gate_passed"):
            assert rows[1][method][col] == rows[2][method][col], (method, col)
    assert int(rows[2]["auto"]["n_models"]) == 3
