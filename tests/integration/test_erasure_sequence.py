"""Ten real MovieLens users erased one after another over HTTP, on the running stack.

What a data-protection tool sees across a sequence of erasures (DESIGN.md section 8: every
acknowledged erasure ends ``completed``): each request completes; afterwards the served model
scores every erased user exactly like a user id it never saw (the MovieLens spec routes unknown
users to the all-zero row 0, ``app/ml/specs/movielens.py``) and answers with the new version;
resubmitting an erasure replays it with the original Idempotency-Key and, without one, returns a
new request that is ``completed`` at once with ``already_erased_by`` naming the first (README,
Guarantees: ``no_data`` is kept for subjects no model ever held) and changes no model — never a
5xx; a completed erasure cannot be retried (409); and the audit chain still verifies.

The users are the heaviest raters among the trained (non-holdout) users, so each erasure removes
a large forget set: the case where approximate methods are likeliest to fail the gate and escalate.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.integration.conftest import Stack, start_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_USERS = 10
TERMINAL = ("completed", "failed", "no_data", "cancelled", "rejected")
NEVER_SEEN_USER = 10**6  # MovieLens user ids run 1..671
MOVIES_PER_USER = 5


@functools.cache
def heavy_users() -> tuple[list[str], dict[str, list[int]]]:
    """The ``N_USERS`` trained users with most training ratings, and a few movies each rated."""
    from app.ml.specs import get_spec

    train = [e for e in get_spec("movielens").load_examples() if e.split == "train"]
    counts = Counter(e.subject_id for e in train)
    users = [sid for sid, _ in counts.most_common(N_USERS)]
    movies: dict[str, list[int]] = {u: [] for u in users}
    for e in train:
        if e.subject_id in movies and len(movies[e.subject_id]) < MOVIES_PER_USER:
            movies[e.subject_id].append(int(e.features["movie_id"]))
    return users, movies


@pytest.fixture(params=["sqlite", "postgresql"])
def movielens_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    # Redis DB indices 7/8: no other integration test uses them.
    stack, cleanup = start_stack(tmp_path, request.param, redis_db=7 if request.param == "sqlite" else 8,
                                 extra_env={"LETHE_DEMO_MODELS": "movielens", "LETHE_BATCH_WINDOW_S": "0.2"})
    try:
        yield stack
    finally:
        cleanup()


def job_attempts(stack: Stack, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The methods a request's job tried, from its result or (a failed request has none) its job row."""
    model = ((body.get("result") or {}).get("models") or {}).get("movielens") or {}
    if model.get("attempts"):
        return model["attempts"]
    job_ids = [m["job_id"] for m in body.get("models") or [] if m.get("job_id")]
    if not job_ids:
        return []
    engine = sa.create_engine(stack.db_url)
    try:
        with engine.connect() as conn:
            raw = conn.execute(sa.text("SELECT attempts FROM unlearningjob WHERE id = :id"), {"id": job_ids[0]}).scalar()
    finally:
        engine.dispose()
    return (json.loads(raw) if isinstance(raw, str) else raw) or []


def describe(stack: Stack, body: dict[str, Any]) -> str:
    """One line per request for failure messages: status, error, methods tried and their failing gates."""
    tried = []
    for attempt in job_attempts(stack, body):
        gates = (attempt.get("report") or {}).get("gates") or {}
        failing = [f"{name}: {g.get('reason')}" for name, g in gates.items() if not g.get("passed")]
        tried.append(f"{attempt.get('method')}={'pass' if attempt.get('passed') else 'FAIL ' + '; '.join(failing)}")
    return f"{body.get('id')} {body.get('status')} error={body.get('error')!r} attempts=[{', '.join(tried)}]"


def p_like(prediction: dict[str, Any]) -> float:
    return prediction["probability"] if prediction["label"] == 1 else 1.0 - prediction["probability"]


def test_sequence_of_ten_real_users_each_completes_and_is_forgotten(movielens_stack: Stack) -> None:
    stack = movielens_stack
    users, movies = heavy_users()
    with stack.client() as c:
        first_version = c.post("/v1/models/movielens/predict",
                               json={"inputs": [{"user_id": int(users[0]), "movie_id": movies[users[0]][0]}]}
                               ).json()["model_version"]

        # One after another: each request is waited to its end before the next is sent.
        done: dict[str, dict[str, Any]] = {}
        for user in users:
            created = c.post("/v1/erasure-requests", json={"subject_id": user, "reason": "Art. 17"},
                             headers={"Idempotency-Key": f"seq-{user}"})
            assert created.status_code == 202, created.text
            done[user] = stack.wait_status(created.json()["id"], TERMINAL, timeout=120)
        for user, body in done.items():
            print(f"user {user}: {describe(stack, body)}")
        not_completed = [describe(stack, b) for b in done.values() if b["status"] != "completed"]
        assert not not_completed, "erasures that did not complete:\n" + "\n".join(not_completed)

        versions = [b["result"]["models"]["movielens"]["version_after"] for b in done.values()]
        assert versions == sorted(set(versions)) and versions[0] > first_version, versions
        assert all(b["result"]["time_to_forget_s"] > 0 for b in done.values())

        # Every erased user is now scored exactly like a user the model never saw, by the newest version.
        inputs = [{"user_id": uid, "movie_id": m} for u in users for m in movies[u]
                  for uid in (int(u), NEVER_SEEN_USER)]
        answer = c.post("/v1/models/movielens/predict", json={"inputs": inputs})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model_version"] == versions[-1] == int(answer.headers["x-model-version"])
        assert c.get("/v1/models/movielens").json()["serving_version"] == versions[-1]
        preds = body["predictions"]
        for i in range(0, len(inputs), 2):
            erased, unseen = p_like(preds[i]), p_like(preds[i + 1])
            assert abs(erased - unseen) <= 1e-6, (inputs[i], erased, unseen)
        for user in users:
            held = c.get(f"/v1/subjects/{user}").json()
            assert held["samples"] == held["pending_erasure"] == {} and held["held_by"] == [], held
            assert held["suppressed"] is True, held

        # Resubmitting with the original Idempotency-Key replays the same request.
        for user in users[:3]:
            again = c.post("/v1/erasure-requests", json={"subject_id": user, "reason": "Art. 17"},
                           headers={"Idempotency-Key": f"seq-{user}"})
            assert again.status_code == 202, again.text
            assert again.json()["id"] == done[user]["id"] and again.headers.get("idempotent-replayed") == "true"
            assert again.json()["status"] == "completed"
        # Without it, a new request, completed at once by the earlier erasure: no model holds the user.
        for user in users[3:6]:
            again = c.post("/v1/erasure-requests", json={"subject_id": user, "reason": "asked again"})
            assert again.status_code == 202, again.text
            assert again.json()["id"] != done[user]["id"]
            final = stack.wait_status(again.json()["id"], TERMINAL, timeout=60)
            assert final["status"] == "completed", describe(stack, final)
            assert final["result"]["already_erased_by"] == done[user]["id"], final["result"]
        retried = c.post(f"/v1/erasure-requests/{done[users[0]]['id']}/retry")
        assert retried.status_code == 409, retried.text

        # The version did not move for the resubmissions, and the audit chain verifies.
        assert c.get("/v1/models/movielens").json()["serving_version"] == versions[-1]
        report = c.get("/v1/audit/verify").json()
        assert report["ok"] is True, json.dumps(report)[:2000]

