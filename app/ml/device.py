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


def set_cpu_threads(n: int = 1) -> None:
    """Cap torch's intra-op CPU threads for this process.

    The demo models are tiny: with other processes on the same cores (API, DB, a second
    worker), torch's spinning intra-op threads made toy training ~30x slower (0.5 s -> 16 s
    measured on 2 shared cores); one thread per worker process avoids it.
    """
    torch.set_num_threads(max(1, n))
