"""A soak of real gunicorn, with the example config, under everything that goes wrong.

Recycled and SIGKILLed workers, a scrape storm, a scraper stopped while it holds the
lock, a duplicate start and a corrupt file, for five minutes: the totals end exact, no
scrape sees a series go down, and the directory stays bounded.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING, Final

import pytest

from helpers import (
    FAST_REQUEST,
    SLOWEST_SCRAPE,
    STOP_SECONDS,
    Scraper,
    add,
    fetch,
    figures,
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

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from helpers import Series, Shop, Stop

# How long the soak runs; VEZA_SOAK_SECONDS shortens it on a developer's machine only.
SOAK_SECONDS: Final = 300.0
# Lives long enough that starting workers does not take the machine's two cores.
SOAK_RECYCLING: Final = ("--max-requests", "150", "--max-requests-jitter", "30")
SCRAPERS: Final = 3
CLIENTS: Final = 4
# A pause after each round of traffic, which keeps the load moderate on two cores.
ROUND_PAUSE: Final = 0.5
SECONDS_BETWEEN_KILLS: Final = 20.0
# When the events come, as fractions of the run.
STOPS: Final = (0.25, 0.75)
DUPLICATE_START: Final = 0.4
CORRUPT_FILE: Final = 0.55
# However fast the rounds of traffic go, there are this many at the most.
MAX_ROUNDS: Final = 5_000


def soak_seconds() -> float:
    """Return how long the soak runs: SOAK_SECONDS, or less on a developer's machine."""
    seconds = float(os.environ.get("VEZA_SOAK_SECONDS", SOAK_SECONDS))
    if os.environ.get("CI") == "true":
        assert seconds >= SOAK_SECONDS, f"CI runs the whole soak, not {seconds} s"
    return seconds


@dataclasses.dataclass
class Soak:
    """What a soak did to a served shop, and what it saw."""

    shop: Shop
    scrapers: list[Scraper]
    expected: Series
    rounds: int = 0
    kills: int = 0
    # The peaks of the file counts, but while a stopped process holds merges off, and
    # while the duplicate's master has its file there.
    peaks: list[dict[str, int]] = dataclasses.field(default_factory=list)
    stops: list[Stop] = dataclasses.field(default_factory=list)
    duplicate: subprocess.CompletedProcess[str] | None = None
    peak_duplicate: dict[str, int] = dataclasses.field(default_factory=dict)
    planted: Path | None = None
    corrupt: list[Path] = dataclasses.field(default_factory=list)
    peak_planted: dict[str, int] = dataclasses.field(default_factory=dict)

    def traffic(self) -> None:
        """Send a round of requests over every route."""
        self.expected = add(
            self.expected, traffic(self.shop.base, 100, ping=True, concurrency=CLIENTS)
        )
        self.rounds += 1
        time.sleep(ROUND_PAUSE)

    def kill(self) -> None:
        """SIGKILL a worker, between rounds, when no request of ours is under way."""
        kill_a_worker(self.shop)
        self.kills += 1

    def stop_a_scraper(self) -> None:
        """Keep a process that holds a scrape's lock stopped for STOP_SECONDS."""
        self.peaks.append(self.scrapers[0].take_peak())
        stop = through_a_stop(self.shop, STOP_SECONDS)
        self.expected = add(self.expected, stop.logins)
        self.stops.append(stop)
        # Merges wait for the stopped process: the dead worker's file stays until it goes.
        assert stop.victim_kept, stop
        assert stop.after == self.expected, stop
        assert stop.victim_gone, stop
        assert max(stop.at_rest.values()) <= self.shop.bound, stop
        # The stop's dead files, merged by now.
        self.scrapers[0].take_peak()

    def start_a_duplicate(self) -> None:
        """Start the same server again, which cannot bind, and check the totals."""
        self.peaks.append(self.scrapers[0].take_peak())
        self.duplicate = self.shop.start_again()
        assert samples(fetch(self.shop.metrics_url)) == self.expected
        self.peak_duplicate = self.scrapers[0].take_peak()

    def plant(self) -> None:
        """Plant a corrupt copy of a worker's file, named as a dead process's."""
        self.peaks.append(self.scrapers[0].take_peak())
        workers = wait_for_workers(self.shop.master.pid, self.shop.workers)
        planted = self.planted = plant_corrupt_file(self.shop.directory, workers)
        # The next merge, a worker's exit or a scrape's, sets it aside.
        self.corrupt = poll(
            lambda: sorted(self.shop.directory.glob(f"{planted.stem}.*.corrupt")), bool, 30
        )
        self.peak_planted = self.scrapers[0].take_peak()

    def run(self, duration: float) -> float:
        """Send rounds of traffic for ``duration`` seconds, with the events among them.

        Returns how long it took.
        """
        started = time.monotonic()
        stops = [started + duration * fraction for fraction in STOPS]
        next_kill = started + SECONDS_BETWEEN_KILLS
        while time.monotonic() < started + duration and self.rounds < MAX_ROUNDS:
            self.traffic()
            now = time.monotonic()
            if now >= next_kill:
                self.kill()
                next_kill = now + SECONDS_BETWEEN_KILLS
            if stops and now >= stops[0]:
                stops.pop(0)
                self.stop_a_scraper()
            if self.duplicate is None and now >= started + duration * DUPLICATE_START:
                self.start_a_duplicate()
            if self.planted is None and now >= started + duration * CORRUPT_FILE:
                self.plant()
        return time.monotonic() - started

    def describe(self) -> str:
        """Return what it did and saw, for the test to print and to quote."""
        peak = {
            kind: max(each.get(kind, 0) for each in self.peaks)
            for kind in {kind for each in self.peaks for kind in each}
        }
        return (
            f"{self.rounds} rounds, {self.kills} workers killed;"
            f" {figures(self.expected, self.scrapers, peak)};"
            f" stops: {'; '.join(str(stop) for stop in self.stops)};"
            f" while the duplicate ran {self.peak_duplicate},"
            f" until the corrupt file was set aside {self.peak_planted}"
        )


@pytest.mark.slow
def test_gunicorn_soak_stays_exact_and_bounded(tmp_path: Path) -> None:
    """Five minutes of load and trouble: exact totals, no decrease, a bounded directory."""
    duration = soak_seconds()
    with shop_under_gunicorn(tmp_path, *SOAK_RECYCLING) as shop:
        # The first scraper counts the files too; the others make the storm.
        scrapers = [
            Scraper(shop.metrics_url, directory, interval=0.1, seconds=duration + 120)
            for directory in [shop.directory] + [None] * (SCRAPERS - 1)
        ]
        soak = Soak(shop, scrapers, samples(fetch(shop.metrics_url)))
        for scraper in scrapers:
            scraper.start()
        try:
            elapsed = soak.run(duration)
        finally:
            for scraper in scrapers:
                scraper.stop()
        final = samples(fetch(shop.metrics_url))
        at_end = scraped_files_by_type(shop.directory)
        soak.peaks.append(scrapers[0].take_peak())
    summary = f"{elapsed:.0f} s, {soak.describe()}, at the end {at_end}"
    print(f"\nsoak: {summary}")  # noqa: T201  the figures a change's note quotes
    assert final == soak.expected, summary
    assert [scraper.decreases for scraper in scrapers] == [[]] * SCRAPERS, summary
    assert [scraper.errors for scraper in scrapers] == [[]] * SCRAPERS, summary
    assert max(scraper.slowest for scraper in scrapers) < SLOWEST_SCRAPE, summary
    assert min(scraper.scrapes for scraper in scrapers) > duration, summary
    assert max(max(peak.values(), default=0) for peak in soak.peaks) <= shop.bound, summary
    assert max(at_end.values()) <= shop.bound, summary
    assert len(soak.stops) == len(STOPS), summary
    assert max(max(stop.latencies) for stop in soak.stops) < FAST_REQUEST, summary
    assert {stop.scrape_status for stop in soak.stops} <= {200, 503}, summary
    assert max(stop.scrape_seconds for stop in soak.stops) < SLOWEST_SCRAPE, summary
    # The stops and the duplicate start put kills off: half of them is enough to tell.
    assert soak.kills >= duration // (2 * SECONDS_BETWEEN_KILLS), summary
    assert soak.duplicate is not None, summary
    assert soak.duplicate.returncode != 0, soak.duplicate.stderr
    assert "Connection in use" in soak.duplicate.stderr, soak.duplicate.stderr
    # Its master imports the package through the config, so its zero series are there
    # until a scrape merges them once it has exited.
    assert max(soak.peak_duplicate.values(), default=0) <= shop.bound + 1, summary
    assert soak.planted is not None, summary
    assert [path.name.split(".")[1] for path in soak.corrupt] == ["bad-key"], summary
    assert not soak.planted.exists(), summary
    moved = f"Moved {soak.planted.resolve()} aside as {soak.corrupt[0].resolve()}"
    assert moved in shop.log.read_text(), summary
    # The planted file is one more, until it is set aside.
    assert max(soak.peak_planted.values(), default=0) <= shop.bound + 1, summary
