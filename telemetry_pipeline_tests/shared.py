"""The public fixtures beside the repository (`../shared`, as CI lays it out): tests read them in place."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"shared fixture {path} is missing (expected ../shared beside the repository)")
    return path
