"""Tests for tests/helpers.py: a missing tool or shared file skips locally, fails in CI."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from helpers import require_shared_file, require_tool

if TYPE_CHECKING:
    from pathlib import Path

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


def test_a_shared_file_is_found_above_the_checkout(tmp_path: Path) -> None:
    """The shared folder is found beside the checkout or above it, as for a worktree."""
    reference = tmp_path / "shared" / "reference" / "business.go"
    reference.parent.mkdir(parents=True)
    reference.write_text("package monitoring\n")
    checkout = tmp_path / "worktrees" / "fleet"
    checkout.mkdir(parents=True)
    assert require_shared_file("reference/business.go", checkout) == reference


def test_a_missing_shared_file_skips_outside_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without CI=true, a test that needs a file of the shared folder is skipped."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"shared/no-such\.go is not beside"):
        require_shared_file("no-such.go", tmp_path)


def test_a_missing_shared_file_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With CI=true, a missing file of the shared folder fails the test instead."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI provides the shared folder"):
        require_shared_file("no-such.go", tmp_path)
