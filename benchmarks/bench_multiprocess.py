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
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import multiprocess as stock

from veza_business_metrics import multiprocess

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


if __name__ == "__main__":
    main()
