"""The Fides policy webhook's answer (ethyca/fides, policy webhooks)."""

from __future__ import annotations

from app.api.schemas._base import Out, absent


class FidesAnswer(Out):
    """What a Fides policy webhook expects: ``{}`` for a post-execution call, else ``halt``."""

    halt: bool = absent("True: Fides halts the privacy request until Lethe resumes it (two_way, not yet done).")
