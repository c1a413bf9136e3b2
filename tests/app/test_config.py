"""Settings refuse default secrets in production."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.core.config import Settings


def test_production_refuses_default_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LETHE_SUBJECT_KEY_SECRET", raising=False)
    monkeypatch.delenv("LETHE_CALLBACK_HMAC_SECRET", raising=False)
    with pytest.raises(ValidationError, match="LETHE_SUBJECT_KEY_SECRET"):
        Settings(env="production", callback_hmac_secret="x")
    with pytest.raises(ValidationError, match="LETHE_CALLBACK_HMAC_SECRET"):
        Settings(env="production", subject_key_secret="x")
    assert Settings(env="production", subject_key_secret="x", callback_hmac_secret="y").env == "production"


def test_production_refuses_keeping_tainted_versions() -> None:
    with pytest.raises(ValidationError, match="LETHE_KEEP_TAINTED_VERSIONS"):
        Settings(env="production", subject_key_secret="x", callback_hmac_secret="y", keep_tainted_versions=1)
    assert Settings(env="test", keep_tainted_versions=1).keep_tainted_versions == 1


@pytest.mark.parametrize("test_only", [{"test_hook_dir": "/tmp/hooks"}, {"deadline_override_s": 30}])
def test_production_refuses_the_test_hook_and_a_short_deadline(test_only: dict) -> None:
    with pytest.raises(ValidationError, match="for tests"):
        Settings(env="production", subject_key_secret="x", callback_hmac_secret="y", **test_only)
    assert Settings(env="test", **test_only)
