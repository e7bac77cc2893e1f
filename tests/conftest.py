"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings
from prometheus_client import CollectorRegistry

from helpers import Worker, redis_server, require_tool
from veza_business_metrics import BusinessMetrics

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

# The runs on other versions of Python and prometheus-client (noxfile.py) check how the
# package behaves there, not which inputs break it, which the tests session explores
# with Hypothesis's 100 examples a test: they try a tenth of them.
settings.register_profile("versions", max_examples=10)


def _run_python(code: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def registry() -> CollectorRegistry:
    """Give each test an empty registry of its own."""
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> BusinessMetrics:
    """Give each test the business counters on its own registry."""
    return BusinessMetrics(registry)


@pytest.fixture
def promtool() -> str:
    """Give the path of promtool, from Debian's prometheus package."""
    return require_tool("promtool")


@pytest.fixture
def run_python() -> Callable[..., str]:
    """Give a function that runs code in a fresh interpreter and returns its stdout."""
    return _run_python


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """Run Debian's redis-server on 127.0.0.1 for one test, and give its URL."""
    with redis_server(require_tool("redis-server"), tmp_path / "redis") as url:
        yield url


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Give a list to put recording processes in; every one is reaped at the end."""
    started: list[Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.close()
