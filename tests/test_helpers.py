"""Tests for tests/helpers.py: a missing tool skips locally and fails in CI."""

from __future__ import annotations

import pytest

from helpers import require_tool

MISSING = "veza-no-such-tool"


def test_missing_tool_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CI=true, a test that needs a missing tool is skipped."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=MISSING):
        require_tool(MISSING)


def test_missing_tool_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CI=true, a test that needs a missing tool fails instead of skipping."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"{MISSING} is not on PATH"):
        require_tool(MISSING)


def test_present_tool_is_found() -> None:
    """A tool on PATH, or beside this interpreter, is returned by its full path."""
    assert require_tool("python").endswith("/python")
