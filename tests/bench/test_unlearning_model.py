"""``bench/unlearning.py`` on a registered model (``--model``, ``--record-chain``), end to end.

The end-to-end run registers the toy spec as ``toy-bench`` into a temporary SQLite database, as
``lethe models register`` would, and benchmarks its serving version (~20 s on 2 shared cores:
the registration's training, one forget set of one subject, every method and the retrain).
The bundled configurations' own smoke test is ``test_unlearning_smoke.py``; the command line's is
``test_unlearning_cli.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session, select

from app.core.db import create_schema, make_engine
from app.db.models import AuditEvent, Model, ModelVersion, Sample
from app.ml import policy
from app.ml.checkpoint import load_checkpoint
from app.ml.spec import Example
from app.ml.specs import get_spec
from app.ml.train import evaluate
from app.services.models import registration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "unlearning.py"


def _env() -> dict[str, str]:
    """No stack named: --record-chain must write the database directly."""
    return {k: v for k, v in os.environ.items() if k not in ("LETHE_URL", "LETHE_KEY", "LETHE_DATABASE_URL")}


@pytest.mark.slow
def test_model_run_measures_the_served_model_and_records_the_chain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lethe.db'}"
    engine = make_engine(url)
    create_schema(engine)
    artifacts = tmp_path / "artifacts"
    with Session(engine) as session:
        registration.register(session, name="toy-bench", spec="toy", secret="bench-test-secret",
                              artifacts_dir=artifacts, device="cpu")
        session.commit()
        assert session.get(Model, "toy-bench").config.get("chain") is None  # the spec default until recorded
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "toy-bench", "--db-url", url, "--seeds", "1", "--sizes", "1 subject",
         "--n-shadow", "0", "--record-chain", "--out", str(out)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "unlearning.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    recorded = data["recorded_chain"]
    chain = recorded["chain"]
    assert f"chain recorded for toy-bench: {' > '.join(chain)}" in proc.stdout
    assert recorded["previous"] == policy.effective("toy", {})["chain"] and "set_policy" in recorded["via"]

    with Session(engine) as session:
        model = session.get(Model, "toy-bench")
        assert model.config["chain"] == chain
        event = session.exec(select(AuditEvent).where(AuditEvent.type == "policy_updated")).one()
        assert event.actor == "bench" and event.payload["chain"] == chain
        version = session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy-bench")).one()
        samples = session.exec(select(Sample).where(Sample.model_name == "toy-bench")).all()
    # It measured the serving version from the registry's samples, not a model it trained itself.
    info = data["configs"][0]
    assert (info["registered"], info["version"], info["sha256"]) == ("toy-bench", 1, version.sha256)
    assert info["n_train"] == sum(s.split == "train" for s in samples)
    spec = get_spec("toy")
    served, meta, _ = load_checkpoint(version.artifact_path, spec, expected_sha256=version.sha256)
    test = [Example(s.subject_key, s.split, s.features, s.label) for s in samples if s.split == "test"]
    assert rows["original"]["test_acc"] == pytest.approx(evaluate(spec, served, meta, test, device="cpu"))
    # nothing written there but registration's v1
    assert [p.resolve() for p in (artifacts / "toy-bench").iterdir()] == [Path(version.artifact_path).resolve()]

    # The chain: approximate methods that passed and changed the model, cheapest first, then retrain.
    assert chain[-1] == "retrain" and len(chain) <= 3
    approx = chain[:-1]
    for name in approx:
        assert rows[name]["gate_passed"] and rows[name]["param_change"] != 0
    cost = {m: r["seconds"] + r["verify_seconds"] for m, r in rows.items() if r.get("seconds") is not None
            and r.get("verify_seconds") is not None}
    assert [cost[m] for m in approx] == sorted(cost[m] for m in approx)
    passing = [m for m, r in rows.items() if m not in ("original", "auto", "retrain") and r["status"] == "ok"
               and r["gate_passed"] and r["param_change"] != 0]
    assert set(approx) <= set(passing) and (len(approx) == 2 or set(approx) == set(passing))
    assert all(cost[m] >= max(cost[a] for a in approx) for m in passing if m not in approx)
