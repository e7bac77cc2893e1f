"""Run the test suite, or serve an example shop, from a fresh clone.

Usage, from the repository root with only python3 (3.11+) on PATH::

    python3 scripts/dev.py test   # every session of noxfile.py, installed into .venv-nox
    python3 scripts/dev.py demo   # an example shop with made-up traffic on 127.0.0.1:8000

``test`` passes what follows it to nox (``test -s docs``); ``demo`` takes ``--app``,
``--port``, ``--scenario`` and ``--no-simulate``, and serves until Ctrl-C, which stops
the app and exits with status 0 (a SIGTERM exits with 143, a SIGHUP with 129). Each
virtual environment is reinstalled only when the requirement files or pyproject.toml
changed since it was last installed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
STARTUP_SECONDS = 60
# How long the app and the traffic may take to stop after a SIGTERM before they are killed.
STOP_SECONDS = 30
HIGHEST_PORT = 65535
DEFAULT_APP, DEFAULT_PORT = "fastapi", 8000


@dataclasses.dataclass(frozen=True)
class App:
    """How the demo serves one example app: ``{bin}`` and ``{port}`` are filled in."""

    command: tuple[str, ...]
    metrics_path: str = "/metrics"
    needs: str = "examples"
    multiprocess: bool = False


GUNICORN = ("{bin}/gunicorn", "--no-control-socket", "--bind", "127.0.0.1:{port}")
APPS = {
    # A FastAPI mount answers /metrics with a redirect to /metrics/.
    "fastapi": App(("{bin}/python", "examples/fastapi_app.py", "--port", "{port}"), "/metrics/"),
    "flask": App((*GUNICORN, "--chdir", "examples", "flask_app:app")),
    "gunicorn": App(
        (*GUNICORN, "--config", "examples/gunicorn/gunicorn.conf.py", "app:app"),
        multiprocess=True,
    ),
    # FastAPI's usual production set-up: workers that uvicorn recycles every 200 or so
    # requests, whose counts the app's /metrics/ keeps through every recycle.
    "uvicorn": App(
        (
            *("{bin}/uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--workers", "3"),
            *("--limit-max-requests", "200", "--app-dir", "examples", "fastapi_app:app"),
        ),
        "/metrics/",
        multiprocess=True,
    ),
    "django": App(
        (*GUNICORN, "--chdir", "examples/django_app", "project.wsgi:application"),
        needs="examples/django_app",
    ),
}


# The rules of a demo that plays an incident: the alerts that the scenarios fire wait
# 1 minute rather than 10 or 15 before they fire.
INCIDENTS_CONFIG = "examples/incidents.toml"


def scenarios() -> dict[str, tuple[str, str]]:
    """Return the description and the alert of each scenario of the simulator, by name."""
    name = "_dev_simulate"
    simulate = sys.modules.get(name)
    if simulate is None:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "simulate.py")
        if spec is None or spec.loader is None:
            fail("examples/simulate.py is not in this checkout")
        simulate = importlib.util.module_from_spec(spec)
        # Its dataclasses look their module up there while they are created.
        sys.modules[name] = simulate
        spec.loader.exec_module(simulate)
    return {
        name: (scenario.description, scenario.alert)
        for name, scenario in simulate.SCENARIOS.items()
    }


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with status 1."""
    print(f"dev.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def run(*command: str) -> None:
    """Run ``command`` in the repository root, echoing it; exit with its status on failure."""
    print("+", " ".join(command), flush=True)
    completed = subprocess.run(command, cwd=ROOT, check=False)
    if completed.returncode:
        sys.exit(completed.returncode)


def bootstrap(env_dir: Path, inputs: Sequence[Path], *pip_arguments: str) -> Path:
    """Create the virtual environment ``env_dir`` if needed, install into it, return python.

    pip runs only when the arguments or the files in ``inputs`` changed since the last
    successful install, which a stamp file in the environment records.
    """
    python = env_dir / "bin" / "python"
    if not python.exists():
        run(sys.executable, "-m", "venv", str(env_dir))
    digest = hashlib.sha256("\0".join(pip_arguments).encode())
    for path in inputs:
        digest.update(path.read_bytes())
    stamp = env_dir / "installed.sha256"
    if not stamp.is_file() or stamp.read_text() != digest.hexdigest():
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        run(*pip, *pip_arguments)
        stamp.write_text(digest.hexdigest())
    return python


def test(nox_arguments: Sequence[str]) -> None:
    """Run the sessions of noxfile.py: all of them unless ``nox_arguments`` choose.

    All of them run in two nox processes side by side: the tests session, which spends
    most of its time waiting on servers under load and on the 5-minute soak rather than
    on the CPU, and every other session.
    """
    requirements = REQUIREMENTS / "nox.txt"
    python = bootstrap(ROOT / ".venv-nox", [requirements], "--requirement", str(requirements))
    nox = [str(python), "-m", "nox", "--noxfile", str(ROOT / "noxfile.py")]
    if nox_arguments:
        run(*nox, *nox_arguments)
        return
    status = run_beside([*nox, "-s", "tests"], [*nox, "-k", "not tests"])
    if status:
        sys.exit(status)


def run_beside(shown: Sequence[str], beside: Sequence[str]) -> int:
    """Run ``shown`` and, at the same time, ``beside``; return the first failing status.

    ``shown`` prints as it runs; what ``beside`` prints is kept and follows once both
    have ended, so that the two never interleave.
    """
    print("+", " ".join(shown), flush=True)
    print("+", " ".join(beside), "(at the same time; its output follows)", flush=True)
    with tempfile.TemporaryFile() as log:
        with subprocess.Popen(beside, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT) as other:
            try:
                first = subprocess.run(shown, cwd=ROOT, check=False).returncode
            finally:
                second = other.wait()
        log.seek(0)
        sys.stdout.flush()
        shutil.copyfileobj(log, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    return first or second


def port_number(text: str) -> int:
    """Return the TCP port that the ``--port`` argument ``text`` names.

    Raises:
        argparse.ArgumentTypeError: If it is not a whole number from 1 to 65535.
    """
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= HIGHEST_PORT:
        message = f"must be a whole number from 1 to {HIGHEST_PORT}, got {text!r}"
        raise argparse.ArgumentTypeError(message)
    return port


def port_is_free(port: int) -> bool:
    """Return whether nothing listens on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        # The servers bind with SO_REUSEADDR, so the connections that the last demo left
        # in TIME_WAIT do not stop them; without it, this probe would say they do.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def prometheus_config(directory: Path, rules: Path, app: App, port: int) -> Path:
    """Write a Prometheus configuration that scrapes the app on ``port``; return its path.

    JSON is YAML, which is what Prometheus reads.
    """
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "shop",
                "metrics_path": app.metrics_path,
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            }
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2))
    return path


@contextlib.contextmanager
def process(
    command: Sequence[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in the repository root until the block ends, then stop it.

    It runs in a session of its own, so that the terminal's Ctrl-C reaches only this
    script. Sent to the whole foreground group, it would interrupt gunicorn's workers
    mid-request and the traffic mid-import, each printing a KeyboardInterrupt traceback;
    a SIGTERM from here lets them finish what they are doing and exit quietly.
    """
    with subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **(env or {})}, start_new_session=True
    ) as child:
        try:
            yield child
        finally:
            stop(child)


def stop(child: subprocess.Popen[bytes]) -> None:
    """Stop ``child`` with SIGTERM; kill its whole group if it lingers or on a second Ctrl-C."""
    child.terminate()
    try:
        child.wait(timeout=STOP_SECONDS)
    except BaseException as error:
        # Impatience, a second Ctrl-C or the terminal closing while it stops: the group
        # outlives a killed gunicorn master through its workers, so it goes as a whole.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        if not isinstance(error, subprocess.TimeoutExpired | KeyboardInterrupt):
            raise


def wait_until_serving(server: subprocess.Popen[bytes], url: str) -> None:
    """Return once ``url`` answers; fail if the server exits or takes too long."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):  # noqa: S310  a URL on 127.0.0.1
                return
        except OSError:
            if server.poll() is not None:
                fail(f"the app exited with status {server.returncode} before serving {url}")
            if time.monotonic() > deadline:
                fail(f"the app did not serve {url} within {STARTUP_SECONDS} s")
            time.sleep(0.1)


def demo(name: str, port: int, *, simulate: bool, scenario: str | None = None) -> None:
    """Serve the example shop ``name`` on 127.0.0.1:``port``, with made-up traffic.

    The traffic is healthy, or plays the incident ``scenario`` under tuned rules.
    """
    app = APPS[name]
    if not (ROOT / app.needs).is_dir():
        fail(f"{app.needs}/ is not in this checkout; choose another --app")
    if not port_is_free(port):
        fail(f"port {port} on 127.0.0.1 is already in use; choose another with --port")
    demo_requirements = REQUIREMENTS / "demo.txt"
    python = bootstrap(
        ROOT / ".venv-demo",
        [demo_requirements, ROOT / "pyproject.toml"],
        "--editable",
        str(ROOT),
        "--requirement",
        str(demo_requirements),
    )
    command = [part.format(bin=python.parent, port=port) for part in app.command]
    with tempfile.TemporaryDirectory(prefix="veza-demo-") as scratch:
        # prometheus_client shares the workers' counters through files there; a cold start
        # deletes every other file of that directory, hence one of its own.
        metrics_dir = Path(scratch) / "metrics"
        metrics_dir.mkdir()
        env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)} if app.multiprocess else {}
        rules = Path(scratch) / "rules.yml"
        tuned = ["--config", INCIDENTS_CONFIG] if scenario else []
        run(str(python), "-m", "veza_business_metrics", "rules", *tuned, "--output", str(rules))
        config = prometheus_config(Path(scratch), rules, app, port)
        base = f"http://127.0.0.1:{port}"
        with process(command, env) as server, contextlib.ExitStack() as simulator:
            wait_until_serving(server, base + app.metrics_path)
            print(f"Serving {base}{app.metrics_path}", flush=True)
            print(f"Try: curl -s {base}{app.metrics_path} | grep veza_business", flush=True)
            print(
                f"Scrape it with Prometheus: prometheus --config.file={config}"
                ' --storage.tsdb.path="$(mktemp -d)" --web.listen-address=127.0.0.1:9090',
                flush=True,
            )
            if scenario:
                description, alert = scenarios()[scenario]
                print(f"Scenario {scenario}: {description}.", flush=True)
                print(
                    f"The rules come from {INCIDENTS_CONFIG}, where {alert} fires after 1"
                    " minute rather than 10 or 15: once Prometheus runs, watch it go pending,"
                    " then firing, on http://127.0.0.1:9090/alerts.",
                    flush=True,
                )
            elif simulate:
                print(
                    "The traffic is healthy: no shipped alert fires under it."
                    " Play an incident with --scenario.",
                    flush=True,
                )
            if simulate:
                played = ["--scenario", scenario] if scenario else []
                simulator.enter_context(
                    process([str(python), "examples/simulate.py", base, *played])
                )
            server.wait()


def main() -> None:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "test",
        help="lint, types, tests, docs and the wheel; other arguments go to nox",
        usage="%(prog)s [-h] [NOX_ARGUMENT ...]",
        description=(
            "Install nox into .venv-nox and run every session of noxfile.py: the tests"
            " session, and beside it every other one, whose output follows. Every other"
            " argument goes to nox: '-s docs' runs one session, '-s tests -- -k name' runs"
            " the tests session with pytest's arguments after '--', and '--list' lists the"
            " sessions."
        ),
    )
    demo_parser = commands.add_parser("demo", help="serve /metrics of an example host app")
    demo_parser.add_argument("--app", choices=APPS, default=DEFAULT_APP)
    demo_parser.add_argument(
        "--port",
        type=port_number,
        default=DEFAULT_PORT,
        help=f"serve on this port (default: {DEFAULT_PORT})",
    )
    demo_parser.add_argument(
        "--no-simulate", action="store_true", help="serve without made-up traffic"
    )
    demo_parser.add_argument(
        "--scenario",
        choices=scenarios(),
        help="play an incident rather than healthy traffic, under rules whose alerts fire"
        f" after 1 minute ({INCIDENTS_CONFIG}): "
        + "; ".join(f"{name}: {text}" for name, (text, _) in scenarios().items()),
    )
    args, nox_arguments = parser.parse_known_args()
    if args.command == "test":
        test(nox_arguments)
        return
    if nox_arguments:
        parser.error(f"unrecognized arguments: {' '.join(nox_arguments)}")
    if args.scenario and args.no_simulate:
        demo_parser.error("--scenario plays traffic, which --no-simulate turns off")
    # Ctrl-C, a SIGTERM or a closed terminal (SIGHUP, which no longer reaches the app in
    # its own session) stops the demo's processes and removes its files on the way out.
    # Ctrl-C is how the demo is meant to end, hence status 0 and no traceback.
    for stopping in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stopping, lambda number, _: sys.exit(128 + number))
    with contextlib.suppress(KeyboardInterrupt):
        demo(args.app, args.port, simulate=not args.no_simulate, scenario=args.scenario)


if __name__ == "__main__":
    main()
