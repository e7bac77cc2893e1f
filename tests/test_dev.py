"""Tests for scripts/dev.py: the demo of every example app, and environments reused."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dev
from helpers import free_port, promtool_ok, scrape

DEV = str(Path(dev.__file__).resolve())


def test_demo_refuses_a_busy_port_before_claiming_to_serve() -> None:
    """A port that something listens on gives a one-line error and status 1, and no Serving."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, DEV, "demo", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"dev.py: error: port {port} on 127.0.0.1 is already in use; choose another with --port\n"
    )


def wait_for_line(log: Path, prefix: str, demo: subprocess.Popen[bytes]) -> list[str]:
    """Return the demo's printed lines once one starts with ``prefix``."""
    # The first demo of a fresh clone installs .venv-demo before it serves.
    deadline = time.monotonic() + 600
    while True:
        lines = log.read_text().splitlines()
        if any(line.startswith(prefix) for line in lines):
            return lines
        assert demo.poll() is None, f"the demo exited with status {demo.returncode}: {lines}"
        assert time.monotonic() < deadline, f"the demo printed no {prefix!r}: {lines}"
        time.sleep(0.2)


@pytest.mark.parametrize("app", dev.APPS)
def test_demo_serves_the_app_with_traffic_and_a_prometheus_config_for_its_port(
    app: str, tmp_path: Path, promtool: str
) -> None:
    """Each app serves on the chosen port, its counters move, and Prometheus would scrape it."""
    if not (dev.ROOT / dev.APPS[app].needs).is_dir():
        pytest.skip(f"{dev.APPS[app].needs}/ is not in this checkout")
    port, log = free_port(), tmp_path / "demo.log"
    url = f"http://127.0.0.1:{port}{dev.APPS[app].metrics_path}"
    command = [sys.executable, "-u", DEV, "demo", "--app", app, "--port", str(port)]
    with log.open("wb") as output:
        demo = subprocess.Popen(command, stdout=output, stderr=output, start_new_session=True)
    try:
        lines = wait_for_line(log, "Scrape it with Prometheus: ", demo)
        serving = lines.index(f"Serving {url}")
        assert lines[serving + 1] == f"Try: curl -s {url} | grep veza_business"
        prometheus = lines[serving + 2].removeprefix("Scrape it with Prometheus: ").split()
        assert prometheus[0] == "prometheus"
        config_file = Path(prometheus[1].removeprefix("--config.file="))
        (scrape_config,) = json.loads(config_file.read_text())["scrape_configs"]
        assert scrape_config["static_configs"] == [{"targets": [f"127.0.0.1:{port}"]}]
        assert scrape_config["metrics_path"] == dev.APPS[app].metrics_path
        promtool_ok(promtool, "check", "config", str(config_file))
        first = scrape(url)
        deadline = time.monotonic() + 30
        while scrape(url) == first:
            assert time.monotonic() < deadline, "the simulated traffic moved no counter"
            time.sleep(0.2)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
        assert not config_file.exists()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()


def test_bootstrap_installs_only_when_its_inputs_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bootstrapping runs pip the first time and after a change of input, not otherwise."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing to install\n")
    environment = tmp_path / "venv"
    arguments = ("--no-index", "--requirement", str(requirements))

    def pip_ran(*pip_arguments: str) -> bool:
        python = dev.bootstrap(environment, [requirements], *pip_arguments)
        assert python == environment / "bin" / "python"
        return "-m pip install" in capsys.readouterr().out

    assert pip_ran(*arguments)
    assert not pip_ran(*arguments)
    requirements.write_text("# nothing to install, still\n")
    assert pip_ran(*arguments)
    assert not pip_ran(*arguments)
    assert pip_ran(*arguments, "--no-deps")
