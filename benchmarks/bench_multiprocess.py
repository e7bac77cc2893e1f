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


if __name__ == "__main__":
    main()
