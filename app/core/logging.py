"""Logging set-up. Logs carry request IDs, never subject IDs (DESIGN.md section 2)."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # httpx logs full URLs, which may carry subject IDs in /v1/subjects/{id}.
    logging.getLogger("httpx").setLevel(logging.WARNING)
