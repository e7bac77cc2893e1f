"""Helpers for tests that drive real tools and servers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from prometheus_client.registry import Collector

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]
Series = dict[Key, float]

# The contract, written out here independently of the library's own declaration.
LOGINS = "veza_business_logins_total"
ORDERS = "veza_business_orders_total"
REVENUE = "veza_business_revenue_cents_total"
DELETIONS = "veza_business_account_deletions_total"
OUTCOMES = (
    "success",
    "failure_credentials",
    "failure_unverified",
    "failure_locked",
    "failure_2fa",
    "failure_other",
)
STATUSES = ("created", "completed", "refunded", "failed")


def key(name: str, label: str = "", value: str = "") -> Key:
    """Return the key of one series as ``business_series`` reports it."""
    return (name, ((label, value),) if label else ())


# The 11 series that every process exports at 0 from import.
ZERO: Series = {
    **{key(LOGINS, "outcome", outcome): 0.0 for outcome in OUTCOMES},
    **{key(ORDERS, "status", status): 0.0 for status in STATUSES},
    key(DELETIONS): 0.0,
}


def business_series(source: str | Collector) -> Series:
    """Return every veza_business_*_total sample of an exposition text or a collector."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    families = (
        text_string_to_metric_families(source) if isinstance(source, str) else source.collect()
    )
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
        if sample.name.startswith("veza_business_") and sample.name.endswith("_total")
    }


def require_tool(name: str) -> str:
    """Return the path of the executable ``name``; skip without it, but fail in CI.

    Raises:
        pytest.fail.Exception: If it is missing and ``CI=true``, since CI installs it.
        pytest.skip.Exception: If it is missing on a developer's machine.
    """
    # Tools installed with pip live beside this interpreter, which may not be on PATH.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which(name, path=search)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not on PATH, but CI=true and .ci/run installs it")
        pytest.skip(f"{name} is not installed")
    return path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http(method: str, url: str, body: object = None) -> tuple[int, Any]:
    """Send one request with an optional JSON body; return the status and decoded JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
        error.close()
    return status, json.loads(raw) if raw else None


def scrape(url: str) -> Series:
    """Return every veza_business_*_total sample served at ``url``."""
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
        return business_series(response.read().decode())


@contextlib.contextmanager
def serving(
    command: Sequence[str],
    ready_url: str,
    cwd: Path,
    log: Path,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server, writing its output to ``log``, until the block ends; always stop it.

    The block starts once ``ready_url`` answers; the test fails if it never does.
    """
    with (
        log.open("wb") as output,
        subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=output, stderr=output
        ) as process,
    ):
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(ready_url, timeout=5):  # noqa: S310
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"{command[0]} did not serve {ready_url}:\n{log.read_text()}")
                    time.sleep(0.1)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def promtool_ok(promtool: str, *arguments: str, cwd: Path | None = None) -> str:
    """Run promtool with ``arguments``, require success and return what it printed."""
    result = subprocess.run(
        [promtool, *arguments], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
