"""Subject pseudonymisation and API-key hashing.

Subject IDs never leave ingestion in clear: everywhere else Lethe uses
``subject_key = HMAC-SHA256(secret, subject_id)`` (DESIGN.md section 2). API keys are
random tokens stored as SHA-256 digests (high-entropy secrets need no slow hash).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SCOPES = ("erasure:write", "erasure:read", "predict", "audit:read", "admin")
KEY_PREFIX = "lethe_"


def subject_key(secret: str, subject_id: str) -> str:
    return hmac.new(secret.encode(), subject_id.encode(), hashlib.sha256).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
