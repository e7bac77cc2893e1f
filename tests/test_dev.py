"""Tests for scripts/dev.py: the demo of every example app, and environments reused."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

import dev
from helpers import (
    Scraper,
    WorkerWatcher,
    add,
    free_port,
    outside_bounds,
    promtool_ok,
    scrape,
    traffic_under_failures,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

DEV = str(Path(dev.__file__).resolve())
PORT_ERROR = "dev.py demo: error: argument --port: must be a whole number from 1 to 65535, got "


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


@pytest.mark.parametrize("port", ["0", "65536", "99999999999999999999", "eighty", "80.5"])
def test_demo_refuses_a_port_out_of_range(port: str) -> None:
    """A --port that is not from 1 to 65535 gives argparse's usage and one error line, status 2."""
    result = subprocess.run(
        [sys.executable, DEV, "demo", "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("usage: dev.py demo ")
    assert result.stderr.splitlines()[-1] == f"{PORT_ERROR}{port!r}"
    assert "Traceback" not in result.stderr


def test_test_help_says_that_other_arguments_go_to_nox() -> None:
    """`dev.py test --help` shows how to choose a session and how to pass pytest arguments."""
    result = subprocess.run(
        [sys.executable, DEV, "test", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    text = " ".join(result.stdout.split())
    assert text.startswith("usage: dev.py test [-h] [NOX_ARGUMENT ...]")
    assert "Every other argument goes to nox" in text
    assert "'-s docs' runs one session" in text
    assert "'-s tests -- -k name' runs the tests session with pytest's arguments" in text


@pytest.mark.parametrize(
    "arguments", [[], ["-s", "docs"], ["-s", "tests", "--", "-k", "name", "-x"], ["--list"]]
)
def test_test_passes_every_other_argument_to_nox(
    monkeypatch: pytest.MonkeyPatch, arguments: list[str]
) -> None:
    """What follows `test` reaches nox as it was typed, `--` and pytest's options included."""
    received: list[list[str]] = []
    monkeypatch.setattr(dev, "test", lambda nox_arguments: received.append(list(nox_arguments)))
    monkeypatch.setattr(sys, "argv", ["dev.py", "test", *arguments])
    dev.main()
    assert received == [arguments]


# Prints its first argument after sleeping its second, then exits with its third.
SLEEPER = (
    "import sys, time; time.sleep(float(sys.argv[2])); print(sys.argv[1], flush=True);"
    " time.sleep(2); sys.exit(int(sys.argv[3]))"
)


@pytest.mark.parametrize(
    ("shown", "beside", "status"), [(0, 0, 0), (0, 3, 3), (2, 3, 2), (2, 0, 2)]
)
def test_run_beside_runs_both_at_once_and_shows_the_second_after_the_first(
    capfd: pytest.CaptureFixture[str], shown: int, beside: int, status: int
) -> None:
    """Both commands run at once, the second's output follows the first's, a failure wins."""
    started = time.monotonic()
    result = dev.run_beside(
        [sys.executable, "-c", SLEEPER, "shown", "0.5", str(shown)],
        [sys.executable, "-c", SLEEPER, "beside", "0", str(beside)],
    )
    elapsed = time.monotonic() - started
    printed = capfd.readouterr().out
    assert result == status
    # The second printed first, yet its output comes after the first's.
    assert printed.index("shown\n") < printed.index("beside\n"), printed
    assert elapsed < 4.0, f"{elapsed:.1f} s: one ran after the other, 4.5 s at the least"


def test_port_number_takes_every_port_from_1_to_65535() -> None:
    """The ports at both ends of the range, and the default, are accepted as numbers."""
    assert [dev.port_number(text) for text in ["1", "8000", "65535"]] == [1, 8000, 65535]


def test_a_port_left_in_time_wait_is_free_but_a_listened_one_is_not() -> None:
    """Connections that a stopped server left in TIME_WAIT do not make its port look busy."""
    with socket.socket() as listener:
        # As gunicorn and uvicorn do, which lets them bind despite TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not dev.port_is_free(port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            accepted, _ = listener.accept()
            # The side that closes first keeps the connection in TIME_WAIT: the server's.
            accepted.close()
            assert client.recv(1) == b""
    with socket.socket() as plain, pytest.raises(OSError, match="Address already in use"):
        plain.bind(("127.0.0.1", port))
    assert dev.port_is_free(port)


def is_running(pid: int) -> bool:
    """Return whether the process ``pid`` exists and has not exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # An orphan that exited stays a zombie until init reaps it, which may take a while.
    return stat.rpartition(")")[2].split()[0] != "Z"


def sigterm_ignoring_child(started: str = "") -> subprocess.Popen[bytes]:
    """Start, in a session of its own, a child that ignores SIGTERM, then runs ``started``."""
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"{started}\n"
        "print('ignoring', flush=True)\n"
        "time.sleep(60)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )


def test_stop_kills_the_whole_group_of_a_child_that_ignores_sigterm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child that outlasts its SIGTERM is killed, and so is the worker it started."""
    monkeypatch.setattr(dev, "STOP_SECONDS", 0.5)
    sleeper = "[sys.executable, '-c', 'import time; time.sleep(60)']"
    started = f"print(subprocess.Popen({sleeper}).pid, flush=True)"
    with sigterm_ignoring_child(started) as child:
        assert child.stdout is not None
        worker = int(child.stdout.readline())
        assert child.stdout.readline() == b"ignoring\n"
        dev.stop(child)
        assert child.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while is_running(worker):
        assert time.monotonic() < deadline, f"the worker {worker} outlived its killed parent"
        time.sleep(0.05)


def test_stop_kills_the_group_when_interrupted_while_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SIGTERM or SIGHUP while stop() waits kills the child's group, then goes on."""
    with sigterm_ignoring_child() as child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ignoring\n"
        wait = child.wait

        def hung_up(**_: object) -> int:
            monkeypatch.setattr(child, "wait", wait)
            raise SystemExit(128 + signal.SIGHUP)

        monkeypatch.setattr(child, "wait", hung_up)
        with pytest.raises(SystemExit) as raised:
            dev.stop(child)
        assert raised.value.code == 128 + signal.SIGHUP
        assert child.returncode == -signal.SIGKILL


@contextlib.contextmanager
def running_demo(
    app: str, port: int, log: Path, *options: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run the demo of ``app`` as a terminal runs a foreground job: in a group of its own.

    It is stopped at the end of the block if it still runs, with a SIGTERM, so that it
    stops the processes that it started in sessions of their own.
    """
    command = [sys.executable, "-u", DEV, "demo", "--app", app, "--port", str(port), *options]
    with log.open("wb") as output:
        demo = subprocess.Popen(command, stdout=output, stderr=output, start_new_session=True)
    try:
        yield demo
    finally:
        if demo.poll() is None:
            demo.terminate()
            try:
                # dev.py gives the traffic and then the app STOP_SECONDS each.
                demo.wait(timeout=2 * dev.STOP_SECONDS + 30)
            except subprocess.TimeoutExpired:
                # Its app and traffic lead sessions of their own, which a kill of its
                # group would leave running.
                for group in [demo.pid, *children_of(demo.pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(group, signal.SIGKILL)
                demo.wait()


def children_of(pid: int) -> list[int]:
    """Return the pids of the processes whose parent is ``pid``."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(FileNotFoundError):  # exited while we looked
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def wait_for_line(log: Path, prefix: str, demo: subprocess.Popen[bytes]) -> list[str]:
    """Return the demo's printed lines once one starts with ``prefix``."""
    # The first demo of a fresh clone installs .venv-demo before it serves; the deadline
    # comes before pytest-timeout's, so that a failure shows what the demo printed.
    deadline = time.monotonic() + 480
    while True:
        lines = log.read_text().splitlines()
        if any(line.startswith(prefix) for line in lines):
            return lines
        assert demo.poll() is None, f"the demo exited with status {demo.returncode}: {lines}"
        assert time.monotonic() < deadline, f"the demo printed no {prefix!r}: {lines}"
        time.sleep(0.2)


@pytest.mark.once
@pytest.mark.parametrize("app", dev.APPS)
def test_demo_serves_the_app_with_traffic_and_a_prometheus_config_for_its_port(
    app: str, tmp_path: Path, promtool: str
) -> None:
    """Each app serves on the chosen port, its counters move, and Prometheus would scrape it."""
    if not (dev.ROOT / dev.APPS[app].needs).is_dir():
        pytest.skip(f"{dev.APPS[app].needs}/ is not in this checkout")
    port, log = free_port(), tmp_path / "demo.log"
    url = f"http://127.0.0.1:{port}{dev.APPS[app].metrics_path}"
    with running_demo(app, port, log) as demo:
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


@pytest.mark.once
def test_a_scenario_plays_its_incident_under_the_tuned_rules(tmp_path: Path) -> None:
    """--scenario says what it plays, loads rules whose alert waits 1m, and plays it."""
    name, (description, alert) = "revenue-stalled", dev.scenarios()["revenue-stalled"]
    port, log = free_port(), tmp_path / "demo.log"
    url = f"http://127.0.0.1:{port}{dev.APPS[dev.DEFAULT_APP].metrics_path}"
    with running_demo(dev.DEFAULT_APP, port, log, "--scenario", name) as demo:
        lines = wait_for_line(log, f"Scenario {name}: ", demo)
        assert f"Scenario {name}: {description}." in lines
        explanation = lines[lines.index(f"Scenario {name}: {description}.") + 1]
        assert explanation.startswith(f"The rules come from {dev.INCIDENTS_CONFIG}, where {alert}")
        command = next(line for line in lines if line.startswith("Scrape it with Prometheus: "))
        config = json.loads(Path(command.split("--config.file=")[1].split()[0]).read_text())
        (rule_file,) = config["rule_files"]
        (group,) = yaml.safe_load(Path(rule_file).read_text())["groups"]
        assert [rule["for"] for rule in group["rules"] if rule.get("alert") == alert] == ["1m"]
        completed = ("veza_business_orders_total", (("status", "completed"),))
        deadline = time.monotonic() + 30
        while (seen := scrape(url)).get(completed, 0.0) < 5:
            assert time.monotonic() < deadline, "the scenario completed no orders"
            time.sleep(0.2)
        assert not [key for key in seen if key[0] == "veza_business_revenue_cents_total"]
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0


@pytest.mark.once
def test_the_default_demo_says_its_traffic_is_healthy(tmp_path: Path) -> None:
    """Without --scenario, the demo says that no shipped alert fires under its traffic."""
    port, log = free_port(), tmp_path / "demo.log"
    with running_demo(dev.DEFAULT_APP, port, log) as demo:
        lines = wait_for_line(log, "The traffic is healthy", demo)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
    assert "The traffic is healthy: no shipped alert fires under it." in " ".join(lines)


@pytest.mark.slow
def test_the_uvicorn_demo_counts_every_worker_through_its_recycles(tmp_path: Path) -> None:
    """Through the uvicorn demo's recycles, scrapes never go down and count every request."""
    port, log = free_port(), tmp_path / "demo.log"
    base = f"http://127.0.0.1:{port}"
    url = base + dev.APPS["uvicorn"].metrics_path
    with running_demo("uvicorn", port, log, "--no-simulate") as demo:
        wait_for_line(log, "Scrape it with Prometheus: ", demo)
        (master,) = children_of(demo.pid)
        before = scrape(url)
        watcher, scraper = WorkerWatcher(master, seconds=120), Scraper(url, seconds=120)
        watcher.start()
        scraper.start()
        try:
            # 3 workers recycled every 200 requests: each is replaced at least once.
            load = traffic_under_failures(base, 1_000, 90, ping=False, concurrency=4)
        finally:
            scraper.stop()
            watcher.stop()
        after = scrape(url)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
    counted = {series: value - before.get(series, 0.0) for series, value in after.items()}
    counted = {series: value for series, value in counted.items() if value}
    figures = f"{load.requests()} acknowledged, {load.unanswered} unanswered"
    assert len(watcher.seen) >= 6, f"uvicorn recycled too few workers: {watcher.seen}, {figures}"
    assert scraper.decreases == [], f"{scraper.decreases} over {scraper.scrapes} scrapes"
    most = add(load.acknowledged, load.unsure)
    assert outside_bounds(counted, load.acknowledged, most) == [], figures


def test_a_scenario_needs_the_traffic() -> None:
    """--scenario with --no-simulate gives argparse's usage and one error line, status 2."""
    result = subprocess.run(
        [sys.executable, DEV, "demo", "--scenario", "payments-failing", "--no-simulate"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1] == (
        "dev.py demo: error: --scenario plays traffic, which --no-simulate turns off"
    )


@pytest.mark.once
@pytest.mark.parametrize("app", dev.APPS)
def test_ctrl_c_stops_the_demo_quietly_mid_request(app: str, tmp_path: Path) -> None:
    """Ctrl-C, sent to the demo's whole group, stops it with status 0 and no traceback."""
    if not (dev.ROOT / dev.APPS[app].needs).is_dir():
        pytest.skip(f"{dev.APPS[app].needs}/ is not in this checkout")
    port, log = free_port(), tmp_path / "demo.log"
    with running_demo(app, port, log) as demo:
        wait_for_line(log, "Serving ", demo)
        # A request that has begun but not ended holds a worker in the middle of it, where
        # a SIGINT of its own would make gunicorn log the interruption with a traceback.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as request:
            request.sendall(b"GET /metrics HTTP/1.1\r\n")
            time.sleep(0.5)
            os.killpg(demo.pid, signal.SIGINT)
            time.sleep(0.5)
        assert demo.wait(timeout=60) == 0
    printed = log.read_text()
    assert "Traceback" not in printed
    assert "KeyboardInterrupt" not in printed
    assert dev.port_is_free(port)


@pytest.mark.once
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


@pytest.mark.parametrize("page", ["README.md", "CONTRIBUTING.md"])
def test_the_docs_say_where_the_docs_session_writes_the_site(page: str) -> None:
    """The page names the docs session's command and the index.html that sphinx-build writes."""
    noxfile = (dev.ROOT / "noxfile.py").read_text()
    match = re.search(r'"sphinx-build", .*"docs", "([^"]+)"\)', noxfile)
    assert match is not None
    text = " ".join((dev.ROOT / page).read_text().split())
    assert "`python3 scripts/dev.py test -s docs`" in text
    assert f"`{match[1]}/index.html`" in text


def test_the_example_prometheus_config_scrapes_the_default_demo(tmp_path: Path) -> None:
    """examples/prometheus.yml scrapes what the demo serves by default, with the shipped rules."""
    example = dev.ROOT / "examples" / "prometheus.yml"
    config = yaml.safe_load(example.read_text())
    app = dev.APPS[dev.DEFAULT_APP]
    printed = dev.prometheus_config(tmp_path, tmp_path / "rules.yml", app, dev.DEFAULT_PORT)
    assert config["scrape_configs"] == json.loads(printed.read_text())["scrape_configs"]
    (rules,) = config["rule_files"]
    assert (example.parent / rules).resolve() == dev.ROOT / "src/veza_business_metrics/rules.yml"
