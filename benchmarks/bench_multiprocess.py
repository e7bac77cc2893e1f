"""Print scrape times against the number of recycled workers, with and without compaction.

Run with ``.venv-test/bin/python benchmarks/bench_multiprocess.py`` once the test command
has created ``.venv-test``, or from any environment with the package installed.

For each count of recycled workers, the directory holds that many dead workers' files,
copied from the files of one real worker process (the business counters, a host counter
and a host histogram), plus 4 live workers' files. prometheus_client's collector reads
them all; this package's ``mark_process_dead`` merges the dead ones first, and its
collector reads the live files and the archives. The merge time is that of one more
worker's exit once the others are merged, as when each is merged as it exits. The ratios
compare each scrape with the scrape at the smallest count, measured in the same run.
The directory is on a tmpfs (``/dev/shm``) unless ``--dir`` says otherwise: on a disk,
each merge also waits for its fsync calls.

Two more cases check the copies against what a server does. A process that imported the
package forks real workers, one after the other, each of which records and exits, and
merges each with ``mark_process_dead`` as gunicorn's ``child_exit`` does; then a
directory of copies is merged by one ``sweep()`` of them all. Each scrape is compared
with the same case at the smallest count.

Last, the scrape that a server without an exit hook serves: a GET through
``make_wsgi_app`` and ``make_asgi_app``, called in-process, which sweep before they
collect. Three live workers (real processes that recorded and wait) are in a directory
with no dead worker, and in another after 1,000 recycled ones, whose first scrape
merges them; then one more worker exits before each scrape of the second. Each is
compared with the scrape of the same app with no dead worker, scraped in turn with it;
the cost of the sweep that finds nothing to merge is printed apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import multiprocess as stock

from veza_business_metrics import multiprocess

if TYPE_CHECKING:
    from collections.abc import Iterator, MutableMapping

# Records one of everything, as a worker of the example shop does.
WORKER = """
from prometheus_client import Counter, Histogram
import veza_business_metrics as business
business.record_login_success()
business.record_revenue(1999, "EUR")
Counter("shop_pings_total", "Pings.").inc()
Histogram("shop_ping_seconds", "Ping time.", buckets=(0.1, 0.5, 1)).observe(0.25)
"""
# A server that forks its workers one after the other and merges each one that exits;
# it prints the median scrape time in ms and how many files are left.
FORKING = """
import os, statistics, sys, time
from prometheus_client import Counter, Histogram
import veza_business_metrics as business
from veza_business_metrics import multiprocess
directory, count, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pings = Counter("shop_pings_total", "Pings.")
seconds = Histogram("shop_ping_seconds", "Ping time.", buckets=(0.1, 0.5, 1))
for _ in range(count):
    pid = os.fork()
    if not pid:
        business.record_login_success()
        business.record_revenue(1999, "EUR")
        pings.inc()
        seconds.observe(0.25)
        os._exit(0)
    os.waitpid(pid, 0)
    multiprocess.mark_process_dead(pid, directory)
collector = multiprocess.MultiProcessCollector(None, path=directory)
times = []
for _ in range(repeat):
    start = time.perf_counter()
    list(collector.collect())
    times.append(time.perf_counter() - start)
print(statistics.median(times) * 1000, len(os.listdir(directory)))
"""
# A live worker of a server: it records as WORKER does, says so, then waits to be killed.
LIVE_WORKER = WORKER + "print('ready', flush=True)\nimport time\ntime.sleep(600)\n"
APP_WORKERS = 3
APP_RECYCLED = 1000
# One scrape through an app, called in-process.
Scrape = Callable[[], None]
# Far above any pid_max, so that no running process can have these pids.
FIRST_PID = 10**8
LIVE_WORKERS = 4


def worker_files(directory: Path) -> dict[str, bytes]:
    """Run one real worker in ``directory``; return its files' used bytes by type."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", WORKER], env=env, check=True)
    files = {}
    for path in directory.glob("*.db"):
        data = path.read_bytes()
        files[path.name.partition("_")[0]] = data[: int.from_bytes(data[:4], "little")]
        path.unlink()
    return files


def populate(directory: Path, template: dict[str, bytes], pids: range) -> None:
    """Write one file per type for each pid, sized as prometheus_client sizes its files."""
    for pid in pids:
        for kind, data in template.items():
            with (directory / f"{kind}_{pid}.db").open("wb") as file:
                file.write(data)
                file.truncate(1 << 16)


def scrape_ms(collector: stock.MultiProcessCollector, repeat: int) -> float:
    """Return the median time of one collection, in milliseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        list(collector.collect())  # type: ignore[no-untyped-call]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def disk_kib(directory: Path) -> int:
    """Return the disk space that the files in ``directory`` take, in KiB."""
    return sum(path.stat().st_blocks * 512 for path in directory.iterdir()) // 1024


def measure(root: Path, template: dict[str, bytes], dead: int, repeat: int) -> dict[str, float]:
    """Return the figures of one directory with ``dead`` recycled workers."""
    directory = root / f"dead-{dead}"
    directory.mkdir()
    live = range(FIRST_PID, FIRST_PID + LIVE_WORKERS)
    dead_pids = range(live.stop, live.stop + dead)
    populate(directory, template, live)
    populate(directory, template, dead_pids)
    files_before, disk_before = len(list(directory.glob("*.db"))), disk_kib(directory)
    baseline = scrape_ms(stock.MultiProcessCollector(None, path=str(directory)), repeat)  # type: ignore[no-untyped-call]
    for pid in dead_pids:
        multiprocess.mark_process_dead(pid, directory)
    compacted = scrape_ms(multiprocess.MultiProcessCollector(None, path=str(directory)), repeat)
    # One more worker exits, as in production where each is merged when it exits.
    merges = []
    for pid in range(dead_pids.stop, dead_pids.stop + repeat):
        populate(directory, template, range(pid, pid + 1))
        start = time.perf_counter()
        multiprocess.mark_process_dead(pid, directory)
        merges.append(time.perf_counter() - start)
    return {
        "dead": dead,
        "files_before": files_before,
        "disk_before": disk_before,
        "baseline_ms": baseline,
        "files_after": len(list(directory.glob("*.db"))),
        "disk_after": disk_kib(directory),
        "compacted_ms": compacted,
        "merge_ms": statistics.median(merges) * 1000,
    }


def forked(root: Path, workers: int, repeat: int) -> tuple[float, int]:
    """Return the scrape time in ms and the files left after ``workers`` forked workers."""
    directory = root / f"forked-{workers}"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    command = [sys.executable, "-c", FORKING, str(directory), str(workers), str(repeat)]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    milliseconds, files = output.stdout.split()
    return float(milliseconds), int(files)


def swept(root: Path, template: dict[str, bytes], dead: int, repeat: int) -> float:
    """Return the scrape time in ms after one sweep of ``dead`` recycled workers' files."""
    directory = root / f"swept-{dead}"
    directory.mkdir()
    populate(directory, template, range(FIRST_PID, FIRST_PID + LIVE_WORKERS + dead))
    # The live ones are dead too, by their pids: leave them out of the sweep.
    live = range(FIRST_PID, FIRST_PID + LIVE_WORKERS)
    for pid in live:
        for kind in template:
            (directory / f"{kind}_{pid}.db").rename(directory / f"{kind}_{pid}.live")
    multiprocess.sweep(directory)
    for pid in live:
        for kind in template:
            (directory / f"{kind}_{pid}.live").rename(directory / f"{kind}_{pid}.db")
    return scrape_ms(multiprocess.MultiProcessCollector(None, path=str(directory)), repeat)


@contextlib.contextmanager
def live_workers(directory: Path, count: int) -> Iterator[None]:
    """Run ``count`` worker processes that recorded into ``directory`` until the block ends."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    workers = []
    try:
        for _ in range(count):
            worker = subprocess.Popen(
                [sys.executable, "-c", LIVE_WORKER], env=env, stdout=subprocess.PIPE
            )
            workers.append(worker)
            if worker.stdout is None or worker.stdout.readline() != b"ready\n":
                sys.exit(f"a live worker failed with status {worker.wait()}")
        yield
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()


def wsgi_scrape(app: Callable[..., Any]) -> None:
    """GET /metrics from the WSGI ``app`` and read the whole body."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/metrics",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
    }
    statuses = []
    body = b"".join(app(environ, lambda status, _headers: statuses.append(status)))
    if not statuses[0].startswith("200") or not body:
        sys.exit(f"the WSGI app answered {statuses[0]}")


async def asgi_scrape(app: Callable[..., Any]) -> None:
    """GET /metrics from the ASGI ``app`` and wait for the whole body."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "query_string": b"",
        "headers": [],
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    if sent[0]["status"] != 200:  # noqa: PLR2004
        sys.exit(f"the ASGI app answered {sent[0]['status']}")


def timed_ms(call: Callable[[], object]) -> float:
    """Return how long ``call()`` takes, in ms."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def app_case(
    root: Path, template: dict[str, bytes], repeat: int, make: Callable[[Path], Scrape]
) -> dict[str, float]:
    """Return the scrape times in ms of the app that ``make`` serves, case by case.

    Two directories with 3 live workers each, one of them with 1,000 recycled ones too,
    are scraped in turn, round after round, so that drift hits both alike.
    """
    clean, recycled = root / "no-dead", root / "recycled"
    clean.mkdir()
    recycled.mkdir()
    pids = iter(range(FIRST_PID, FIRST_PID + APP_RECYCLED + repeat))

    def one_exited() -> None:
        pid = next(pids)
        populate(recycled, template, range(pid, pid + 1))

    scrape_clean, scrape_recycled = make(clean), make(recycled)
    with live_workers(clean, APP_WORKERS), live_workers(recycled, APP_WORKERS):
        for _ in range(APP_RECYCLED):
            one_exited()
        first = timed_ms(scrape_recycled)
        # Untimed: the first scrapes start the ASGI app's threads and fill caches.
        for _ in range(3):
            scrape_clean()
            scrape_recycled()
        times: dict[str, list[float]] = {"none": [], "recycled": [], "exited": [], "sweep": []}
        for _ in range(repeat):
            times["none"].append(timed_ms(scrape_clean))
            times["recycled"].append(timed_ms(scrape_recycled))
            one_exited()
            times["exited"].append(timed_ms(scrape_recycled))
            times["sweep"].append(timed_ms(lambda: multiprocess.sweep(clean)))
    medians = {case: statistics.median(values) for case, values in times.items()}
    return {**medians, "first": first}


def through_the_apps(
    root: Path, template: dict[str, bytes], repeat: int
) -> dict[str, dict[str, float]]:
    """Return the scrape times in ms through each app, case by case, and the no-op sweep's."""
    (root / "wsgi").mkdir()
    (root / "asgi").mkdir()
    with contextlib.closing(asyncio.new_event_loop()) as loop:

        def wsgi(directory: Path) -> Scrape:
            app = multiprocess.make_wsgi_app(directory)
            return lambda: wsgi_scrape(app)

        def asgi(directory: Path) -> Scrape:
            app = multiprocess.make_asgi_app(directory)
            return lambda: loop.run_until_complete(asgi_scrape(app))

        return {
            "wsgi": app_case(root / "wsgi", template, repeat, wsgi),
            "asgi": app_case(root / "asgi", template, repeat, asgi),
        }


def main() -> None:
    """Measure each count of recycled workers and print a table of figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100, 1000, 5000])
    parser.add_argument("--repeat", type=int, default=21, help="scrapes timed per case")
    parser.add_argument(
        "--dir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,  # noqa: S108
        help="where to create the directories; a tmpfs by default, as in production",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as temporary:
        root = Path(temporary)
        template = worker_files(root)
        rows = [measure(root, template, dead, args.repeat) for dead in args.counts]
        real = [(count, *forked(root, count, args.repeat)) for count in args.counts]
        big = [(count, swept(root, template, count, args.repeat)) for count in args.counts]
        apps = through_the_apps(root, template, args.repeat)
    first = rows[0]
    print(
        f"{'dead':>5} | {'files':>5} {'KiB':>6} {'ms/scrape':>9} {'ratio':>6} |"
        f" {'files':>5} {'KiB':>4} {'ms/scrape':>9} {'ratio':>6} | {'merge ms':>8}"
    )
    print(f"{'':>5} | {'prometheus_client keeps every file':^29} | {'compacted':^30} |")
    for row in rows:
        print(
            f"{row['dead']:>5} | {row['files_before']:>5} {row['disk_before']:>6}"
            f" {row['baseline_ms']:>9.2f} {row['baseline_ms'] / first['baseline_ms']:>6.2f} |"
            f" {row['files_after']:>5} {row['disk_after']:>4} {row['compacted_ms']:>9.2f}"
            f" {row['compacted_ms'] / first['compacted_ms']:>6.2f} | {row['merge_ms']:>8.2f}"
        )
    print(
        f"\n{'forked':>6} | {'files':>5} {'ms/scrape':>9} {'ratio':>6} ||"
        f" {'swept':>6} | {'ms/scrape':>9} {'ratio':>6}"
    )
    for (count, real_ms, files), (dead, swept_ms) in zip(real, big, strict=True):
        print(
            f"{count:>6} | {files:>5} {real_ms:>9.2f} {real_ms / real[0][1]:>6.2f} ||"
            f" {dead:>6} | {swept_ms:>9.2f} {swept_ms / big[0][1]:>6.2f}"
        )

    print(f"\nscrapes through the apps, {APP_WORKERS} live workers: ms (ratio to no dead worker)")
    cases = [
        ("no dead worker", "none"),
        (f"first scrape after {APP_RECYCLED:,} recycled (merges them)", "first"),
        (f"after {APP_RECYCLED:,} recycled", "recycled"),
        ("one worker exited since the last scrape", "exited"),
    ]
    print(f"{'':48} {'make_wsgi_app':>16} {'make_asgi_app':>16}")
    for label, case in cases:
        cells = [
            f"{apps[name][case]:8.2f} ({apps[name][case] / apps[name]['none']:5.2f})"
            for name in ["wsgi", "asgi"]
        ]
        print(f"{label:48} {cells[0]:>16} {cells[1]:>16}")
    sweeps = " and ".join(f"{apps[name]['sweep']:.3f} ms" for name in ["wsgi", "asgi"])
    print(f"of which a sweep that finds nothing to merge: {sweeps}")


if __name__ == "__main__":
    main()
