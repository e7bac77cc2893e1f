"""The FastAPI example shop under real multi-process ASGI servers, whose workers come and go.

uvicorn, gunicorn with uvicorn's worker, Hypercorn and Granian each run it with three
workers, recycled by the server's own mechanism and, where the server survives it,
SIGKILLed; the shop's ``/metrics`` is ``veza_business_metrics.multiprocess.make_asgi_app``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from helpers import (
    EXAMPLES,
    LOGIN_CASES,
    LOGINS,
    ORDERS,
    REVENUE,
    ZERO,
    Scraper,
    WorkerWatcher,
    add,
    business_series,
    fetch,
    files_by_type,
    free_port,
    http_with_headers,
    key,
    poll,
    process_state,
    require_tool,
    running_prometheus,
    samples,
    server_workers,
    serving,
    started_at,
    traffic_under_failures,
    wait_for_server_workers,
)

if TYPE_CHECKING:
    from helpers import Key, Load, Prometheus, Series

WORKERS = 3
# Traffic runs while workers are killed or recycled, and as long as the server's
# load_seconds at least, but never more than this many requests or seconds.
REQUESTS = 20_000
MAX_LOAD_SECONDS = 60.0
# The pause before each kill or reload, so that traffic runs between them.
PAUSE = 2.0
KILL = "SIGKILL a worker"
RELOAD = "SIGHUP the master"


@dataclasses.dataclass(frozen=True)
class Server:
    """How a server runs the example shop, and what it survives."""

    name: str
    executable: str
    # The arguments, with {port} for the port to bind on 127.0.0.1.
    arguments: tuple[str, ...]
    # What happens to it while the traffic runs, in order.
    events: tuple[str, ...]
    # How many workers its own mechanism replaces in the run at least.
    recycles: int
    # Whether its master imports the package, and so writes its own files.
    master_writes: bool = False
    # How long the traffic runs at least, whatever the events.
    load_seconds: float = 12.0
    # How old a worker must be before a kill, lest the server take it for a crash loop.
    crash_loop_seconds: float = 0.0


SERVERS = (
    Server(
        "uvicorn",
        "uvicorn",
        (
            *("--host", "127.0.0.1", "--port", "{port}", "--workers", str(WORKERS)),
            *("--limit-max-requests", "200", "--limit-max-requests-jitter", "50"),
            "fastapi_app:app",
        ),
        (KILL, KILL, KILL),
        recycles=WORKERS,
    ),
    Server(
        "gunicorn-uvicorn-worker",
        "gunicorn",
        (
            *("--no-control-socket", "--config", str(EXAMPLES / "gunicorn" / "gunicorn.conf.py")),
            *("--bind", "127.0.0.1:{port}", "--workers", str(WORKERS)),
            *("--worker-class", "uvicorn_worker.UvicornWorker"),
            *("--max-requests", "200", "--max-requests-jitter", "50"),
            "fastapi_app:app",
        ),
        (KILL, KILL, KILL),
        recycles=WORKERS,
        # The config imports the package's hooks.
        master_writes=True,
    ),
    Server(
        "hypercorn",
        "hypercorn",
        (
            *("--bind", "127.0.0.1:{port}", "--workers", str(WORKERS)),
            *("--max-requests", "60", "--max-requests-jitter", "20"),
            "fastapi_app:app",
        ),
        # Hypercorn stops when a worker dies (test_hypercorn_stops_when_a_worker_dies):
        # it is only recycled.
        (),
        recycles=WORKERS,
        # It answers fewer requests a second than the others: it needs longer for as
        # many recycles.
        load_seconds=20.0,
    ),
    Server(
        "granian",
        "granian",
        (
            *("--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}"),
            *("--workers", str(WORKERS), "--respawn-failed-workers", "--respawn-interval", "1"),
            # Granian's shortest lifetime, too long for this run: a SIGHUP respawns every
            # worker gracefully the same way, and sooner.
            *("--workers-lifetime", "60"),
            # Without it, a TERM while a respawned worker starts waits for it forever.
            *("--workers-kill-timeout", "10"),
            "fastapi_app:app",
        ),
        (KILL, RELOAD, KILL, KILL),
        recycles=WORKERS,
        # Granian takes a worker's failure within 5.5 s of its (re)spawn for a crash loop,
        # and stops: past it even on a loaded machine, whose respawns are slow.
        crash_loop_seconds=7.0,
    ),
)


def await_successors(master: int, directory: Path, before: set[int]) -> None:
    """Wait until the workers started since ``before`` have imported the shop, or exited.

    The shop's histogram has a file once a worker imported it; a successor may also be
    recycled, and its files merged, before the wait sees it.
    """

    def waiting() -> set[int]:
        return {
            pid
            for pid in server_workers(master) - before
            if not (directory / f"histogram_{pid}.db").exists()
        }

    assert poll(waiting, lambda pids: not pids, timeout=60) == set()


def uptime() -> float:
    """Return the seconds since boot, the clock of a process's start time."""
    return float(Path("/proc/uptime").read_text().split()[0])


def kill_oldest_worker(master: int, directory: Path, crash_loop_seconds: float) -> int:
    """SIGKILL the server's oldest worker, wait until its successor has the app; return its pid.

    The oldest, and no younger than ``crash_loop_seconds``, since a server may take the
    failure of a young worker for a crash loop, and stop. A worker that the server
    recycles while we wait is not killed: the oldest of the workers after the wait is.
    """
    for _ in range(20):
        before = wait_for_server_workers(master, WORKERS)
        try:
            victim = min(before, key=started_at)
            birth = started_at(victim)
        except (FileNotFoundError, ProcessLookupError):  # recycled while we looked
            continue
        age = uptime() - birth / os.sysconf("SC_CLK_TCK")
        time.sleep(max(0.0, crash_loop_seconds - age))
        try:
            if started_at(victim) != birth:  # recycled, and the pid taken again
                continue
            os.kill(victim, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):  # recycled while we waited
            continue
        wait_for_server_workers(master, WORKERS, gone=victim)
        await_successors(master, directory, before)
        return victim
    pytest.fail(f"server {master} recycled the oldest worker 20 times before it could be killed")


def reload_every_worker(master: int, directory: Path) -> None:
    """SIGHUP the server, and wait until each of its workers has been replaced."""
    before = wait_for_server_workers(master, WORKERS)
    os.kill(master, signal.SIGHUP)
    workers = poll(
        lambda: server_workers(master),
        lambda workers: len(workers) == WORKERS and not workers & before,
        timeout=60,
    )
    assert not workers & before, f"the workers {workers & before} outlived the SIGHUP"
    await_successors(master, directory, before)


def reap_strays(watcher: WorkerWatcher) -> set[int]:
    """SIGKILL the workers that ``watcher`` saw and outlived their stopped server; return them.

    They get 5 s to exit first. A pid counts only while its start time is the one the
    watcher saw: a process that reused it since is not the server's.
    """

    def running() -> set[int]:
        alive = set()
        for pid, birth in watcher.seen.items():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if started_at(pid) == birth and process_state(pid) != "Z":
                    alive.add(pid)
        return alive

    strays = poll(running, lambda alive: not alive, timeout=5)
    for pid in strays:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return strays


def check_against_load(final: Series, expected: Series, unsure: Series) -> None:
    """Check that ``final`` is ``expected``, plus part of what unanswered requests would add."""
    assert expected.keys() <= final.keys(), expected.keys() - final.keys()
    assert final.keys() <= expected.keys() | unsure.keys(), final.keys() - expected.keys()
    for series, value in final.items():
        extra = value - expected.get(series, 0.0)
        assert 0.0 <= extra <= unsure.get(series, 0.0), (series, value, expected.get(series))


@dataclasses.dataclass
class Run:
    """What a run of the shop under a server saw."""

    server: Server
    expected: Series
    final: Series
    load: Load
    scraper: Scraper
    watcher: WorkerWatcher
    first: set[int]
    kills: int
    at_end: dict[str, int]
    strays: set[int]
    seconds: float
    # The exemplars of the last scrape, in OpenMetrics: trace id, span id, value.
    exemplars: dict[Key, tuple[str, str, float]]

    @property
    def recycles(self) -> int:
        """Return how many workers the server's own mechanism replaced."""
        return len(self.watcher.seen.keys() - self.first) - self.kills

    def figures(self) -> str:
        """Return the figures of the run, for the test to print."""
        load, scraper = self.load, self.scraper
        return (
            f"{self.server.name}: {load.requests()} requests acknowledged,"
            f" {load.unanswered} unanswered, {len(load.unexpected)} answered otherwise,"
            f" {scraper.scrapes} scrapes, {len(scraper.decreases)} decreases,"
            f" {scraper.unavailable} answered 503, slowest scrape {scraper.slowest:.2f} s,"
            f" {self.kills} kills, {self.recycles} recycles, at most {self.watcher.most}"
            f" workers at once, files at the peak {dict(scraper.peak_files)}, at the end"
            f" {self.at_end}, {self.seconds:.1f} s, exemplars at the end {self.exemplars}"
        )


def apply(server: Server, master: int, directory: Path) -> int:
    """Kill or reload the workers as ``server.events`` says, a pause before each; count kills."""
    kills = 0
    for event in server.events:
        time.sleep(PAUSE)
        if event == KILL:
            kill_oldest_worker(master, directory, server.crash_loop_seconds)
            kills += 1
        else:
            reload_every_worker(master, directory)
    return kills


def run_shop(server: Server, tmp_path: Path) -> Run:
    """Serve the shop with ``server`` under traffic, scrapes and ``server.events``."""
    executable = require_tool(server.executable)
    directory = tmp_path / "metrics"
    directory.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [executable, *(argument.format(port=port) for argument in server.arguments)]
    # Each request in a sampled span: workers write exemplars while they are recycled and
    # killed, and every scrape reads them.
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "PYTHONPATH": str(EXAMPLES),
        "SHOP_TRACES": "1",
    }
    # The trailing slash saves the redirect of the mount.
    scraper = Scraper(f"{base}/metrics/", directory, interval=0.05, seconds=120)
    log = tmp_path / f"{server.name}.log"
    started = time.monotonic()
    with serving(command, f"{base}/metrics", tmp_path, log, env) as master:
        watcher = WorkerWatcher(master.pid, seconds=120)
        try:
            first = wait_for_server_workers(master.pid, WORKERS)
            expected = samples(fetch(f"{base}/metrics"))
            assert business_series(fetch(f"{base}/metrics")) == ZERO
            scraper.start()
            watcher.start()
            stop = threading.Event()
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                running = pool.submit(
                    traffic_under_failures, base, REQUESTS, MAX_LOAD_SECONDS, until=stop
                )
                try:
                    kills = apply(server, master.pid, directory)
                    time.sleep(max(PAUSE, started + server.load_seconds - time.monotonic()))
                finally:
                    stop.set()
                load = running.result(timeout=MAX_LOAD_SECONDS + 60)
            scraper.stop()
            assert master.poll() is None, f"{server.name} stopped:\n{log.read_text()}"
            final = samples(fetch(f"{base}/metrics"))
            exemplars = exemplars_served(f"{base}/metrics/")
            at_end = files_by_type(directory)
        finally:
            scraper.stop()
            watcher.stop()
            master.terminate()
            master.wait(timeout=60)
            strays = reap_strays(watcher)
    seconds = time.monotonic() - started
    return Run(
        server,
        expected,
        final,
        load,
        scraper,
        watcher,
        first,
        kills,
        at_end,
        strays,
        seconds,
        exemplars,
    )


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS, ids=[server.name for server in SERVERS])
def test_workers_that_come_and_go_keep_every_count(tmp_path: Path, server: Server) -> None:
    """Recycled and SIGKILLed workers: scrapes never go down, end exact, files stay bounded."""
    run = run_shop(server, tmp_path)
    print(f"\n{run.figures()}")  # noqa: T201  (the figures a change's note quotes, with -s)
    assert run.strays == set(), f"{server.name} left workers running after it stopped"
    assert run.scraper.decreases == []
    assert run.scraper.errors == []
    assert run.scraper.scrapes > 20
    assert run.load.unexpected == []
    assert run.load.requests() > 500
    check_against_load(run.final, add(run.expected, run.load.acknowledged), run.load.unsure)
    assert run.kills == server.events.count(KILL)
    assert run.recycles >= server.recycles
    # Per type: a file per live worker, the master's if it writes one, and the archive.
    extra = server.master_writes + 1
    assert max(run.scraper.peak_files.values()) <= run.watcher.most + extra
    assert max(run.at_end.values()) <= WORKERS + extra
    # The traffic completes orders of 100 cents and logs in with every outcome.
    for series, value in [
        (key(REVENUE, "currency", "EUR"), 100.0),
        (key(ORDERS, "status", "completed"), 1.0),
        (key(LOGINS, "outcome", "success"), 1.0),
    ]:
        trace_id, span_id, served = run.exemplars[series]
        assert re.fullmatch("[0-9a-f]{32}", trace_id), trace_id
        assert re.fullmatch("[0-9a-f]{16}", span_id), span_id
        assert served == value


def exemplars_served(url: str) -> dict[Key, tuple[str, str, float]]:
    """Return the exemplar of each series that an OpenMetrics scrape of ``url`` serves."""
    from prometheus_client.openmetrics.parser import (  # noqa: PLC0415
        text_string_to_metric_families,
    )

    accept = {"Accept": "application/openmetrics-text"}
    request = urllib.request.Request(url, headers=accept)  # noqa: S310  a local server
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): (
            sample.exemplar.labels["trace_id"],
            sample.exemplar.labels["span_id"],
            sample.exemplar.value,
        )
        for family in text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
        for sample in family.samples
        if sample.exemplar is not None
    }


def test_hypercorn_stops_when_a_worker_dies(tmp_path: Path) -> None:
    """Hypercorn with workers stops altogether, with status 0, when one of them is SIGKILLed."""
    hypercorn = require_tool("hypercorn")
    directory = tmp_path / "metrics"
    directory.mkdir()
    port = free_port()
    command = [hypercorn, "--bind", f"127.0.0.1:{port}", "--workers", "2", "fastapi_app:app"]
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(EXAMPLES)}
    url = f"http://127.0.0.1:{port}/metrics"
    with serving(command, url, tmp_path, tmp_path / "hypercorn.log", env) as master:
        victim, survivor = sorted(wait_for_server_workers(master.pid, 2))
        os.kill(victim, signal.SIGKILL)
        # 0, the status of the last worker it stopped: a supervisor that restarts it on
        # failure only (systemd's Restart=on-failure) would not restart it.
        assert master.wait(timeout=30) == 0
        assert not poll(Path(f"/proc/{survivor}").exists, lambda alive: not alive, timeout=30)


def test_fastapi_example_serves_metrics_only_with_its_token(tmp_path: Path) -> None:
    """With METRICS_TOKEN set, the example's multiprocess /metrics answers 401 without it."""
    uvicorn = require_tool("uvicorn")
    directory = tmp_path / "metrics"
    directory.mkdir()
    port = free_port()
    command = [uvicorn, "--port", str(port), "--workers", "2", "fastapi_app:app"]
    token = "a-token-only-prometheus-knows"  # noqa: S105
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "PYTHONPATH": str(EXAMPLES),
        "METRICS_TOKEN": token,
    }
    url = f"http://127.0.0.1:{port}/metrics/"
    with serving(command, f"http://127.0.0.1:{port}/docs", tmp_path, tmp_path / "log", env):
        with pytest.raises(urllib.error.HTTPError) as refused:
            fetch(url)
        assert refused.value.code == 401
        refused.value.close()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            assert business_series(response.read().decode()) == ZERO


# The traced traffic: this many requests at the most, for this many seconds at the most,
# long enough for several scrapes to catch the newest exemplar of different workers.
TRACED_REQUESTS = 3_000
TRACED_SECONDS = 6.0


@dataclasses.dataclass(frozen=True)
class Span:
    """A request that the traced shop answered: its span, its worker and what it recorded."""

    trace_id: str
    span_id: str
    pid: int
    # Each series it incremented, by name and labels, with the increment.
    recorded: dict[Key, float]


def traced_request(base: str, number: int) -> Span:
    """Send request ``number`` of the traced traffic; return the span that answered it.

    In turn, a login, a completed order whose amount tells it apart, a created order and
    a failed one.
    """
    body: object = None
    if number % 4 == 0:
        body, status, outcome = LOGIN_CASES[number // 4 % len(LOGIN_CASES)]
        path, recorded = "/login", {key(LOGINS, "outcome", outcome): 1.0}
    elif number % 4 == 1:
        amount = 100 + number
        body, status = {"amount_cents": amount, "currency": "EUR"}, 200
        path = f"/orders/{number}/complete"
        recorded = {
            key(REVENUE, "currency", "EUR"): float(amount),
            key(ORDERS, "status", "completed"): 1.0,
        }
    elif number % 4 == 2:
        body, status, path = {}, 201, "/orders"
        recorded = {key(ORDERS, "status", "created"): 1.0}
    else:
        status, path = 200, f"/orders/{number}/fail"
        recorded = {key(ORDERS, "status", "failed"): 1.0}
    answer, _, headers = http_with_headers("POST", f"{base}{path}", body)
    assert answer == status, (path, answer)
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (version, flags) == ("00", "01"), headers["traceparent"]
    return Span(trace_id, span_id, int(headers["x-worker-pid"]), recorded)


def traced_traffic(base: str, requests: int, seconds: float) -> dict[tuple[str, str], Span]:
    """Send ``requests`` traced requests at the most, for ``seconds`` at the most, 6 at a time.

    Returns the spans that answered them, by trace id and span id.
    """
    deadline = time.monotonic() + seconds

    def send(number: int) -> Span | None:
        return traced_request(base, number) if time.monotonic() < deadline else None

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        spans = [span for span in pool.map(send, range(requests)) if span is not None]
    return {(span.trace_id, span.span_id): span for span in spans}


@dataclasses.dataclass(frozen=True)
class Exemplar:
    """An exemplar that Prometheus returned, with the series it is of."""

    series: Key
    trace_id: str
    span_id: str
    value: float


def exemplars_of(prometheus: Prometheus, promql: str, start: float) -> list[Exemplar]:
    """Return the exemplars that Prometheus holds since ``start`` for ``promql``'s series."""
    found = []
    for item in prometheus.exemplars(promql, start, time.time() + 60):
        labels = item["seriesLabels"]
        series = (
            labels["__name__"],
            tuple(
                (name, value)
                for name, value in sorted(labels.items())
                if name not in {"__name__", "instance", "job"}
            ),
        )
        for exemplar in item["exemplars"]:
            ids = exemplar["labels"]
            assert ids.keys() == {"trace_id", "span_id"}, ids
            found.append(
                Exemplar(series, ids["trace_id"], ids["span_id"], float(exemplar["value"]))
            )
    return found


def test_prometheus_keeps_exemplars_of_spans_from_every_worker(tmp_path: Path) -> None:
    """Prometheus keeps exemplars of 3 uvicorn workers' spans, each one a span the shop had."""
    uvicorn = require_tool("uvicorn")
    directory = tmp_path / "metrics"
    directory.mkdir()
    port = free_port()
    address = f"127.0.0.1:{port}"
    command = [uvicorn, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(WORKERS), "fastapi_app:app"]
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "PYTHONPATH": str(EXAMPLES),
        "SHOP_TRACES": "1",
    }
    rules = tmp_path / "rules.yml"
    rules.write_text("groups: []\n")
    start = time.time()
    names = (REVENUE, ORDERS, LOGINS)
    log = tmp_path / "uvicorn.log"
    with serving(command, f"http://{address}/metrics", tmp_path, log, env) as master:
        wait_for_server_workers(master.pid, WORKERS)
        with running_prometheus(
            tmp_path, rules, {"shop": [address]}, flags=["--enable-feature=exemplar-storage"]
        ) as prometheus:
            up = poll(lambda: prometheus.query('up{job="shop"}'), lambda up: len(up) == 1)
            assert [item["value"][1] for item in up] == ["1"], log.read_text()
            spans = traced_traffic(f"http://{address}", TRACED_REQUESTS, TRACED_SECONDS)

            def returned() -> dict[str, list[Exemplar]]:
                return {name: exemplars_of(prometheus, name, start) for name in names}

            def workers(found: dict[str, list[Exemplar]]) -> set[int]:
                return {
                    spans[exemplar.trace_id, exemplar.span_id].pid
                    for exemplars in found.values()
                    for exemplar in exemplars
                    if (exemplar.trace_id, exemplar.span_id) in spans
                }

            found = poll(
                returned,
                lambda found: all(found.values()) and len(workers(found)) >= 2,
                timeout=20,
            )
            # A scrape that failed, an exposition Prometheus could not parse, says why here.
            scrapes = [
                (target["health"], target["lastError"])
                for target in prometheus.api("targets")["activeTargets"]
            ]
    every = [exemplar for name in names for exemplar in found[name]]
    sample = []
    # The newest exemplar of each series, against the response that told its span.
    for exemplar in (found[name][-1] for name in names if found[name]):
        span = spans.get((exemplar.trace_id, exemplar.span_id))
        told = (
            f"the response of worker {span.pid} told trace_id {span.trace_id} span_id"
            f" {span.span_id}"
            if span
            else "no response told them"
        )
        sample.append(
            f"{exemplar.series[0]}{dict(exemplar.series[1])}: Prometheus returned trace_id"
            f" {exemplar.trace_id} span_id {exemplar.span_id}; {told}"
        )
    figures = (
        f"{len(spans)} traced requests answered by the workers"
        f" {sorted({span.pid for span in spans.values()})}; Prometheus returned"
        f" {len(every)} exemplars, from the spans of the workers {sorted(workers(found))};"
        f" the last scrape's health and error: {scrapes}\n" + "\n".join(sample)
    )
    (tmp_path / "exemplars.txt").write_text(f"{figures}\n")
    print(f"\n{figures}")  # noqa: T201  (the trace ids a change's note quotes, with -s)
    assert len({span.pid for span in spans.values()}) >= 2, figures
    assert all(found[name] for name in names), figures
    for exemplar in every:
        span = spans.get((exemplar.trace_id, exemplar.span_id))
        assert span is not None, f"{exemplar} is of no span the shop had\n{figures}"
        assert span.recorded.get(exemplar.series) == exemplar.value, (exemplar, span)
    assert len(workers(found)) >= 2, figures
