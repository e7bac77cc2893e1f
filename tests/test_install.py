"""The install commands of the documentation, run as written in fresh virtual environments.

Each command runs with bash in a scratch directory that holds the clone as
``veza-business-metrics``, as the pages have it, with the new environment first on PATH.
pip fetches the build backend and the dependencies from PyPI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from helpers import (
    EXAMPLES,
    REVENUE,
    ROOT,
    console_blocks,
    free_port,
    key,
    running,
    scrape,
)

if TYPE_CHECKING:
    from pathlib import Path

# The install commands carry this in the reason of their skip comment.
RUN_HERE = "tests/test_install.py runs these commands"
# The directory name of the clone in the pages' commands.
CLONE = "veza-business-metrics"
pytestmark = pytest.mark.once


def fresh_environment(directory: Path) -> tuple[Path, dict[str, str]]:
    """Create a virtual environment and a workspace holding the clone; return both."""
    environment = directory / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(environment)], check=True, timeout=120)
    workspace = directory / "workspace"
    workspace.mkdir()
    (workspace / CLONE).symlink_to(ROOT)
    path = os.pathsep.join([str(environment / "bin"), os.environ.get("PATH", "")])
    # Without PROMETHEUS_MULTIPROC_DIR and the test environment's own variables.
    env = {"PATH": path, "HOME": os.environ.get("HOME", str(directory)), "PIP_NO_INPUT": "1"}
    return workspace, env


def run_commands(commands: list[str], workspace: Path, env: dict[str, str]) -> None:
    """Run each command with bash in ``workspace``; each must succeed."""
    for command in commands:
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", command],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"$ {command}\n{result.stdout}{result.stderr}"


def installed(workspace: Path, env: dict[str, str], code: str) -> str:
    """Run ``code`` with the fresh environment's python; return what it printed."""
    result = subprocess.run(
        ["python", "-c", code],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("page", "block"),
    [
        ("README.md", 0),
        ("README.md", 1),
        ("docs/getting-started.md", 0),
        ("docs/getting-started.md", 1),
    ],
)
def test_the_install_commands_install_the_clone(page: str, block: int, tmp_path: Path) -> None:
    """Each install block of the page gives a working, non-editable install of this version."""
    commands = console_blocks(ROOT / page, RUN_HERE)[block]
    assert "pip install veza-business-metrics" not in " ".join(commands)
    workspace, env = fresh_environment(tmp_path)
    run_commands(commands, workspace, env)
    printed = installed(
        workspace,
        env,
        "import json, importlib.metadata as m, veza_business_metrics as v;"
        "d = m.distribution('veza-business-metrics');"
        "print(json.dumps([v.__version__, d.version, d.read_text('direct_url.json')]))",
    )
    module_version, version, direct_url = json.loads(printed)
    assert module_version == version == pyproject_version()
    assert not json.loads(direct_url or "{}").get("dir_info", {}).get("editable", False)


def pyproject_version() -> str:
    """Return the version that pyproject.toml declares."""
    import tomllib  # noqa: PLC0415

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def test_the_celery_page_installs_what_a_redis_worker_needs(
    tmp_path: Path, redis_url: str
) -> None:
    """What the Celery page installs runs the example's worker on Redis, which counts a task."""
    (commands,) = console_blocks(ROOT / "docs" / "hosts" / "celery.md", RUN_HERE)
    assert "'celery[redis]'" in " ".join(commands)
    workspace, env = fresh_environment(tmp_path)
    run_commands(commands, workspace, env)
    port = free_port()
    worker_env = {
        **env,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "SHOP_REDIS_URL": redis_url,
        "SHOP_METRICS_PORT": str(port),
    }
    (tmp_path / "metrics").mkdir()
    celery = str(tmp_path / "venv" / "bin" / "celery")
    worker = [celery, "-A", "tasks", "worker", "--pool", "prefork", "--concurrency", "1"]
    worker += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    log = tmp_path / "worker.log"
    with running(worker, EXAMPLES / "celery", log, worker_env) as process:
        enqueued = subprocess.run(
            [str(tmp_path / "venv" / "bin" / "python"), "enqueue.py", "1"],
            cwd=EXAMPLES / "celery",
            env={**env, "SHOP_REDIS_URL": redis_url},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert enqueued.returncode == 0, enqueued.stderr
        deadline = time.monotonic() + 120
        eur = key(REVENUE, "currency", "EUR")
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if scrape(f"http://127.0.0.1:{port}/metrics").get(eur) == 100.0:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
def test_the_page_says_nothing_is_released_before_any_install_command(page: str) -> None:
    """Where a user looks first, the page says PyPI has no release before it shows a pip line."""
    text = (ROOT / page).read_text()
    first_command = text.index("\n$ ")
    assert "Nothing is released on PyPI yet" in " ".join(text[:first_command].split())
    assert "pip install veza-business-metrics" not in text.replace(
        "`pip install veza-business-metrics` finds no such", ""
    )
