"""The public fixtures beside the repository (`../shared`, as CI lays it out; `TEST_SHARED_DIR` names another
place, e.g. for a git worktree): tests read them in place. Where a fixture is missing, the tests that need it fail
in CI (CI=true) and skip elsewhere, saying why; never a collection error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("TEST_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")


def shared_path(*parts: str) -> Path:
    """The fixture's path. Missing: the calling test is skipped, or, called at module level, the whole module."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        why = f"shared fixture {path} is missing (expected ../shared beside the repository, or TEST_SHARED_DIR)"
        if os.environ.get("CI"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why, allow_module_level=True)
    return path
