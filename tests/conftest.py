"""Shared fixtures. Area-specific fixtures live in each tests/<area>/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO / "tests" / "vectors"


@pytest.fixture
def vectors_dir() -> Path:
    return VECTORS


# Real daemons, network namespaces: fixtures any test folder may use.
pytest_plugins = ["tests.harness"]
