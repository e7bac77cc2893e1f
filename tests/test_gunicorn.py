"""Real gunicorn, with the example config, against what goes wrong beside a running server.

A duplicate start, a second server on the same directory, a scraper stopped while it
holds the lock, and a corrupt file: the running server keeps serving, its totals stay
exact and its directory stays bounded.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import pytest

from helpers import (
    FAST_REQUEST,
    RECYCLING,
    SLOWEST_SCRAPE,
    STOP_SECONDS,
    Scraper,
    add,
    another_server,
    fetch,
    figures,
    file_names,
    files_by_type,
    free_port,
    kill_a_worker,
    plant_corrupt_file,
    poll,
    samples,
    scraped_files_by_type,
    shop_under_gunicorn,
    through_a_stop,
    traffic,
    wait_for_workers,
)
from veza_business_metrics import gunicorn as hooks

if TYPE_CHECKING:
    from pathlib import Path


def test_a_duplicate_start_leaves_the_running_server_exact(tmp_path: Path) -> None:
    """A second start of the same config cannot bind and exits non-zero, deleting nothing."""
    with shop_under_gunicorn(tmp_path, *RECYCLING) as shop:
        scraper = Scraper(shop.metrics_url, shop.directory)
        expected = samples(fetch(shop.metrics_url))
        scraper.start()
        try:
            expected = add(expected, traffic(shop.base, 300, ping=True))
            kill_a_worker(shop)
            at_duplicate = expected
            before = samples(fetch(shop.metrics_url))
            peak = scraper.take_peak()
            duplicate = shop.start_again()
            # A start that emptied the directory would show at once, before more counts.
            after = samples(fetch(shop.metrics_url))
            peak_duplicate = scraper.take_peak()
            archives = sorted(path.name for path in shop.directory.glob("*_archive.db"))
            expected = add(expected, traffic(shop.base, 300, ping=True))
            kill_a_worker(shop)
            expected = add(expected, traffic(shop.base, 100, ping=True))
        finally:
            scraper.stop()
        final = samples(fetch(shop.metrics_url))
        at_end = files_by_type(shop.directory)
        serving = shop.master.poll() is None
    summary = (
        f"{figures(expected, [scraper], peak)}, while the duplicate ran {peak_duplicate},"
        f" after it {scraper.peak_files}, at the end {at_end}"
    )
    print(f"\nduplicate start: {summary}")  # noqa: T201  the figures a change's note quotes
    assert duplicate.returncode != 0, duplicate.stderr
    assert "Connection in use" in duplicate.stderr, duplicate.stderr
    # It never bound, so it never took the directory.
    assert "Cannot serve the metrics" not in duplicate.stderr, duplicate.stderr
    assert serving
    assert before == at_duplicate, summary
    assert after == at_duplicate, f"the duplicate start changed the totals: {summary}"
    assert archives == ["counter_archive.db", "histogram_archive.db"]
    assert final == expected, summary
    assert scraper.decreases == [], summary
    assert scraper.unavailable == 0, summary
    assert scraper.errors == [], summary
    assert max(peak.values()) <= shop.bound, summary
    # The duplicate's master imports the package through the config, and so writes its
    # zero series there until a scrape merges them once it has exited.
    assert max(peak_duplicate.values()) <= shop.bound + 1, summary
    assert max(scraper.peak_files.values()) <= shop.bound, summary
    assert max(at_end.values()) <= shop.bound, summary


def test_a_second_server_on_the_same_directory_exits_and_deletes_nothing(tmp_path: Path) -> None:
    """A server on another port but the same directory exits 1, saying why in one line."""
    with shop_under_gunicorn(tmp_path) as shop:
        scraper = Scraper(shop.metrics_url, shop.directory)
        expected = samples(fetch(shop.metrics_url))
        scraper.start()
        try:
            expected = add(expected, traffic(shop.base, 200, ping=True))
            kept = file_names(shop.directory)
            other = shop.start_again(SHOP_BIND=f"127.0.0.1:{free_port()}")
            left = file_names(shop.directory)
            after = samples(fetch(shop.metrics_url))
            later = add(expected, traffic(shop.base, 200, ping=True))
        finally:
            scraper.stop()
        final = samples(fetch(shop.metrics_url))
        serving = shop.master.poll() is None
    summary = f"{figures(later, [scraper], scraper.peak_files)}, the other said {other.stderr}"
    print(f"\nsecond server: {figures(later, [scraper], scraper.peak_files)}")  # noqa: T201
    reasons = [line for line in other.stderr.splitlines() if "in use by another server" in line]
    assert other.returncode == 1, summary
    assert len(reasons) == 1, summary
    assert f"Cannot serve the metrics: {shop.directory.resolve()} is in use" in reasons[0]
    assert f"pid {shop.master.pid}" in reasons[0]
    assert kept <= left, f"deleted {sorted(kept - left)}"
    assert serving
    assert after == expected, summary
    assert final == later, summary
    assert scraper.decreases == [], summary
    assert scraper.unavailable == 0, summary
    assert scraper.errors == [], summary
    # The other's master imports the package through the config, and so writes its zero
    # series there until a scrape merges them once it has exited.
    assert max(scraper.peak_files.values()) <= shop.bound + 1, summary


def test_a_scraper_stopped_with_the_lock_holds_up_no_request_for_long(tmp_path: Path) -> None:
    """A process stopped for 5 s holding a scrape's lock: requests stay fast, all ends exact."""
    with shop_under_gunicorn(tmp_path, *RECYCLING) as shop:
        scraper = Scraper(shop.metrics_url, shop.directory)
        expected = samples(fetch(shop.metrics_url))
        scraper.start()
        try:
            expected = add(expected, traffic(shop.base, 200, ping=True))
            peak_before = scraper.take_peak()
            stop = through_a_stop(shop, STOP_SECONDS)
            expected = add(expected, stop.logins)
            at_resume = expected
            # The stop's dead files, merged by now.
            peak_stopped = scraper.take_peak()
            expected = add(expected, traffic(shop.base, 200, ping=True))
        finally:
            scraper.stop()
        final = samples(fetch(shop.metrics_url))
        at_end = files_by_type(shop.directory)
    summary = (
        f"{figures(expected, [scraper], peak_before)}; {stop}; files while stopped"
        f" {peak_stopped}, after more traffic {scraper.peak_files}, at the end {at_end}"
    )
    print(f"\nstopped scraper: {summary}")  # noqa: T201  the figures a change's note quotes
    assert max(stop.latencies) < FAST_REQUEST, summary
    assert len(stop.latencies) > 20, summary
    assert stop.scrape_status in {200, 503}, summary
    assert stop.scrape_seconds < SLOWEST_SCRAPE, summary
    assert scraper.slowest < SLOWEST_SCRAPE, summary
    assert scraper.errors == [], summary
    # Merges wait for the stopped process: the dead worker's file stays until it goes.
    assert stop.victim_kept, summary
    assert stop.after == at_resume, summary
    assert stop.victim_gone, summary
    assert max(stop.at_rest.values()) <= shop.bound, summary
    assert final == expected, summary
    assert scraper.decreases == [], summary
    assert max(peak_before.values()) <= shop.bound, summary
    assert max(scraper.peak_files.values()) <= shop.bound, summary
    assert max(at_end.values()) <= shop.bound, summary


def test_a_corrupt_worker_file_is_moved_aside_and_totals_stay_exact(tmp_path: Path) -> None:
    """A dead worker's file with a key that is not JSON is moved aside; scrapes stay exact."""
    with shop_under_gunicorn(tmp_path, *RECYCLING) as shop:
        scraper = Scraper(shop.metrics_url, shop.directory)
        expected = samples(fetch(shop.metrics_url))
        scraper.start()
        try:
            expected = add(expected, traffic(shop.base, 200, ping=True))
            peak_before = scraper.take_peak()
            planted = plant_corrupt_file(
                shop.directory, wait_for_workers(shop.master.pid, shop.workers)
            )
            expected = add(expected, traffic(shop.base, 200, ping=True))
            # The next merge, a worker's exit or a scrape's, sets it aside.
            corrupt = poll(
                lambda: sorted(shop.directory.glob(f"{planted.stem}.*.corrupt")), bool, 30
            )
            peak_planted = scraper.take_peak()
            expected = add(expected, traffic(shop.base, 100, ping=True))
        finally:
            scraper.stop()
        final = samples(fetch(shop.metrics_url))
        # Every file but the one set aside, which no scrape reads and no merge takes.
        at_end = scraped_files_by_type(shop.directory)
    summary = (
        f"{figures(expected, [scraper], peak_before)}, until it was set aside {peak_planted},"
        f" after {scraper.peak_files}, at the end {at_end}"
    )
    print(f"\ncorrupt file: {summary}, set aside as {[path.name for path in corrupt]}")  # noqa: T201
    assert [path.name.split(".")[1] for path in corrupt] == ["bad-key"], summary
    assert not planted.exists()
    log = shop.log.read_text()
    assert f"Moved {planted.resolve()} aside as {corrupt[0].resolve()}" in log, log[-3000:]
    assert scraper.unavailable == 0, summary
    assert scraper.errors == [], summary
    assert scraper.decreases == [], summary
    assert final == expected, summary
    assert max(peak_before.values()) <= shop.bound, summary
    # The planted file is one more, until it is set aside.
    assert max(peak_planted.values()) <= shop.bound + 1, summary
    assert max(scraper.peak_files.values()) <= shop.bound, summary
    assert max(at_end.values()) <= shop.bound, summary


@dataclasses.dataclass
class Arbiter:
    """What the hooks read of gunicorn's arbiter and workers: pids and the log."""

    master_pid: int
    pid: int = 0
    log: logging.Logger = dataclasses.field(
        default_factory=lambda: logging.getLogger("test.gunicorn")
    )


def test_when_ready_clears_on_a_cold_start_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold start empties the directory; a USR2 successor joins it and keeps every file."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    stale = directory / "counter_999999.db"
    stale.write_bytes(b"")
    hooks.when_ready(Arbiter(master_pid=4242))
    assert stale.exists()
    hooks.when_ready(Arbiter(master_pid=0))
    assert not stale.exists()


def test_when_ready_stops_a_second_server_with_one_logged_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory that another live server holds stops this one, saying why, deleting nothing."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    with another_server(directory, "attach"):
        kept = directory / "counter_999999.db"
        kept.write_bytes(b"")
        with caplog.at_level(logging.ERROR, logger="test.gunicorn"), pytest.raises(SystemExit):
            hooks.when_ready(Arbiter(master_pid=0))
    assert kept.exists()
    (line,) = caplog.messages
    assert line.startswith(f"Cannot serve the metrics: {directory} is in use by another server")


def test_child_exit_logs_a_merge_that_fails_instead_of_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A merge that raises is logged, since raising would halt gunicorn's master."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    (directory / "counter_archive.db").write_bytes(bytes(8))  # not this library's
    (directory / f"counter_{2**22 + 1}.db").write_bytes(bytes(8))
    with caplog.at_level(logging.ERROR, logger="test.gunicorn"):
        hooks.child_exit(Arbiter(master_pid=0), Arbiter(master_pid=1, pid=2**22 + 1))
    assert f"Could not merge the metrics files of worker {2**22 + 1}" in caplog.text
