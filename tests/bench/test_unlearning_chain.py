"""The chain ``--record-chain`` writes: the rule on measured rows, and the API path that sets it."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from app.cli.models import ApiError
from app.db.models import Model
from bench.unlearning_parts.registered import record_chain
from bench.unlearning_parts.summary import passing_chain


def _row(method: str, seed: int, *, passed: bool = True, seconds: float = 1.0, change: float = 0.1,
         label: str = "1 subject", status: str = "ok", config: str = "model:m") -> dict:
    return {"config": config, "forget_set": label, "seed": seed, "method": method, "status": status,
            "gate_passed": passed, "seconds": seconds, "verify_seconds": 0.5, "param_change": change}


def test_passing_chain_keeps_methods_that_passed_every_run_cheapest_first() -> None:
    rows = [
        *[_row("retrain", s, seconds=30) for s in (0, 1)],
        *[_row("scrub", s, seconds=3) for s in (0, 1)],
        *[_row("finetune", s, seconds=2) for s in (0, 1)],
        _row("salun", 0, seconds=0.5), _row("salun", 1, seconds=0.5, passed=False),  # failed one run
        *[_row("ssd", s, seconds=0.1, change=0.0) for s in (0, 1)],  # passed by leaving the model unchanged
        *[_row("neggrad_plus", s, seconds=5) for s in (0, 1)],  # passes, but a third approximate method
        _row("amnesiac", 0, status="skipped"), _row("amnesiac", 1, status="skipped"),
        _row("finetune", 0, seconds=0.01, config="other"),  # another configuration's rows do not count
        _row("original", 0), _row("auto", 0, seconds=2),
    ]
    assert passing_chain(rows, "model:m") == ["finetune", "scrub", "retrain"]
    assert passing_chain(rows, "model:m", last="sisa") == ["finetune", "scrub", "sisa"]
    failing = [_row("retrain", 0), _row("finetune", 0, passed=False), _row("scrub", 0, status="error")]
    assert passing_chain(failing, "model:m") == ["retrain"]


@pytest.fixture
def backend() -> str:  # the policy route on the embedded default database is enough here
    return "sqlite"


def test_record_chain_through_the_api_sets_the_models_policy(session: Session, client, admin_headers,  # noqa: ANN001
                                                             toy_model) -> None:  # noqa: ANN001
    from app.ml import policy

    client.headers.update(admin_headers)
    before, via = record_chain(name="toy", chain=["finetune", "retrain"], db_url="sqlite://", http=client)
    assert before == policy.effective("toy", {})["chain"] and via.startswith("via PUT ")
    session.expire_all()
    assert session.get(Model, "toy").config["chain"] == ["finetune", "retrain"]
    with pytest.raises(ApiError) as refused:  # the API validates: a chain ends with an exact method
        record_chain(name="toy", chain=["finetune"], db_url="sqlite://", http=client)
    assert refused.value.status == 422
    session.expire_all()
    assert session.get(Model, "toy").config["chain"] == ["finetune", "retrain"]
