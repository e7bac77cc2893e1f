"""Helpers for tests that drive real tools and servers."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import pytest
from hypothesis import strategies as st

from veza_business_metrics import _config
from veza_business_metrics.multiprocess import MERGE_TIMEOUT, SCRAPE_TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    import promql_parser
    from prometheus_client.registry import Collector, CollectorRegistry

_T = TypeVar("_T")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

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


class Proxy:
    """Stand for a value as lazy proxies do (Django's SimpleLazyObject, wrapt's ObjectProxy).

    It claims the wrapped value's class, hashes and compares as it, and passes on every
    other attribute, yet it is not an instance of that class.
    """

    def __init__(self, wrapped: object) -> None:
        """Wrap ``wrapped``."""
        self._wrapped = wrapped

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        """Claim the wrapped value's class."""
        return type(self._wrapped)

    def __hash__(self) -> int:
        """Hash as the wrapped value."""
        return hash(self._wrapped)

    def __eq__(self, other: object) -> bool:
        """Compare as the wrapped value."""
        return bool(self._wrapped == other)

    def __lt__(self, other: object) -> bool:
        """Compare as the wrapped value."""
        return bool(self._wrapped < other)  # type: ignore[operator]

    def __le__(self, other: object) -> bool:
        """Compare as the wrapped value."""
        return bool(self._wrapped <= other)  # type: ignore[operator]

    def __gt__(self, other: object) -> bool:
        """Compare as the wrapped value."""
        return bool(self._wrapped > other)  # type: ignore[operator]

    def __ge__(self, other: object) -> bool:
        """Compare as the wrapped value."""
        return bool(self._wrapped >= other)  # type: ignore[operator]

    def __getattr__(self, name: str) -> Any:
        """Pass any other attribute on to the wrapped value."""
        return getattr(self._wrapped, name)

    def __repr__(self) -> str:
        """Show the wrapped value."""
        return f"Proxy({self._wrapped!r})"


def key(name: str, label: str = "", value: str = "") -> Key:
    """Return the key of one series as ``business_series`` reports it."""
    return (name, ((label, value),) if label else ())


# The 11 series that every process exports at 0 from import.
ZERO: Series = {
    **{key(LOGINS, "outcome", outcome): 0.0 for outcome in OUTCOMES},
    **{key(ORDERS, "status", status): 0.0 for status in STATUSES},
    key(DELETIONS): 0.0,
}


def samples(source: str | Collector) -> Series:
    """Return every sample of an exposition text or a collector, by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    families = (
        text_string_to_metric_families(source) if isinstance(source, str) else source.collect()
    )
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def business_series(source: str | Collector) -> Series:
    """Return every veza_business_*_total sample of an exposition text or a collector."""
    return {
        (name, labels): value
        for (name, labels), value in samples(source).items()
        if name.startswith("veza_business_") and name.endswith("_total")
    }


def missing(what: str, why_ci_has_it: str) -> NoReturn:
    """Skip the test on a developer's machine, but fail it under CI=true, where ``what`` exists."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}, but CI=true and {why_ci_has_it}")
    pytest.skip(what)


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
        missing(f"{name} is not on PATH", ".ci/run installs it")
    return path


def require_shared_file(relative: str, start: Path = ROOT) -> Path:
    """Return ``shared/<relative>`` from the folder beside the checkout or above it.

    The shared folder holds the Go reference implementation, which must never be copied
    into the repository. It sits beside CI's checkout, and above a git worktree.

    Raises:
        pytest.fail.Exception: If it is missing and ``CI=true``, since CI provides it.
        pytest.skip.Exception: If it is missing from a user's clone.
    """
    for folder in start.parents:
        path = folder / "shared" / relative
        if path.is_file():
            return path
    missing(f"shared/{relative} is not beside {start}", "CI provides the shared folder")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http(method: str, url: str, body: object = None) -> tuple[int, Any]:
    """Send one request with an optional JSON body; return the status and decoded JSON."""
    status, payload, _ = http_with_headers(method, url, body)
    return status, payload


def http_with_headers(
    method: str, url: str, body: object = None
) -> tuple[int, Any, dict[str, str]]:
    """Send one request as ``http`` does; return the status, the JSON and the headers.

    The headers' names are in lower case.
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            status, raw, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, headers = error.code, error.read(), error.headers
        error.close()
    named = {name.lower(): value for name, value in headers.items()}
    return status, json.loads(raw) if raw else None, named


def fetch(url: str) -> str:
    """Return the text served at ``url``."""
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
        text: str = response.read().decode()
        return text


def scrape(url: str) -> Series:
    """Return every veza_business_*_total sample served at ``url``."""
    return business_series(fetch(url))


@contextlib.contextmanager
def exposing(registry: CollectorRegistry) -> Iterator[str]:
    """Serve ``registry`` with prometheus_client's HTTP server until the block ends.

    The block gets the URL of its ``/metrics`` endpoint.
    """
    from prometheus_client import start_http_server  # noqa: PLC0415

    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@contextlib.contextmanager
def running(
    command: Sequence[str], cwd: Path, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a process, writing its output to ``log``, until the block ends; always stop it."""
    with (
        log.open("wb") as output,
        subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=output, stderr=output
        ) as process,
    ):
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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
    with running(command, cwd, log, env) as process:
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


# Another server on a multiprocess directory: it takes the directory as a cold start
# (clear) or a USR2 successor (attach) does, says so, and holds it until its stdin ends.
_OTHER_SERVER: Final = """
import sys
from veza_business_metrics import multiprocess
getattr(multiprocess, sys.argv[2])(sys.argv[1])
print("serving", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def another_server(directory: Path, take: str = "clear") -> Iterator[subprocess.Popen[str]]:
    """Run a process that holds ``directory`` as a server, taken with ``take``, in the block."""
    with subprocess.Popen(
        [sys.executable, "-c", _OTHER_SERVER, str(directory), take],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as server:
        assert server.stdin is not None
        assert server.stdout is not None
        try:
            assert server.stdout.readline() == "serving\n", f"status {server.wait()}"
            yield server
        finally:
            server.stdin.close()
            server.wait(timeout=30)


@contextlib.contextmanager
def redis_server(executable: str, directory: Path) -> Iterator[str]:
    """Run redis-server on a free port of 127.0.0.1, keeping nothing on disk; yield its URL.

    The block starts once it answers PING; the test fails if it never does.
    """
    directory.mkdir()
    port = free_port()
    log = directory / "redis.log"
    command = [executable, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory)]
    command += ["--save", "", "--appendonly", "no", "--logfile", str(log)]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) as process:
        try:
            deadline = time.monotonic() + 30
            while not _answers_ping(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not answer on port {port}:\n{log.read_text()}")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=30)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16) == b"+PONG\r\n"
    except OSError:
        return False


def listening_processes(port: int, pids: Iterable[int]) -> set[int]:
    """Return which of ``pids`` hold a TCP socket that listens on ``port``."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state, inode = (line.split()[index] for index in (1, 3, 9))
            if state == "0A" and int(local.rpartition(":")[2], 16) == port:
                sockets.add(f"socket:[{inode}]")
    holders = set()
    for pid in pids:
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):  # closed while we looked
                if str(descriptor.readlink()) in sockets:
                    holders.add(pid)
    return holders


def console_blocks(page: Path, reason: str) -> list[list[str]]:
    """Return the commands of each console block of ``page`` whose skip reason has ``reason``.

    Such a block is one that the suite runs elsewhere than in Sybil, as a test of its own.
    Its commands are one line each.
    """
    blocks = re.findall(
        r'<!-- skip: next "([^"]*)" -->\n+```console\n(.*?)```', page.read_text(), re.DOTALL
    )
    return [
        [line.removeprefix("$ ") for line in block.splitlines() if line.startswith("$ ")]
        for skip_reason, block in blocks
        if reason in skip_reason
    ]


def promtool_ok(promtool: str, *arguments: str, cwd: Path | None = None) -> str:
    """Run promtool with ``arguments``, require success and return what it printed."""
    result = subprocess.run(
        [promtool, *arguments], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


WORKER = Path(__file__).resolve().parent / "mp_worker.py"


class Worker:
    """A real process, running ``mp_worker.py``, that records into a multiprocess directory.

    Args:
        directory: The directory it writes its files to.
        before_open: Called with the pid before the process opens its files.
    """

    def __init__(
        self, directory: Path, before_open: Callable[[int], object] | None = None
    ) -> None:
        """Start the process and wait until its metrics exist."""
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        )
        self.pid = int(self._answer())
        self.recorded = 0
        if before_open is not None:
            before_open(self.pid)
        self._command("open")

    def _command(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        assert self._answer() == "ok"

    def _answer(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"worker {self.process.pid} exited with {self.process.wait()}"
        return line.strip()

    def record(self, count: int) -> None:
        """Record ``count`` events of each kind, and wait until they are written."""
        self._command(f"record {count}")
        self.recorded += count

    def traced(self, number: int, count: int) -> None:
        """Record as ``record`` does, inside the sampled span ``span_ids(number)`` names."""
        self._command(f"traced {number} {count}")
        self.recorded += count

    def spin(self, number: int) -> None:
        """Start writing exemplars from span ``number`` on; return once the first is written."""
        self._command(f"spin {number}")

    def exit(self) -> None:
        """Let the process exit normally, and reap it."""
        self._command("exit")
        assert self.process.wait(timeout=30) == 0

    def kill(self) -> None:
        """SIGKILL the process, and reap it."""
        self.process.kill()
        self.close()

    def close(self) -> None:
        """Reap the process, killing it if it still runs, and close its pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


# What a served exemplar says, by series: its trace id, its span id, its value.
Served = dict[Key, tuple[int, int, float]]


def served(directory: Path) -> Served:
    """Return the exemplar of every series that the package's collector serves."""
    from veza_business_metrics import multiprocess  # noqa: PLC0415

    found = {}
    for family in multiprocess.MultiProcessCollector(None, path=str(directory)).collect():
        for sample in family.samples:
            if sample.exemplar is not None:
                labels = sample.exemplar.labels
                found[sample.name, tuple(sorted(sample.labels.items()))] = (
                    int(labels["trace_id"], 16),
                    int(labels["span_id"], 16),
                    sample.exemplar.value,
                )
    return found


def traced(number: int) -> Served:
    """Return what a worker's ``traced number N`` serves: a login's and 100 cents' exemplars."""
    from mp_worker import span_ids  # noqa: PLC0415

    trace_id, span_id = span_ids(number)
    return {
        key(LOGINS, "outcome", "success"): (trace_id, span_id, 1.0),
        key(REVENUE, "currency", "EUR"): (trace_id, span_id, 100.0),
    }


def worker_samples(recorded: int) -> Series:
    """Return the samples that workers which recorded ``recorded`` events in all export."""
    # Series with a label appear on first use; the others exist from the start.
    first_use = {
        key(REVENUE, "currency", "EUR"): 100.0 * recorded,
        key("host_requests_total", "route", "shop"): float(recorded),
    }
    return {
        **ZERO,
        **(first_use if recorded else {}),
        key(LOGINS, "outcome", "success"): float(recorded),
        key("host_latency_seconds_bucket", "le", "0.1"): 0.0,
        key("host_latency_seconds_bucket", "le", "0.5"): float(recorded),
        key("host_latency_seconds_bucket", "le", "1.0"): float(recorded),
        key("host_latency_seconds_bucket", "le", "+Inf"): float(recorded),
        key("host_latency_seconds_count"): float(recorded),
        key("host_latency_seconds_sum"): 0.25 * recorded,
    }


# One login per outcome of the example shop's user table, as (body, status, outcome).
LOGIN_CASES = [
    ({"username": "alice", "password": "wonderland"}, 200, "success"),
    ({"username": "alice", "password": "nope"}, 401, "failure_credentials"),
    ({"username": "bob", "password": "builder"}, 401, "failure_unverified"),
    ({"username": "carol", "password": "singing"}, 401, "failure_locked"),
    ({"username": "dave", "password": "grohl", "otp": "000000"}, 401, "failure_2fa"),
    ({"username": "erin", "password": "brockovich"}, 401, "failure_other"),
    ({"username": "dave", "password": "grohl", "otp": "123456"}, 200, "success"),
]
# What one answered ping adds to the gunicorn example's own counter and histogram.
PING: Series = {
    key("shop_pings_total"): 1.0,
    key("shop_ping_seconds_bucket", "le", "0.5"): 1.0,
    key("shop_ping_seconds_bucket", "le", "1.0"): 1.0,
    key("shop_ping_seconds_bucket", "le", "+Inf"): 1.0,
    key("shop_ping_seconds_count"): 1.0,
    key("shop_ping_seconds_sum"): 0.25,
}


def drive_every_route(base: str) -> None:
    """Call every route of the shop once or more, with good and bad bodies."""
    for body, status, outcome in LOGIN_CASES:
        assert http("POST", f"{base}/login", body) == (status, {"outcome": outcome})
    order_ids = []
    for _ in range(3):
        status, payload = http("POST", f"{base}/orders", {})
        assert status == 201
        order_ids.append(payload["id"])
    paid, refunded, rejected = order_ids
    assert (
        http("POST", f"{base}/orders/{paid}/complete", {"amount_cents": 1999, "currency": "eur"})[
            0
        ]
        == 200
    )
    assert (
        http(
            "POST", f"{base}/orders/{refunded}/complete", {"amount_cents": 500, "currency": "USD"}
        )[0]
        == 200
    )
    assert (
        http("POST", f"{base}/orders/{refunded}/refund", {"amount_cents": 500, "currency": "usd"})[
            0
        ]
        == 200
    )
    assert http("POST", f"{base}/orders/{rejected}/fail")[0] == 200
    assert http("DELETE", f"{base}/account") == (204, None)


def drive_bad_requests(base: str) -> None:
    """Send bodies the library rejects; each gets a 4xx carrying the library's message."""
    cases = [
        ("complete", {"amount_cents": -500, "currency": "EUR"}, 422, "record_refund(500, 'EUR')"),
        ("complete", {"amount_cents": 1999, "currency": "XYZ"}, 422, "got 'XYZ'"),
        ("complete", {"amount_cents": 19.99, "currency": "EUR"}, 422, "must be an int"),
        ("refund", {"amount_cents": 100, "currency": "EUR-refund"}, 422, "got 'EUR-refund'"),
        ("refund", {"amount_cents": -1, "currency": "EUR"}, 422, "positive number"),
        ("complete", {"currency": "EUR"}, 400, "amount_cents and currency"),
    ]
    for action, body, status, message in cases:
        got_status, payload = http("POST", f"{base}/orders/o-1/{action}", body)
        assert got_status == status, (action, body, payload)
        assert message in payload["error"]


EXPECTED_AFTER_ROUTES: Series = {
    **ZERO,
    key(LOGINS, "outcome", "success"): 2.0,
    key(LOGINS, "outcome", "failure_credentials"): 1.0,
    key(LOGINS, "outcome", "failure_unverified"): 1.0,
    key(LOGINS, "outcome", "failure_locked"): 1.0,
    key(LOGINS, "outcome", "failure_2fa"): 1.0,
    key(LOGINS, "outcome", "failure_other"): 1.0,
    key(ORDERS, "status", "created"): 3.0,
    key(ORDERS, "status", "completed"): 2.0,
    key(ORDERS, "status", "refunded"): 1.0,
    key(ORDERS, "status", "failed"): 1.0,
    key(REVENUE, "currency", "EUR"): 1999.0,
    key(REVENUE, "currency", "USD"): 500.0,
    key(REVENUE, "currency", "USD-refund"): 500.0,
    key(DELETIONS): 1.0,
}


def check_app(base: str, metrics_url: str) -> None:
    """Check zero series, every route's exact counts, and that bad bodies record nothing."""
    assert scrape(metrics_url) == ZERO
    drive_bad_requests(base)
    assert scrape(metrics_url) == ZERO
    drive_every_route(base)
    assert scrape(metrics_url) == EXPECTED_AFTER_ROUTES


def worker_pids(master: int) -> set[int]:
    """Return the pids of the gunicorn master's live child processes."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def wait_for_workers(master: int, count: int, gone: int | None = None) -> set[int]:
    """Wait until ``master`` has ``count`` workers, ``gone`` not among them; return them."""
    deadline = time.monotonic() + 60
    while True:
        workers = worker_pids(master)
        if len(workers) == count and gone not in workers:
            return workers
        assert time.monotonic() < deadline, f"gunicorn {master} did not get {count} workers"
        time.sleep(0.05)


def gunicorn_shop(gunicorn: str, *options: str, app: str = "app:app") -> list[str]:
    """Return the command that serves ``app`` with the multiprocess example's config."""
    config = str(EXAMPLES / "gunicorn" / "gunicorn.conf.py")
    return [gunicorn, "--no-control-socket", "--config", config, *options, app]


def files_by_type(directory: Path) -> dict[str, int]:
    """Count the metrics files in ``directory`` by type."""
    return dict(
        collections.Counter(path.name.partition("_")[0] for path in directory.glob("[!.]*_*"))
    )


def add(total: Series, change: Series) -> Series:
    """Return ``total`` with ``change`` added, series by series."""
    return {**total, **{k: total.get(k, 0.0) + value for k, value in change.items()}}


def traffic(base: str, requests: int, *, ping: bool = False, concurrency: int = 16) -> Series:
    """Send ``requests`` requests over the shop's routes, ``concurrency`` at a time.

    Logins cycle through every outcome, one request in four completes an order for 100
    EUR cents, and with ``ping`` one in four is a ping. Returns what the requests that
    the app acknowledged add to the samples.
    """

    def send(number: int) -> Series:
        if ping and number % 4 == 3:
            return PING if http("GET", f"{base}/ping")[0] == 204 else {}
        if number % 4 == 1:
            payment = {"amount_cents": 100, "currency": "EUR"}
            if http("POST", f"{base}/orders/{number}/complete", payment)[0] != 200:
                return {}
            return {
                key(ORDERS, "status", "completed"): 1.0,
                key(REVENUE, "currency", "EUR"): 100.0,
            }
        body, status, outcome = LOGIN_CASES[number % len(LOGIN_CASES)]
        if http("POST", f"{base}/login", body) != (status, {"outcome": outcome}):
            return {}
        return {key(LOGINS, "outcome", outcome): 1.0}

    total: Series = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        for change in pool.map(send, range(requests)):
            total = add(total, change)
    return total


class Scraper(threading.Thread):
    """Scrape a /metrics URL about every ``interval`` seconds, noting series that went down.

    It also notes the 503s, which a scrape that cannot take the lock in time answers,
    other error statuses, and the slowest answer of all.

    Args:
        url: The /metrics URL.
        directory: The multiprocess directory, whose file count is sampled at each scrape.
        interval: The pause after each scrape.
        seconds: How long it scrapes at the most.
    """

    # However long ``seconds`` is, a scraper stops after this many tries.
    MAX_SCRAPES: Final = 100_000

    def __init__(
        self,
        url: str,
        directory: Path | None = None,
        *,
        interval: float = 0.03,
        seconds: float = 600,
    ) -> None:
        """Prepare the thread; ``start()`` it, then ``stop()`` it."""
        super().__init__(daemon=True)
        self.url = url
        self.directory = directory
        self.interval = interval
        self.seconds = seconds
        self.scrapes = 0
        self.unavailable = 0
        self.errors: list[str] = []
        self.slowest = 0.0
        self.decreases: list[str] = []
        self.peak_files: dict[str, int] = collections.Counter()
        self._last: Series = {}
        self._stopped = threading.Event()
        self._peak_lock = threading.Lock()

    def run(self) -> None:
        """Scrape until stopped, for ``seconds`` or ``MAX_SCRAPES`` tries at the most."""
        deadline = time.monotonic() + self.seconds
        for _ in range(self.MAX_SCRAPES):
            if self._stopped.is_set() or time.monotonic() >= deadline:
                break
            started = time.monotonic()
            try:
                text = fetch(self.url)
            except urllib.error.HTTPError as error:
                self.slowest = max(self.slowest, time.monotonic() - started)
                if error.code == 503:
                    self.unavailable += 1
                else:
                    self.errors.append(f"{error.code} {error.reason}")
                error.close()
                self._stopped.wait(self.interval)
                continue
            except (OSError, HTTPException):
                # A worker killed while it answered; the next scrape tells the truth. A
                # hang would still show, as the slowest answer.
                self.slowest = max(self.slowest, time.monotonic() - started)
                continue
            self.slowest = max(self.slowest, time.monotonic() - started)
            now = samples(text)
            self.decreases += [
                f"{series}: {value} -> {now.get(series)}"
                for series, value in self._last.items()
                if now.get(series, -1.0) < value
            ]
            self._last = now
            self.scrapes += 1
            if self.directory is not None:
                # Counted under the lock, so that a count is in the window it began in.
                with self._peak_lock:
                    for kind, count in scraped_files_by_type(self.directory).items():
                        self.peak_files[kind] = max(self.peak_files[kind], count)
            self._stopped.wait(self.interval)

    def take_peak(self) -> dict[str, int]:
        """Return the peak file counts since the start or the last call, and start afresh."""
        with self._peak_lock:
            peak, self.peak_files = self.peak_files, collections.Counter()
        return dict(peak)

    def stop(self) -> None:
        """Stop scraping and wait for the thread to end."""
        self._stopped.set()
        self.join(timeout=60)


def scraped_files_by_type(directory: Path) -> dict[str, int]:
    """Count by type the files in ``directory`` that a scrape may read, and the lock files.

    An archive being rewritten has a temporary twin for a moment, and a corrupt file is
    moved aside as ``*.corrupt``: scrapes read neither, so neither is counted.
    """
    return dict(
        collections.Counter(
            path.name.partition("_")[0]
            for path in directory.glob("[!.]*_*")
            if path.suffix not in {".tmp", ".corrupt"}
        )
    )


def poll(probe: Callable[[], _T], until: Callable[[_T], bool], timeout: float = 60) -> _T:
    """Call ``probe`` until ``until`` accepts its result or ``timeout`` seconds pass.

    Returns the last result either way, for the caller to assert on.
    """
    deadline = time.monotonic() + timeout
    while not until(result := probe()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return result


@dataclasses.dataclass(frozen=True)
class Prometheus:
    """A real Prometheus server on 127.0.0.1 that scrapes and evaluates every second."""

    url: str
    config: Path
    rule_file: Path

    def write_config(
        self,
        targets: Mapping[str, Sequence[str]],
        settings: Mapping[str, Mapping[str, object]] | None = None,
    ) -> None:
        """Write the configuration: the rule file and, for each job, its targets.

        ``settings`` adds scrape settings to the jobs it names, ``authorization`` say.
        """
        scrape_configs = [
            {
                "job_name": job,
                "static_configs": [{"targets": list(addresses)}],
                **(settings or {}).get(job, {}),
            }
            for job, addresses in targets.items()
        ]
        self.config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(self.rule_file)],
                    "scrape_configs": scrape_configs,
                }
            )
        )

    def rescrape(self, targets: Mapping[str, Sequence[str]]) -> None:
        """Replace the scrape targets while the server runs; no targets stops scraping."""
        self.write_config(targets)
        assert http("POST", f"{self.url}/-/reload")[0] == 200

    def api(self, path: str, **params: str) -> Any:
        """Return the data of a successful HTTP API call such as ``rules`` or ``metadata``."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, payload = http("GET", f"{self.url}/api/v1/{path}{query}")
        assert (status, payload["status"]) == (200, "success"), payload
        return payload["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Return the instant vector that ``promql`` gives now, or at the Unix time ``at``."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def exemplars(self, promql: str, start: float, end: float) -> list[dict[str, Any]]:
        """Return the exemplars of the series that ``promql`` selects, between two Unix times.

        Each item holds a series' ``seriesLabels`` and its ``exemplars``, each with its
        ``labels``, ``value`` and ``timestamp``. Only a server run with the flag
        ``--enable-feature=exemplar-storage`` keeps any.
        """
        result: list[dict[str, Any]] = self.api(
            "query_exemplars", query=promql, start=f"{start:.3f}", end=f"{end:.3f}"
        )
        return result


@contextlib.contextmanager
def running_prometheus(
    directory: Path,
    rule_file: Path,
    targets: Mapping[str, Sequence[str]],
    settings: Mapping[str, Mapping[str, object]] | None = None,
    flags: Sequence[str] = (),
) -> Iterator[Prometheus]:
    """Run Debian's Prometheus on ``targets`` with ``rule_file`` until the block ends.

    ``settings`` adds scrape settings to the jobs it names; ``flags`` are added to its
    command line, such as ``--enable-feature=exemplar-storage``.
    """
    binary = require_tool("prometheus")
    server = Prometheus(f"http://127.0.0.1:{free_port()}", directory / "prometheus.yml", rule_file)
    server.write_config(targets, settings)
    command = [
        binary,
        f"--config.file={server.config}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address={server.url.removeprefix('http://')}",
        "--web.enable-lifecycle",
        *flags,
    ]
    with serving(command, f"{server.url}/-/ready", directory, directory / "prometheus.log"):
        yield server


def prometheus_series(prometheus: Prometheus, at: float | None = None) -> dict[str, Series]:
    """Return the veza_business_*_total samples that Prometheus holds, by instance."""
    found: dict[str, Series] = collections.defaultdict(dict)
    for item in prometheus.query('{__name__=~"veza_business_.*_total"}', at):
        labels = item["metric"]
        key = tuple(
            (name, value)
            for name, value in sorted(labels.items())
            if name not in {"__name__", "instance", "job"}
        )
        found[labels["instance"]][labels["__name__"], key] = float(item["value"][1])
    return dict(found)


def vector_selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """Return every series selector of the PromQL ``expr``, as promql-parser reads it."""
    import promql_parser  # noqa: PLC0415

    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def _durations() -> st.SearchStrategy[str]:
    units = [("y", 50), ("w", 999), ("d", 999), ("h", 999), ("m", 999), ("s", 999), ("ms", 999)]
    # Each unit is present or not, in Prometheus's order; none at all reads as 0s.
    amounts = st.tuples(*(st.none() | st.integers(0, largest) for _, largest in units))
    return amounts.map(
        lambda chosen: (
            "".join(
                f"{amount}{unit}"
                for amount, (unit, _) in zip(chosen, units, strict=True)
                if amount
            )
            or "0s"
        )
    )


def _matchers() -> st.SearchStrategy[list[str]]:
    first = string.ascii_letters + "_"
    names = st.builds(
        str.__add__, st.sampled_from(first), st.text(first + string.digits, max_size=8)
    ).filter(lambda name: name != "__name__")
    words = st.text(string.ascii_letters + string.digits + "-_.:", min_size=1, max_size=8)
    regexes = st.lists(words, min_size=1, max_size=3).map(
        lambda alternatives: "|".join(re.escape(word) for word in alternatives)
    )
    equality = st.tuples(names, st.sampled_from(["=", "!="]), st.text(max_size=12))
    regex = st.tuples(names, st.sampled_from(["=~", "!~"]), regexes)
    return st.lists(
        st.one_of(equality, regex).map(lambda m: f"{m[0]}{m[1]}{_config.promql_string(m[2])}"),
        max_size=3,
    )


def alert_sections(settings: _config.Settings) -> dict[str, Any]:
    """Return the per-alert sections of ``settings`` by their TOML table name."""
    return {
        _config._key(field): getattr(settings, field.name)
        for field in dataclasses.fields(settings)
        if "check" not in field.metadata
    }


def config_documents() -> st.SearchStrategy[dict[str, object]]:
    """Return a strategy for valid config files, as tomllib would parse them."""
    numbers = st.integers(0, 10**9) | st.floats(0, 1e9)
    by_check: dict[object, st.SearchStrategy[Any]] = {
        _config._duration: _durations(),
        _config._fraction: st.sampled_from([0, 1]) | st.floats(0, 1),
        _config._non_negative: numbers,
        _config._positive: numbers.filter(lambda number: number > 0),
        _config._slo_target: st.floats(0, 1, exclude_min=True, exclude_max=True),
        _config._url: st.sampled_from(
            ["https://docs.example.com", "http://wiki.internal:8080/veza/", "https://a.b/c/d"]
        ),
        _config._matchers: _matchers(),
    }

    def table(kind: type) -> st.SearchStrategy[dict[str, object]]:
        optional = {}
        for field in dataclasses.fields(kind):
            key = _config._key(field)
            if "check" in field.metadata:
                optional[key] = by_check[field.metadata["check"]]
            else:
                optional[key] = table(type(field.default))
        return st.fixed_dictionaries({}, optional=optional)

    return table(_config.Settings)


# The lock files that merges and servers of a multiprocess directory create, and leave.
LOCKS: Final = frozenset({"veza_merge.lock", "veza_server.lock"})


def file_names(directory: Path) -> set[str]:
    """Return the names of the files in the multiprocess ``directory``, but the lock files."""
    return {path.name for path in directory.iterdir()} - LOCKS


# Options that make gunicorn replace each worker after a dozen requests or so, so that a
# short run merges many workers' files.
RECYCLING: Final = ("--max-requests", "12", "--max-requests-jitter", "4")


@dataclasses.dataclass(frozen=True)
class Shop:
    """A real gunicorn master that serves the multiprocess example shop."""

    master: subprocess.Popen[bytes]
    command: list[str]
    env: dict[str, str]
    directory: Path
    base: str
    log: Path
    workers: int

    @property
    def metrics_url(self) -> str:
        """Return the URL of its /metrics."""
        return f"{self.base}/metrics"

    @property
    def bound(self) -> int:
        """Return how many files of one type its directory may hold, at rest.

        They are each worker's, the master's (which imports the package through the
        config) and the archive.
        """
        return self.workers + 1 + 1

    def start_again(self, **env: str) -> subprocess.CompletedProcess[str]:
        """Run a second server with this one's command and environment, ``env`` on top.

        It runs until it exits, for a minute at the most; its output is captured.
        """
        return subprocess.run(
            self.command,
            cwd=self.log.parent,
            env={**os.environ, **self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@contextlib.contextmanager
def shop_under_gunicorn(tmp_path: Path, *options: str, workers: int = 4) -> Iterator[Shop]:
    """Serve the example shop with real gunicorn and its example config until the block ends.

    The metrics go to ``tmp_path/metrics``, which it creates; gunicorn's output goes to
    ``tmp_path/gunicorn.log``. The block starts once every worker runs.
    """
    gunicorn = require_tool("gunicorn")
    directory = tmp_path / "metrics"
    directory.mkdir()
    base = f"http://127.0.0.1:{free_port()}"
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "SHOP_BIND": base.removeprefix("http://"),
        "SHOP_WORKERS": str(workers),
    }
    command = gunicorn_shop(gunicorn, *options)
    log = tmp_path / "gunicorn.log"
    with serving(command, f"{base}/metrics", tmp_path, log, env) as master:
        wait_for_workers(master.pid, workers)
        yield Shop(master, command, env, directory, base, log, workers)


def kill_a_worker(shop: Shop) -> int:
    """SIGKILL a worker that has written its file, wait until it is replaced; return its pid."""
    # A worker killed before it imported the app has no file, and nothing to merge.
    victim = poll(
        lambda: min(wait_for_workers(shop.master.pid, shop.workers)),
        lambda pid: (shop.directory / f"counter_{pid}.db").exists(),
        timeout=30,
    )
    os.kill(victim, signal.SIGKILL)
    wait_for_workers(shop.master.pid, shop.workers, gone=victim)
    return victim


def process_state(pid: int) -> str:
    """Return the state letter of process ``pid`` in /proc: R, S, T (stopped), Z..."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


# Takes the directory's lock as a scrape does, says so, then stops itself.
_HOLD_AS_A_SCRAPE: Final = """
import os, signal, sys
from pathlib import Path
from veza_business_metrics import multiprocess
with multiprocess._lock.locked(Path(sys.argv[1]).resolve(), exclusive=False, timeout=60) as taken:
    print("held" if taken else "not taken", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""


@contextlib.contextmanager
def stopped_scraper(directory: Path, seconds: float) -> Iterator[int]:
    """Keep a process stopped for ``seconds`` while it holds what a scrape of ``directory`` holds.

    The block, which gets its pid, runs while it is stopped; once the block is done and
    ``seconds`` have passed since it stopped, it is continued, lets go and exits.
    """
    # Without the variable, its own metrics stay in memory: it adds no file to count.
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"}
    }
    command = [sys.executable, "-c", _HOLD_AS_A_SCRAPE, str(directory)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stdout is not None
            said = process.stdout.readline()
            assert said == "held\n", f"the lock holder said {said!r}, exit {process.poll()}"
            state = poll(lambda: process_state(process.pid), lambda state: state == "T", 30)
            assert state == "T", f"the lock holder did not stop: state {state}"
            stopped_at = time.monotonic()
            yield process.pid
            time.sleep(max(0.0, stopped_at + seconds - time.monotonic()))
            process.send_signal(signal.SIGCONT)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def timed_logins(base: str, count: int, seconds: float) -> tuple[Series, list[float]]:
    """Send logins one at a time, ``count`` at most and for ``seconds`` at most, and time them.

    Returns what the acknowledged logins add to the samples, and how long each one took.
    """
    total: Series = {}
    latencies = []
    deadline = time.monotonic() + seconds
    for number in range(count):
        if time.monotonic() >= deadline:
            break
        body, status, outcome = LOGIN_CASES[number % len(LOGIN_CASES)]
        started = time.monotonic()
        answer = http("POST", f"{base}/login", body)
        latencies.append(time.monotonic() - started)
        if answer == (status, {"outcome": outcome}):
            total = add(total, {key(LOGINS, "outcome", outcome): 1.0})
    return total, latencies


def unused_pid() -> int:
    """Return a pid that no process has: one past the largest that the kernel gives."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def plant_corrupt_file(directory: Path, workers: Iterable[int]) -> Path:
    """Copy a live worker's counter file, its first key no longer JSON, as a dead pid's.

    The other entries stay valid, with the worker's counts: a merge that took them would
    show in the totals. Returns the file, named as a process's that exited.
    """
    workers = sorted(workers)
    for worker in workers:
        try:
            data = bytearray((directory / f"counter_{worker}.db").read_bytes())
        except FileNotFoundError:  # a worker that exited, or has not written yet
            continue
        # The first entry's key starts after the used length, the padding and its length.
        if data[12:14] == b'["':
            break
    else:
        pytest.fail(f"none of the workers {workers} has a counter file with a key")
    data[12:13] = b"{"
    planted = directory / f"counter_{unused_pid()}.db"
    # Whole, or not at all: a scrape must not meet it half-written.
    temporary = directory.parent / f"{planted.name}.planting"
    temporary.write_bytes(bytes(data))
    temporary.replace(planted)
    return planted


def acknowledged(expected: Series) -> int:
    """Return how many requests of ``traffic`` and ``timed_logins`` ``expected`` counts."""
    counted = {LOGINS, "shop_pings_total"}
    requests = sum(value for (name, _), value in expected.items() if name in counted)
    return round(requests + expected.get(key(ORDERS, "status", "completed"), 0.0))


def figures(expected: Series, scrapers: Sequence[Scraper], peak: Mapping[str, int]) -> str:
    """Return the figures of a run under load, for a test to print and its assertions to quote."""
    return (
        f"{acknowledged(expected)} requests acknowledged,"
        f" {sum(scraper.scrapes for scraper in scrapers)} scrapes,"
        f" {sum(len(scraper.decreases) for scraper in scrapers)} decreases,"
        f" {sum(scraper.unavailable for scraper in scrapers)} answered 503,"
        f" slowest scrape {max(scraper.slowest for scraper in scrapers):.2f} s,"
        f" files at the peak {dict(peak)}"
    )


# How long a lock holder stays stopped: a debugger's pause, a frozen container.
STOP_SECONDS: Final = 5.0
# A request that the stopped process held up would wait for the whole stop. gunicorn's
# master waits MERGE_TIMEOUT once for a dead worker's merge, and replaces no worker
# meanwhile: with recycling, every worker may have exited by then, and a request waits for
# that, then for a new worker to start.
FAST_REQUEST: Final = MERGE_TIMEOUT + 1.5
# A scrape first tries to merge the dead workers' files, for MERGE_TIMEOUT, then waits for
# its own lock for SCRAPE_TIMEOUT at the most; the rest is a margin for a busy machine.
SLOWEST_SCRAPE: Final = MERGE_TIMEOUT + SCRAPE_TIMEOUT + 1.0


def timed_scrape(url: str) -> tuple[int, float]:
    """Scrape ``url`` once; return the status, 200 or an error's, and how long it took."""
    started = time.monotonic()
    try:
        fetch(url)
    except urllib.error.HTTPError as error:
        error.close()
        return error.code, time.monotonic() - started
    return 200, time.monotonic() - started


@dataclasses.dataclass(frozen=True)
class Stop:
    """What happened around a process stopped while it held a scrape's lock."""

    logins: Series
    latencies: list[float]
    victim_kept: bool
    scrape_status: int
    scrape_seconds: float
    after: Series
    first_scrape_seconds: float
    at_rest: dict[str, int]
    merged_in: float
    victim_gone: bool

    def __str__(self) -> str:
        """Return the figures, for a test to print and its assertions to quote."""
        return (
            f"{len(self.latencies)} logins while stopped, the slowest"
            f" {max(self.latencies):.2f} s; a scrape answered {self.scrape_status} in"
            f" {self.scrape_seconds:.2f} s; the first scrape after it took"
            f" {self.first_scrape_seconds:.2f} s, the directory was back to {self.at_rest}"
            f" in {self.merged_in:.2f} s"
        )


def through_a_stop(shop: Shop, seconds: float) -> Stop:
    """Stop a process that holds a scrape's lock for ``seconds``, while logins go on.

    A worker is killed meanwhile. Once the process has let go, it scrapes, then waits
    for the directory to be bounded again, for 10 seconds at the most.
    """
    with stopped_scraper(shop.directory, seconds):
        end_of_stop = time.monotonic() + seconds
        # Enough logins that workers are recycled meanwhile.
        logins, latencies = timed_logins(shop.base, 2_000, seconds / 3)
        victim = kill_a_worker(shop)
        victim_kept = (shop.directory / f"counter_{victim}.db").exists()
        status, took = timed_scrape(shop.metrics_url)
        more, later = timed_logins(shop.base, 2_000, end_of_stop - 0.5 - time.monotonic())
    resumed = time.monotonic()
    after = samples(fetch(shop.metrics_url))
    first_scrape = time.monotonic() - resumed
    at_rest = poll(
        lambda: scraped_files_by_type(shop.directory),
        lambda files: max(files.values()) <= shop.bound,
        timeout=10,
    )
    return Stop(
        logins=add(logins, more),
        latencies=latencies + later,
        victim_kept=victim_kept,
        scrape_status=status,
        scrape_seconds=took,
        after=after,
        first_scrape_seconds=first_scrape,
        at_rest=at_rest,
        merged_in=time.monotonic() - resumed,
        victim_gone=not (shop.directory / f"counter_{victim}.db").exists(),
    )


# multiprocessing's own helper processes, which an ASGI server's master may fork beside
# its workers: they serve no request and write no metrics file.
_HELPER_PROCESSES: Final = (b"multiprocessing.resource_tracker", b"multiprocessing.forkserver")


def server_workers(master: int) -> set[int]:
    """Return the pids of the live worker processes of the server ``master``.

    They are its children, from whichever of its threads forked them, but for zombies
    (exited, not yet reaped) and multiprocessing's helper processes.
    """
    children: set[int] = set()
    for task in Path(f"/proc/{master}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended
            children.update(int(pid) for pid in (task / "children").read_text().split())
    workers = set()
    for pid in children:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):  # reaped while we looked
            continue
        # A zombie has no command line left.
        if command and not any(helper in command for helper in _HELPER_PROCESSES):
            workers.add(pid)
    return workers


def started_at(pid: int) -> int:
    """Return when process ``pid`` started, in clock ticks since boot."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


class WorkerWatcher(threading.Thread):
    """Note every worker pid of a server's master, about every 50 ms, until stopped.

    Args:
        master: The server's master process.
        seconds: How long it watches at the most.
    """

    MAX_LOOKS: Final = 100_000

    def __init__(self, master: int, seconds: float = 600) -> None:
        """Prepare the thread; ``start()`` it, then ``stop()`` it."""
        super().__init__(daemon=True)
        self.master = master
        self.seconds = seconds
        # Each worker's start time, by pid.
        self.seen: dict[int, int] = {}
        self.most = 0
        self._stopped = threading.Event()

    def run(self) -> None:
        """Look until stopped, for ``seconds`` or ``MAX_LOOKS`` looks at the most."""
        deadline = time.monotonic() + self.seconds
        for _ in range(self.MAX_LOOKS):
            if self._stopped.is_set() or time.monotonic() >= deadline:
                break
            with contextlib.suppress(FileNotFoundError):  # the master exited
                workers = server_workers(self.master)
                for pid in workers.difference(self.seen):
                    with contextlib.suppress(FileNotFoundError):  # exited meanwhile
                        self.seen[pid] = started_at(pid)
                self.most = max(self.most, len(workers))
            self._stopped.wait(0.05)

    def stop(self) -> None:
        """Stop looking and wait for the thread to end."""
        self._stopped.set()
        self.join(timeout=60)


def wait_for_server_workers(master: int, count: int, gone: int | None = None) -> set[int]:
    """Wait until the server ``master`` has ``count`` workers, ``gone`` not among them."""
    workers = poll(
        lambda: server_workers(master),
        lambda workers: len(workers) == count and gone not in workers,
        timeout=60,
    )
    assert len(workers) == count, f"server {master} has the workers {workers}, not {count}"
    assert gone not in workers, f"server {master} did not replace its worker {gone}"
    return workers


@dataclasses.dataclass
class Load:
    """What the requests of a run under failures did to the shop's samples."""

    # What the requests that the app acknowledged add.
    acknowledged: Series = dataclasses.field(default_factory=dict)
    # What the requests that got no answer, or an unexpected one, would add had the app
    # counted them: a worker killed or recycled may have counted them, or not.
    unsure: Series = dataclasses.field(default_factory=dict)
    unanswered: int = 0
    unexpected: list[str] = dataclasses.field(default_factory=list)
    not_sent: int = 0

    def requests(self) -> int:
        """Return how many requests the app acknowledged."""
        return acknowledged(self.acknowledged)


def _shop_request(number: int, *, ping: bool) -> tuple[str, str, object, int, object, Series]:
    """Return request ``number`` of ``traffic``: method, path, body, status, reply, change.

    A reply of ``None`` is not checked, only the status.
    """
    if ping and number % 4 == 3:
        return "GET", "/ping", None, 204, None, PING
    if number % 4 == 1:
        change = {key(ORDERS, "status", "completed"): 1.0, key(REVENUE, "currency", "EUR"): 100.0}
        payment = {"amount_cents": 100, "currency": "EUR"}
        return "POST", f"/orders/{number}/complete", payment, 200, None, change
    body, status, outcome = LOGIN_CASES[number % len(LOGIN_CASES)]
    return (
        "POST",
        "/login",
        body,
        status,
        {"outcome": outcome},
        {key(LOGINS, "outcome", outcome): 1.0},
    )


def traffic_under_failures(
    base: str,
    requests: int,
    seconds: float,
    *,
    until: threading.Event | None = None,
    ping: bool = True,
    concurrency: int = 8,
) -> Load:
    """Send ``traffic``'s requests while workers die, until ``until`` is set.

    It sends ``requests`` at the most, for ``seconds`` at the most. A request that gets
    no answer, or an unexpected one, does not fail the run: the returned ``Load`` tells
    them apart from the acknowledged ones.
    """
    deadline = time.monotonic() + seconds
    until = until or threading.Event()
    load = Load()
    lock = threading.Lock()

    def send(number: int) -> None:
        if until.is_set() or time.monotonic() >= deadline:
            with lock:
                load.not_sent += 1
            return
        method, path, body, status, reply, change = _shop_request(number, ping=ping)
        try:
            answer = http(method, f"{base}{path}", body)
        except (OSError, HTTPException):  # reset, refused or cut by a dying worker
            answer = None
        with lock:
            if (
                answer is not None
                and answer[0] == status
                and (reply is None or answer[1] == reply)
            ):
                load.acknowledged = add(load.acknowledged, change)
                return
            load.unsure = add(load.unsure, change)
            if answer is None:
                load.unanswered += 1
            else:
                load.unexpected.append(f"{method} {path}: {answer}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(send, range(requests)))
    return load


def outside_bounds(final: Series, least: Series, most: Series) -> list[str]:
    """Return the series of ``final`` that are not between ``least`` and ``most``, or not in both.

    For a run where some requests got no answer: each series must count every
    acknowledged request (``least``) and at most the unanswered ones besides (``most``).
    """
    return [
        f"{series}: {final.get(series)} not in [{least.get(series)}, {most.get(series)}]"
        for series in sorted(final.keys() | least.keys() | most.keys())
        if not least.get(series, 0.0) <= final.get(series, -1.0) <= most.get(series, -1.0)
    ]


# Runs a merge in a process that SIGKILLs itself at one filesystem change: argv holds the
# directory, the number of the change to die at (0: none), and the pid to merge (0: sweep).
CRASHING_MERGE = textwrap.dedent("""
    import os, signal, sys

    directory, die_at, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    changes = 0

    def dying(name, change):
        def wrapper(*args, **kwargs):
            global changes
            changes += 1
            if changes == die_at:
                target = args[0]
                if isinstance(target, int):  # a file descriptor: name its file
                    target = os.readlink(f"/proc/self/fd/{target}")
                print(name, os.path.basename(str(target)) or target, file=sys.stderr)
                sys.stderr.flush()
                if name == "write":  # die half-way through the archive
                    change(args[0], args[1][: len(args[1]) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return change(*args, **kwargs)
        return wrapper

    for name in ("rename", "replace", "unlink", "write", "fsync"):
        setattr(os, name, dying(name, getattr(os, name)))
    from veza_business_metrics import multiprocess
    if pid:
        multiprocess.mark_process_dead(pid, directory)
    else:
        multiprocess.sweep(directory)
    print(changes)
""")


def merge_in_a_process(directory: Path, die_at: int, pid: int) -> subprocess.CompletedProcess[str]:
    """Run a merge of ``pid`` (0: a sweep) that SIGKILLs itself at change ``die_at``."""
    return subprocess.run(
        [sys.executable, "-c", CRASHING_MERGE, str(directory), str(die_at), str(pid)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def wsgi_served(app: Any) -> Iterator[str]:
    """Serve the WSGI ``app`` with wsgiref on 127.0.0.1 until the block ends; give its URL."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server  # noqa: PLC0415

    class Quiet(WSGIRequestHandler):
        def log_message(self, *_: Any) -> None:
            """Log nothing: the tests read the responses."""

    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@contextlib.contextmanager
def asgi_served(app: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn, lifespan on, until the block ends; give its URL."""
    import uvicorn  # noqa: PLC0415

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert poll(lambda: server.started, bool, timeout=30), "uvicorn did not start"
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
