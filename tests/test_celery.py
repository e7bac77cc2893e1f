"""Tests for veza_business_metrics.celery, with real Celery workers built in this process.

Building a ``WorkController`` sends ``worker_init`` (and, with the solo pool,
``worker_process_init``) as a worker's main process does; ``stop()`` sends
``worker_shutdown``. The real prefork workers run in tests/test_example_celery.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from celery import Celery, signals
from hypothesis import given
from hypothesis import strategies as st

from helpers import (
    Worker,
    another_server,
    fetch,
    file_names,
    free_port,
    listening_processes,
    samples,
    worker_samples,
)
from veza_business_metrics.celery import setup

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from celery.worker import WorkController


def refused(url: str) -> bool:
    """Return whether nothing listens at ``url`` any more."""
    try:
        fetch(url)
    except urllib.error.URLError as error:
        return isinstance(error.reason, ConnectionRefusedError)
    return False


@pytest.fixture
def directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give an empty multiprocess directory, named by PROMETHEUS_MULTIPROC_DIR."""
    path = tmp_path / "metrics"
    path.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(path))
    return path


@pytest.fixture
def app() -> Celery:
    """Give a Celery app of its own, on the in-memory broker."""
    return Celery("shop", broker="memory://", set_as_current=False)


@pytest.fixture
def build_worker() -> Iterator[Callable[[Celery], WorkController]]:
    """Give a function that builds a solo worker of an app; each is stopped at the end."""
    built: list[WorkController] = []

    def build(app: Celery) -> WorkController:
        worker: WorkController = app.WorkController(
            pool_cls="solo",
            hostname=f"test{len(built)}@localhost",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
        built.append(worker)
        return worker

    try:
        yield build
    finally:
        for worker in built:
            worker.stop()


def test_importing_the_package_does_not_import_celery(run_python: Callable[..., str]) -> None:
    """Celery is an optional extra: the package and its other modules never import it."""
    printed = run_python(
        "import sys, veza_business_metrics, veza_business_metrics.multiprocess,"
        " veza_business_metrics.testing\n"
        "print(sorted(name for name in sys.modules if name.partition('.')[0] == 'celery'))"
    )
    assert printed == "[]\n"


def test_celery_is_an_optional_extra() -> None:
    """The package depends on Celery only through its celery extra."""
    with (Path(__file__).resolve().parent.parent / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    assert not [name for name in project["dependencies"] if name.startswith("celery")]
    assert project["optional-dependencies"]["celery"] == ["celery>=5.7"]


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"app": object(), "port": 9540}, TypeError, "app must be a Celery app, got object"),
        ({"port": "9540"}, TypeError, "port must be an int, got str '9540'"),
        ({"port": True}, TypeError, "port must be an int, got bool True"),
        ({"port": 9540.0}, TypeError, "port must be an int, got float 9540.0"),
        ({"port": 9540, "addr": 0}, TypeError, "addr must be a str such as '127.0.0.1'"),
    ],
)
def test_setup_rejects_a_wrong_type_and_connects_nothing(
    app: Celery, arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A wrong type raises TypeError naming the argument and its value, before any wiring."""
    before = [len(signal.receivers) for signal in (signals.worker_init, signals.worker_shutdown)]
    with pytest.raises(error, match=message):
        setup(**{"app": app, **arguments})
    after = [len(signal.receivers) for signal in (signals.worker_init, signals.worker_shutdown)]
    assert after == before


@given(port=st.integers().filter(lambda port: not 1 <= port <= 65535))
def test_setup_rejects_a_port_out_of_range(port: int) -> None:
    """A port outside 1 to 65535 raises ValueError naming it."""
    with pytest.raises(ValueError, match=f"port must be 1 to 65535, got {port}$"):
        setup(Celery(set_as_current=False), port=port)


def test_the_main_process_serves_every_process_on_one_port(
    app: Celery,
    directory: Path,
    build_worker: Callable[[Celery], WorkController],
    workers: list[Worker],
) -> None:
    """Once the worker starts, its port serves the files of every process, live or exited."""
    stale = directory / "counter_999999.db"
    stale.write_bytes(b"left over by an earlier run")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    setup(app, port=port)
    assert refused(url)
    worker = build_worker(app)
    assert not stale.exists()
    exited, live = Worker(directory), Worker(directory)
    workers += [exited, live]
    exited.record(3)
    exited.exit()
    live.record(2)
    assert samples(fetch(url)) == worker_samples(5)
    # The scrape merged the exited process first; a second one counts nothing twice.
    assert not any(str(exited.pid) in name for name in file_names(directory))
    assert samples(fetch(url)) == worker_samples(5)
    worker.stop()
    assert refused(url)


def test_the_endpoint_asks_for_the_credentials_and_says_where_it_serves(
    app: Celery,
    directory: Path,
    build_worker: Callable[[Celery], WorkController],
    caplog: pytest.LogCaptureFixture,
    workers: list[Worker],
) -> None:
    """With a bearer token, a scrape without it gets 401; the worker logs its address once."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    setup(app, port=port, bearer_token="celery-s3cret")  # noqa: S106  a test's token
    with caplog.at_level(logging.INFO, logger="veza_business_metrics.celery"):
        build_worker(app)
    (line,) = [record.getMessage() for record in caplog.records if "Serving" in record.message]
    assert line == f"Serving the metrics of every process in {directory} on {url}, with auth"
    pool_process = Worker(directory)
    workers.append(pool_process)
    pool_process.record(2)
    with pytest.raises(urllib.error.HTTPError, match="401"):
        fetch(url)
    request = urllib.request.Request(url, headers={"Authorization": "Bearer celery-s3cret"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        assert samples(response.read().decode()) == worker_samples(2)


def test_setup_refuses_an_empty_token_before_any_worker_starts(app: Celery) -> None:
    """A credential that no scrape could send raises where setup() is called."""
    with pytest.raises(ValueError, match="bearer_token must be non-empty"):
        setup(app, port=free_port(), bearer_token="")


def test_a_starting_pool_process_merges_those_that_exited(
    app: Celery,
    directory: Path,
    build_worker: Callable[[Celery], WorkController],
    workers: list[Worker],
) -> None:
    """worker_process_init merges the files of exited and SIGKILLed processes, no scrape needed."""
    setup(app, port=free_port())
    worker = build_worker(app)
    exited, killed, live = Worker(directory), Worker(directory), Worker(directory)
    workers += [exited, killed, live]
    for process in (exited, killed, live):
        process.record(1)
    exited.exit()
    killed.kill()
    signals.worker_process_init.send(sender="celery@localhost")
    assert file_names(directory) == {
        "counter_archive.db",
        "histogram_archive.db",
        f"counter_{live.pid}.db",
        f"histogram_{live.pid}.db",
    }
    worker.stop()
    (gone := Worker(directory)).record(1)
    workers.append(gone)
    gone.exit()
    signals.worker_process_init.send(sender="celery@localhost")
    assert f"counter_{gone.pid}.db" in file_names(directory)


def test_workers_of_other_apps_are_left_alone(
    app: Celery, directory: Path, build_worker: Callable[[Celery], WorkController]
) -> None:
    """Another app's worker neither serves on the port, empties the directory, nor stops ours."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    setup(app, port=port)
    other = Celery("other", broker="memory://", set_as_current=False)
    kept = directory / "counter_999999.db"
    kept.write_bytes(b"")
    other_worker = build_worker(other)
    assert refused(url)
    assert kept.exists()
    build_worker(app)
    other_worker.stop()
    assert samples(fetch(url)) == {}


def test_a_worker_without_the_directory_exits_saying_why(
    app: Celery, build_worker: Callable[[Celery], WorkController], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PROMETHEUS_MULTIPROC_DIR the worker exits with a one-line reason, unserved."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    port = free_port()
    setup(app, port=port)
    with pytest.raises(SystemExit, match="PROMETHEUS_MULTIPROC_DIR is not set, so each pool"):
        build_worker(app)
    assert refused(f"http://127.0.0.1:{port}/metrics")


def test_a_worker_that_cannot_serve_exits_and_deletes_nothing(
    app: Celery,
    directory: Path,
    build_worker: Callable[[Celery], WorkController],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A port in use, or a directory that is not one, stops the worker before it empties it."""
    kept = directory / "counter_999999.db"
    kept.write_bytes(b"another worker's counts")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        setup(app, port=port)
        with pytest.raises(SystemExit, match=f"on 127.0.0.1:{port}: .*Address already in use"):
            build_worker(app)
    assert kept.exists()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(kept))
    with pytest.raises(SystemExit, match=f"on 127.0.0.1:{port}: .*not a directory"):
        build_worker(app)


def test_a_worker_given_another_servers_directory_exits_and_deletes_nothing(
    app: Celery, directory: Path, build_worker: Callable[[Celery], WorkController]
) -> None:
    """A second worker given the directory of a running one exits saying so, on any port."""
    kept = directory / "counter_999999.db"
    with another_server(directory):
        kept.write_bytes(b"the other worker's counts")
        port = free_port()
        setup(app, port=port)
        with pytest.raises(
            SystemExit, match=r"Cannot serve /metrics: .* in use by another server"
        ):
            build_worker(app)
    assert kept.exists()
    assert refused(f"http://127.0.0.1:{port}/metrics")


@contextlib.contextmanager
def lock_held(directory: Path) -> Iterator[Callable[[], None]]:
    """Hold the directory's lock from another process; give the function that releases it."""
    code = (
        "import fcntl, os, sys\n"
        f"descriptor = os.open({str(directory)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
        "fcntl.flock(descriptor, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        stdin = holder.stdin

        def release() -> None:
            if holder.returncode is None:
                stdin.write("release\n")
                stdin.flush()
                assert holder.wait(timeout=30) == 0

        try:
            assert holder.stdout.readline() == "locked\n"
            yield release
        finally:
            holder.kill()


def descriptors_of(path: Path) -> int:
    """Return how many descriptors of this process are open on ``path``."""
    count = 0
    for descriptor in Path("/proc/self/fd").iterdir():
        try:
            count += descriptor.readlink() == path
        except FileNotFoundError:  # closed while we looked
            continue
    return count


def fork_and_report() -> tuple[int, int]:
    """Fork a child that waits to be killed; return its pid and a pipe it wrote to."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(writer, b"forked")
        time.sleep(60)
        os._exit(0)
    os.close(writer)
    return pid, reader


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_process_forked_during_a_scrape_gets_neither_the_port_nor_the_lock(
    app: Celery, directory: Path, build_worker: Callable[[Celery], WorkController]
) -> None:
    """A child forked during a scrape closes the listening socket and the lock it inherits."""
    port = free_port()
    setup(app, port=port)
    build_worker(app)
    lock = directory.resolve()
    with lock_held(directory) as release, concurrent.futures.ThreadPoolExecutor(2) as threads:
        scrape = threads.submit(fetch, f"http://127.0.0.1:{port}/metrics")
        deadline = time.monotonic() + 30
        while descriptors_of(lock) == 0:  # the scrape waits for the other process's lock
            assert time.monotonic() < deadline, "the scrape never opened the directory"
            time.sleep(0.01)
        fork = threads.submit(fork_and_report)
        try:
            # Released only once the child exists, so that it was forked mid-scrape.
            child, reader = fork.result(timeout=30)
            assert os.read(reader, 16) == b"forked"
            os.close(reader)
            release()
            scrape.result(timeout=30)
            descriptor = os.open(lock, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(descriptor)
            assert listening_processes(port, [os.getpid(), child]) == {os.getpid()}
        finally:
            release()
            os.kill(child := fork.result(timeout=30)[0], signal.SIGKILL)
            os.waitpid(child, 0)
