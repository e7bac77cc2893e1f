"""uWSGI as a tested host: the Flask shop (examples/uwsgi/) and the Django shop under it.

uWSGI's master runs no Python when a worker exits, so nothing calls
``mark_process_dead``: the example's ``metrics_hooks`` makes each new worker sweep, and
``make_wsgi_app`` sweeps before each scrape. The server is pyuwsgi, the PyPI wheel that
embeds uWSGI in this interpreter (``requirements/test.txt``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from helpers import (
    EXAMPLES,
    LOGINS,
    ZERO,
    Load,
    Scraper,
    acknowledged,
    add,
    business_series,
    fetch,
    file_names,
    files_by_type,
    free_port,
    http,
    key,
    outside_bounds,
    poll,
    require_tool,
    samples,
    server_workers,
    serving,
    traffic_under_failures,
    wait_for_server_workers,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from helpers import Series

FLASK_INI = EXAMPLES / "uwsgi" / "uwsgi.ini"
DJANGO_INI = EXAMPLES / "django_app" / "uwsgi.ini"
PROCESSES = 3
# Per type: at most one file per live worker, the master's (it loads the app) and the
# archive.
FILES_BOUND = PROCESSES + 1 + 1
# Worker N is replaced after 60 + 30 * N requests, so that they do not all go at once,
# once it has lived a second: uWSGI's default minimum lifetime, 10 s, would recycle none
# in a run this short. uWSGI also sleeps 2 s when as many workers as it has are respawned
# within a second, which recycling this fast often does: that would only slow the run,
# and a SIGTERM during the sleep leaves the respawned worker to linger 30 s.
RECYCLING = (
    *("--max-requests", "60", "--max-requests-delta", "30"),
    *("--min-worker-lifetime", "1", "--forkbomb-delay", "0"),
)
BURSTS = 5
REQUESTS_PER_BURST = 600
# django-prometheus's own request counter, by HTTP method: every request of the load is
# a POST.
POSTS = key("django_http_requests_total_by_method_total", "method", "POST")


@dataclasses.dataclass
class Run:
    """What a recycling run under uWSGI saw."""

    load: Load
    start: Series
    final: Series
    scraper: Scraper
    kills: int
    recycles: int
    at_end: dict[str, int]

    def counted(self) -> int:
        """Return how many requests of the load the final scrape counts."""
        return acknowledged(self.final) - acknowledged(self.start)

    def __str__(self) -> str:
        """Return the figures, for the test to print and its assertions to quote."""
        return (
            f"{self.load.requests()} requests acknowledged, {self.load.unanswered} unanswered"
            f" (of which {self.counted() - self.load.requests()} counted),"
            f" {len(self.load.unexpected)} answered otherwise, {self.scraper.scrapes} scrapes,"
            f" {len(self.scraper.decreases)} decreases, {self.scraper.unavailable} answered 503,"
            f" {self.kills} kills, {self.recycles} recycles, files at the peak"
            f" {dict(self.scraper.peak_files)}, at the end {self.at_end}"
        )


def uwsgi_command(ini: Path, *options: str) -> list[str]:
    """Return the command that serves the example of ``ini`` with pyuwsgi."""
    # Not "uwsgi", which may be Debian's, built for another Python.
    return [require_tool("pyuwsgi"), "--ini", str(ini), *options]


def kill_a_worker(master: int, directory: Path) -> int:
    """SIGKILL a worker that has written its counter file, wait until it is replaced."""
    for _ in range(10):
        # The load goes on meanwhile, so workers come and go: a victim is one that has
        # counted something, alive when chosen.
        victim = poll(
            lambda: min(
                (
                    pid
                    for pid in server_workers(master)
                    if (directory / f"counter_{pid}.db").exists()
                ),
                default=0,
            ),
            bool,
            timeout=30,
        )
        assert victim, f"no worker of {master} has written a counter file"
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:  # recycled since
            continue
        wait_for_server_workers(master, PROCESSES, gone=victim)
        return victim
    pytest.fail(f"every worker of {master} chosen to be killed had exited by then")


def run_recycling(tmp_path: Path, ini: Path, *, ping: bool) -> Run:
    """Serve ``ini``'s example with recycled workers, SIGKILL some under load, and scrape.

    A stale file of an earlier run waits in the directory, which the cold start must
    delete; the run asserts that it did.
    """
    directory = tmp_path / "metrics"
    directory.mkdir()
    stale = directory / "counter_999999.db"
    stale.write_bytes(b"left over by an earlier run")
    base = f"http://127.0.0.1:{free_port()}"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "SHOP_BIND": base.removeprefix("http://")}
    log = tmp_path / "uwsgi.log"
    scraper = Scraper(f"{base}/metrics", directory, seconds=120)
    load = Load()
    kills = 0
    command = uwsgi_command(ini, *RECYCLING)
    with serving(command, f"{base}/metrics", tmp_path, log, env) as master:
        wait_for_server_workers(master.pid, PROCESSES)
        assert not stale.exists()
        start = samples(fetch(f"{base}/metrics"))
        assert business_series(fetch(f"{base}/metrics")) == ZERO
        scraper.start()
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                for _ in range(BURSTS):
                    burst = pool.submit(
                        traffic_under_failures, base, REQUESTS_PER_BURST, 30, ping=ping
                    )
                    # Killed while requests are in flight, as a crash would.
                    time.sleep(0.5)
                    kill_a_worker(master.pid, directory)
                    kills += 1
                    done = burst.result()
                    load = Load(
                        acknowledged=add(load.acknowledged, done.acknowledged),
                        unsure=add(load.unsure, done.unsure),
                        unanswered=load.unanswered + done.unanswered,
                        unexpected=load.unexpected + done.unexpected,
                        not_sent=load.not_sent + done.not_sent,
                    )
        finally:
            scraper.stop()
        final = samples(fetch(f"{base}/metrics"))
        # A worker recycled by the last requests may still be exiting, its files open,
        # while its successor starts: the count is taken once the workers settle, each
        # scrape merging the files of those gone.
        at_end = poll(
            lambda: (fetch(f"{base}/metrics"), files_by_type(directory))[1],
            lambda files: max(files.values()) <= FILES_BOUND,
            timeout=30,
        )
    recycles = log.read_text(errors="replace").count("is done. Seeya!")
    return Run(load, start, final, scraper, kills, recycles, at_end)


def check_run(
    run: Run, counted: Callable[[Series], Series], per_request: Series | None = None
) -> None:
    """Assert what every recycling run must show, on the series that ``counted`` keeps.

    ``per_request`` is what every request of the load adds besides what the load itself
    expects, such as a host's count of requests.
    """
    assert run.load.not_sent == 0, str(run)
    assert run.load.unexpected == [], str(run)
    assert run.scraper.decreases == [], str(run)
    assert run.scraper.errors == [], str(run)
    assert run.scraper.unavailable == 0, str(run)
    assert run.scraper.scrapes > 50, str(run)
    assert run.kills == BURSTS, str(run)
    assert run.recycles >= 10, str(run)
    unsure = run.load.unanswered + len(run.load.unexpected)
    least = add(run.start, run.load.acknowledged)
    most = add(least, run.load.unsure)
    for series, value in (per_request or {}).items():
        least = add(least, {series: value * run.load.requests()})
        most = add(most, {series: value * (run.load.requests() + unsure)})
    least, most = counted(least), counted(most)
    final = counted(run.final)
    if run.load.unanswered == 0:
        assert final == least, str(run)
    assert outside_bounds(final, least, most) == [], str(run)
    assert max(run.scraper.peak_files.values()) <= FILES_BOUND, str(run)
    assert max(run.at_end.values()) <= FILES_BOUND, str(run)


@pytest.mark.slow
def test_uwsgi_recycling_workers_stay_exact_and_bounded(tmp_path: Path) -> None:
    """Recycled and SIGKILLed uWSGI workers: scrapes never go down, end exact, files bounded."""
    run = run_recycling(tmp_path, FLASK_INI, ping=True)
    print(f"\nuWSGI, Flask shop: {run}")  # noqa: T201  (the figures, with -s)
    # Every sample: the business counters, the host's counter and histogram.
    check_run(run, lambda series: series)
    assert run.final[key("shop_pings_total")] > 0


@pytest.mark.slow
def test_django_under_uwsgi_stays_exact_and_bounded(tmp_path: Path) -> None:
    """The Django shop under uWSGI, recycled and killed: exact business and request counts."""
    run = run_recycling(tmp_path, DJANGO_INI, ping=False)
    print(f"\nuWSGI, Django shop: {run}")  # noqa: T201  (the figures, with -s)

    def counted(series: Series) -> Series:
        # django-prometheus also counts the scrapes, and times every request: only the
        # business counters and the POSTs, which are the load's requests, are known.
        return {**business_series_of(series), POSTS: series.get(POSTS, 0.0)}

    check_run(run, counted, per_request={POSTS: 1.0})


def business_series_of(series: Series) -> Series:
    """Return the veza_business_*_total samples of ``series``."""
    return {
        (name, labels): value
        for (name, labels), value in series.items()
        if name.startswith("veza_business_") and name.endswith("_total")
    }


def test_uwsgi_cold_start_empties_the_directory_and_refuses_a_second_server(
    tmp_path: Path,
) -> None:
    """The master's cold start deletes an earlier run's files; a second server on them stops."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"left over by an earlier run")
    (directory / "counter_archive.db").write_bytes(b"an earlier run's archive")
    (directory / "notes.txt").write_text("not a metrics file: it stays")
    base = f"http://127.0.0.1:{free_port()}"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "SHOP_BIND": base.removeprefix("http://")}
    command = uwsgi_command(FLASK_INI)
    with serving(command, f"{base}/metrics", tmp_path, tmp_path / "uwsgi.log", env) as master:
        workers = wait_for_server_workers(master.pid, PROCESSES)
        assert "counter_999999.db" not in file_names(directory)
        assert "counter_archive.db" not in file_names(directory)
        assert (directory / "notes.txt").exists()
        assert business_series(fetch(f"{base}/metrics")) == ZERO
        before = file_names(directory)
        second = subprocess.run(
            command,
            cwd=tmp_path,
            env={**os.environ, **env, "SHOP_BIND": f"127.0.0.1:{free_port()}"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode != 0
        assert "DirectoryInUseError" in second.stdout + second.stderr
        assert str(master.pid) in second.stdout + second.stderr
        # Nothing was deleted. The refused master had imported the package, and so
        # written its zero series, before it stopped: a dead process's file, which the
        # next scrape merges.
        added = file_names(directory) - before
        assert before <= file_names(directory)
        assert all(re.fullmatch(r"counter_\d+\.db", name) for name in added), added
        assert not any(Path(f"/proc/{name[8:-3]}").exists() for name in added), added
        assert wait_for_server_workers(master.pid, PROCESSES) == workers
        assert business_series(fetch(f"{base}/metrics")) == ZERO
        assert not added & file_names(directory)


def test_uwsgi_metrics_needs_the_token_of_its_file(tmp_path: Path) -> None:
    """With SHOP_METRICS_TOKEN_FILE set, /metrics answers 401 without its bearer token."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    token_file = tmp_path / "metrics-token"
    token_file.write_text("s3cret-scrape-token\n")
    base = f"http://127.0.0.1:{free_port()}"
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "SHOP_BIND": base.removeprefix("http://"),
        "SHOP_METRICS_TOKEN_FILE": str(token_file),
    }
    with serving(uwsgi_command(FLASK_INI), f"{base}/ping", tmp_path, tmp_path / "log", env):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            request = urllib.request.Request(f"{base}/metrics", headers=headers)  # noqa: S310
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)  # noqa: S310
            assert refused.value.code == 401
            refused.value.close()
        request = urllib.request.Request(  # noqa: S310
            f"{base}/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            scraped = samples(response.read().decode())
    assert business_series_of(scraped) == ZERO
    assert scraped[key("shop_pings_total")] >= 1


def test_uwsgi_reload_starts_the_counts_from_zero(tmp_path: Path) -> None:
    """A SIGHUP reload, with binary-path set as the docs say, starts the counts from zero."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    base = f"http://127.0.0.1:{free_port()}"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "SHOP_BIND": base.removeprefix("http://")}
    # pyuwsgi would otherwise reload into the interpreter that the virtualenv came from.
    command = uwsgi_command(FLASK_INI, "--binary-path", sys.executable)
    login = {"username": "alice", "password": "wonderland"}
    with serving(command, f"{base}/metrics", tmp_path, tmp_path / "log", env) as master:
        before = wait_for_server_workers(master.pid, PROCESSES)
        assert http("POST", f"{base}/login", login) == (200, {"outcome": "success"})
        assert business_series(fetch(f"{base}/metrics"))[key(LOGINS, "outcome", "success")] == 1
        master.send_signal(signal.SIGHUP)
        after = poll(
            lambda: server_workers(master.pid),
            lambda workers: len(workers) == PROCESSES and not workers & before,
            timeout=60,
        )
        assert len(after) == PROCESSES, after
        assert not after & before, after
        assert poll(lambda: business_series(fetch(f"{base}/metrics")), bool) == ZERO
        assert master.poll() is None
