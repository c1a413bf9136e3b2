"""Device choice (DESIGN.md section 3: CUDA when available, else CPU), made explicitly once."""

from __future__ import annotations

import torch


def pick_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA if available, else CPU; ``cpu`` / ``cuda`` (or ``cuda:N``) explicitly."""
    pref = preference.strip().lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref == "cpu":
        return torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        return torch.device(pref)
    raise ValueError(f"unknown device preference {preference!r}; use auto, cpu or cuda")
