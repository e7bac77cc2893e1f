"""Tests for veza_business_metrics.multiprocess, against real worker processes and files."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import errno
import fcntl
import functools
import json
import logging
import math
import operator
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from prometheus_client import CollectorRegistry
from prometheus_client import multiprocess as stock
from prometheus_client.mmap_dict import MmapedDict

from helpers import (
    Worker,
    another_server,
    asgi_served,
    file_names,
    key,
    merge_in_a_process,
    poll,
    running_prometheus,
    samples,
    served,
    traced,
    worker_samples,
    wsgi_served,
)
from veza_business_metrics import MultiprocessError, multiprocess

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from email.message import Message

    from prometheus_client.registry import Collector

    from helpers import Series


def scrape(directory: Path) -> Series:
    """Return every sample that this module's collector reads in ``directory``."""
    return samples(multiprocess.MultiProcessCollector(None, path=str(directory)))


def stock_scrape(directory: Path) -> Series:
    """Return every sample that prometheus_client's own collector reads in ``directory``."""
    return samples(stock.MultiProcessCollector(None, path=str(directory)))  # type: ignore[no-untyped-call]


def families(collector: Collector) -> dict[str, str]:
    """Return each family's name with its type and help, as ``collector`` reads them."""
    return {family.name: f"{family.type} {family.documentation}" for family in collector.collect()}


def both_families(directory: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Return the families in ``directory`` as read by this module and by upstream."""
    ours = multiprocess.MultiProcessCollector(None, path=str(directory))
    theirs = stock.MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]
    return families(ours), families(theirs)


# Named once, since most tests end by checking that nothing but them is left.
ARCHIVES: Final = {"counter_archive.db", "histogram_archive.db"}


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """Give an empty multiprocess directory."""
    path = tmp_path / "metrics"
    path.mkdir()
    return path


def dead_workers(directory: Path, workers: list[Worker], counts: list[int]) -> list[Worker]:
    """Start one worker per count, let each record its count, and let them all exit."""
    new = [Worker(directory) for _ in counts]
    workers.extend(new)
    for worker, count in zip(new, counts, strict=True):
        worker.record(count)
        worker.exit()
    return new


def test_collector_reads_what_prometheus_clients_reads(
    directory: Path, workers: list[Worker]
) -> None:
    """Before any merge, the collector returns the same families and samples as upstream's."""
    dead_workers(directory, workers, [3, 5])
    live = Worker(directory)
    workers.append(live)
    live.record(2)
    assert scrape(directory) == stock_scrape(directory) == worker_samples(10)
    ours, theirs = both_families(directory)
    assert ours == theirs


def test_a_file_being_created_is_read_as_empty(directory: Path, workers: list[Worker]) -> None:
    """A file caught between its creation and its sizing holds no values, and merges as such."""
    dead_workers(directory, workers, [2])
    (directory / "counter_4194304.db").touch()
    assert scrape(directory) == worker_samples(2)
    with pytest.raises(struct.error):
        stock_scrape(directory)
    assert multiprocess.sweep(directory) == 2
    assert file_names(directory) == ARCHIVES
    assert scrape(directory) == worker_samples(2)


def test_mark_process_dead_merges_every_metric_into_one_archive_per_type(
    directory: Path, workers: list[Worker]
) -> None:
    """Merging dead workers keeps every family and value and leaves one archive per type."""
    first, second = dead_workers(directory, workers, [3, 5])
    before = both_families(directory)[1]
    multiprocess.mark_process_dead(first.pid, directory)
    multiprocess.mark_process_dead(second.pid, str(directory))
    assert file_names(directory) == ARCHIVES
    assert scrape(directory) == worker_samples(8)
    assert both_families(directory) == (before, before)


def test_archives_are_files_that_prometheus_client_reads(
    directory: Path, workers: list[Worker]
) -> None:
    """prometheus_client's reader and collector read the archives like a process's files."""
    (worker,) = dead_workers(directory, workers, [4])
    multiprocess.mark_process_dead(worker.pid, directory)
    assert stock_scrape(directory) == worker_samples(4)
    archive = MmapedDict(str(directory / "counter_archive.db"), read_mode=True)  # type: ignore[no-untyped-call]
    try:
        keys = [key for key, _, _ in archive.read_all_values()]  # type: ignore[no-untyped-call]
    finally:
        archive.close()  # type: ignore[no-untyped-call]
    assert len(keys) == len(set(keys)) == 13


def test_merging_twice_and_merging_nothing_change_nothing(
    directory: Path, workers: list[Worker]
) -> None:
    """A second call for the same pid, or one for a pid with no files, merges nothing."""
    (worker,) = dead_workers(directory, workers, [4])
    multiprocess.mark_process_dead(worker.pid, directory)
    merged = {name: (directory / name).read_bytes() for name in file_names(directory)}
    multiprocess.mark_process_dead(worker.pid, directory)
    multiprocess.mark_process_dead(2**22 + 1, directory)
    assert multiprocess.sweep(directory) == 0
    assert {name: (directory / name).read_bytes() for name in file_names(directory)} == merged


def test_sweep_merges_the_dead_and_leaves_the_running(
    directory: Path, workers: list[Worker]
) -> None:
    """A sweep merges exactly the processes that are gone, and counts them."""
    dead_workers(directory, workers, [1, 2, 3])
    live = Worker(directory)
    workers.append(live)
    live.record(4)
    killed = Worker(directory)
    workers.append(killed)
    killed.record(5)
    killed.kill()
    assert multiprocess.sweep(directory) == 4
    assert file_names(directory) == {
        f"counter_{live.pid}.db",
        f"histogram_{live.pid}.db",
        *ARCHIVES,
    }
    live.record(1)
    assert scrape(directory) == worker_samples(16)


def test_gauges_follow_prometheus_clients_rules(directory: Path) -> None:
    """Live gauges of a dead process are removed, other gauges stay, as upstream does."""
    code = textwrap.dedent("""
        from prometheus_client import Gauge
        Gauge("in_flight", "Live.", multiprocess_mode="livesum").set(3)
        Gauge("last_seen", "All.", multiprocess_mode="all").set(7)
        import os
        print(os.getpid())
    """)
    pid = int(run_in_directory(directory, code))
    assert file_names(directory) == {f"gauge_livesum_{pid}.db", f"gauge_all_{pid}.db"}
    multiprocess.mark_process_dead(pid, directory)
    assert file_names(directory) == {f"gauge_all_{pid}.db"}
    assert scrape(directory) == {("last_seen", (("pid", str(pid)),)): 7.0}
    assert multiprocess.sweep(directory) == 0


def run_in_directory(directory: Path, code: str) -> str:
    """Run ``code`` in a fresh interpreter in multiprocess mode; return what it printed."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_summaries_are_merged(directory: Path) -> None:
    """A dead process's summary count and sum are merged like counters."""
    code = textwrap.dedent("""
        import os
        from prometheus_client import Summary
        Summary("payload_bytes", "Sizes.").observe(512)
        print(os.getpid())
    """)
    pids = [int(run_in_directory(directory, code)) for _ in range(2)]
    for pid in pids:
        multiprocess.mark_process_dead(pid, directory)
    assert file_names(directory) == {"summary_archive.db"}
    assert scrape(directory) == {
        ("payload_bytes_count", ()): 2.0,
        ("payload_bytes_sum", ()): 1024.0,
    }


def move_files(directory: Path, from_pid: int, to_pid: int) -> None:
    """Rename the counter and histogram files of ``from_pid`` to those of ``to_pid``."""
    for kind in ("counter", "histogram"):
        (directory / f"{kind}_{from_pid}.db").rename(directory / f"{kind}_{to_pid}.db")


def test_a_process_that_reused_a_pid_and_continues_its_file_loses_nothing(
    directory: Path, workers: list[Worker]
) -> None:
    """A running process with a dead one's pid continues its file; no merge takes it away."""
    (dead,) = dead_workers(directory, workers, [3])
    heir = Worker(directory, before_open=lambda pid: move_files(directory, dead.pid, pid))
    workers.append(heir)
    heir.record(2)
    assert scrape(directory) == worker_samples(5)
    # A late child_exit for the dead worker, after its pid went to the heir.
    multiprocess.mark_process_dead(heir.pid, directory)
    assert multiprocess.sweep(directory) == 0
    heir.record(1)
    assert file_names(directory) == {f"counter_{heir.pid}.db", f"histogram_{heir.pid}.db"}
    assert scrape(directory) == worker_samples(6)
    heir.exit()
    multiprocess.mark_process_dead(heir.pid, directory)
    assert file_names(directory) == ARCHIVES
    assert scrape(directory) == worker_samples(6)


# Creates this process's counter file, holding one count, and keeps it open: unmapped, as
# prometheus_client has it between creating and mapping it, or mapped.
HOLDER = textwrap.dedent("""
    import mmap, os, struct, sys

    path = os.path.join(sys.argv[1], f"counter_{os.getpid()}.db")
    key = b'["c_total", "c_total", {}, "A counter."]'
    key += b" " * (8 - (len(key) + 4) % 8)
    entry = struct.pack(f"i{len(key)}sdd", len(key.rstrip()), key, 1.0, 0.0)
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR)
    os.write(descriptor, struct.pack("ii", 8 + len(entry), 0) + entry)
    if sys.argv[2] == "mapped":
        mapping = mmap.mmap(descriptor, 0)
    print(os.getpid(), flush=True)
    sys.stdin.readline()
""")


@pytest.mark.parametrize("how", ["open", "mapped"])
def test_a_file_that_its_process_has_open_is_left_alone(directory: Path, how: str) -> None:
    """A running process's file is not merged while it has it open, even before mapping it."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        pid = int(holder.stdout.readline())
        assert multiprocess.sweep(directory) == 0
        multiprocess.mark_process_dead(pid, directory)
        assert file_names(directory) == {f"counter_{pid}.db"}
        holder.stdin.write("exit\n")
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    assert multiprocess.sweep(directory) == 1
    assert file_names(directory) == {"counter_archive.db"}
    assert scrape(directory) == {("c_total", ()): 1.0}


def test_a_file_that_a_running_process_of_its_pid_does_not_hold_is_merged(
    directory: Path, workers: list[Worker]
) -> None:
    """A dead worker's file whose pid now runs a process that never opened it is merged."""
    (dead,) = dead_workers(directory, workers, [2])
    move_files(directory, dead.pid, os.getpid())
    assert multiprocess.sweep(directory) == 1
    assert file_names(directory) == ARCHIVES
    assert scrape(directory) == worker_samples(2)


def test_a_new_file_under_a_merged_pid_is_merged_once(
    directory: Path, workers: list[Worker]
) -> None:
    """After a pid's file was merged, a new file under that pid adds exactly its own counts."""
    first, second = dead_workers(directory, workers, [3, 4])
    multiprocess.mark_process_dead(first.pid, directory)
    move_files(directory, second.pid, first.pid)
    multiprocess.mark_process_dead(first.pid, directory)
    assert scrape(directory) == worker_samples(7)
    assert file_names(directory) == ARCHIVES


@pytest.mark.ours
@pytest.mark.parametrize("merge", ["mark_process_dead", "sweep"])
def test_a_merge_killed_at_any_change_loses_and_repeats_nothing(
    tmp_path: Path, workers: list[Worker], merge: str
) -> None:
    """SIGKILLed at every rename, write, fsync, replace and unlink, a merge stays exact."""
    template = tmp_path / "template"
    template.mkdir()
    earlier, first, second = dead_workers(template, workers, [1, 2, 4])
    multiprocess.mark_process_dead(earlier.pid, template)
    expected = worker_samples(7)
    pid = first.pid if merge == "mark_process_dead" else 0
    points = []
    for die_at in range(1, 100):
        directory = tmp_path / f"killed-at-{die_at}"
        directory.mkdir()
        for name in file_names(template):
            (directory / name).write_bytes((template / name).read_bytes())
        result = merge_in_a_process(directory, die_at, pid)
        if result.returncode == 0:
            break
        point = result.stderr.strip()
        points.append(point)
        assert result.returncode == -signal.SIGKILL, result.stderr
        assert scrape(directory) == expected, f"scrape after dying at {point}"
        multiprocess.mark_process_dead(first.pid, directory)
        multiprocess.mark_process_dead(second.pid, directory)
        assert scrape(directory) == expected, f"scrape after recovering from {point}"
        assert file_names(directory) == ARCHIVES, point
    assert int(result.stdout) == len(points) > 0, points
    # Every kind of step was a place to die: claims, the archive, its replacement, cleanup.
    assert {point.split()[0] for point in points} == {
        "rename",
        "write",
        "fsync",
        "replace",
        "unlink",
    }


@pytest.mark.ours
def test_a_process_killed_between_a_claim_and_its_undoing_keeps_its_file(
    directory: Path, workers: list[Worker]
) -> None:
    """A claimed file that a running process still has open is given back, not merged."""
    live = Worker(directory)
    workers.append(live)
    live.record(2)
    for kind in ("counter", "histogram"):
        claim = f"{kind}_{live.pid}.{'0' * 32}.merging"
        (directory / f"{kind}_{live.pid}.db").rename(directory / claim)
    assert scrape(directory) == worker_samples(2)
    assert multiprocess.sweep(directory) == 0
    assert file_names(directory) == {f"counter_{live.pid}.db", f"histogram_{live.pid}.db"}
    live.record(1)
    assert scrape(directory) == worker_samples(3)


def test_a_leftover_claim_never_replaces_the_file_of_a_process_that_reused_its_pid(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A killed merge's claim, whose pid now runs a process with its own file, is merged."""
    # Without procfs, a pid that runs counts as using the claim: the merge would give it
    # back, over the new process's file, if it could.
    monkeypatch.setattr(multiprocess._files, "PROC", tmp_path / "no-procfs")
    (dead,) = dead_workers(directory, workers, [3])
    heir = Worker(directory)
    workers.append(heir)
    heir.record(2)
    for kind in ("counter", "histogram"):
        claim = f"{kind}_{heir.pid}.{'0' * 32}.merging"
        (directory / f"{kind}_{dead.pid}.db").rename(directory / claim)
    assert scrape(directory) == worker_samples(5)
    assert multiprocess.sweep(directory) == 1
    assert file_names(directory) == {
        f"counter_{heir.pid}.db",
        f"histogram_{heir.pid}.db",
        *ARCHIVES,
    }
    heir.record(1)
    assert scrape(directory) == worker_samples(6)


def test_a_claim_is_not_given_back_over_a_file_created_meanwhile(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim found in use after a new process created its live name is merged instead."""
    first, second = dead_workers(directory, workers, [3, 2])
    in_use = multiprocess._merge.in_use
    looks: list[int] = []

    def created_after_the_claim(pid: int, directory: Path, names: list[str]) -> set[str]:
        looks.append(pid)
        if len(looks) == 1:
            return in_use(pid, directory, names)
        move_files(directory, second.pid, first.pid)  # the file of a new process
        return set(names)

    monkeypatch.setattr(multiprocess._merge, "in_use", created_after_the_claim)
    multiprocess.mark_process_dead(first.pid, directory)
    assert file_names(directory) == {
        f"counter_{first.pid}.db",
        f"histogram_{first.pid}.db",
        *ARCHIVES,
    }
    assert scrape(directory) == worker_samples(5)


@pytest.mark.ours
def test_a_merge_killed_while_giving_a_claim_back_counts_it_once(
    directory: Path, workers: list[Worker]
) -> None:
    """A file that is both its claim and its live name, half given back, counts once."""
    live = Worker(directory)
    workers.append(live)
    live.record(2)
    for kind in ("counter", "histogram"):
        os.link(
            directory / f"{kind}_{live.pid}.db",
            directory / f"{kind}_{live.pid}.{'0' * 32}.merging",
        )
    assert scrape(directory) == worker_samples(2)
    assert multiprocess.sweep(directory) == 0
    assert file_names(directory) == {f"counter_{live.pid}.db", f"histogram_{live.pid}.db"}
    live.record(1)
    assert scrape(directory) == worker_samples(3)


# Merges the pids in argv[2:], in a random order, then sweeps, in the directory argv[1].
SHUFFLED_MERGES = textwrap.dedent("""
    import random, sys
    from veza_business_metrics import multiprocess
    pids = [int(pid) for pid in sys.argv[2:]]
    random.shuffle(pids)
    for pid in pids:
        multiprocess.mark_process_dead(pid, sys.argv[1])
    multiprocess.sweep(sys.argv[1])
""")


def test_concurrent_merges_and_scrapes_stay_exact(directory: Path, workers: list[Worker]) -> None:
    """Eight processes merge the same dead workers at once while scrapes never go down."""
    dead = dead_workers(directory, workers, list(range(1, 13)))
    expected = worker_samples(sum(range(1, 13)))
    merges = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                SHUFFLED_MERGES,
                str(directory),
                *(str(worker.pid) for worker in dead),
            ]
        )
        for _ in range(8)
    ]
    scrapes = 0
    while any(merge.poll() is None for merge in merges) and scrapes < 5_000:
        assert scrape(directory) == expected
        scrapes += 1
    assert [merge.wait(timeout=60) for merge in merges] == [0] * 8
    assert scrapes > 0
    assert scrape(directory) == expected
    assert file_names(directory) == ARCHIVES


@pytest.mark.ours
def test_threads_of_one_process_exclude_each_other(directory: Path, workers: list[Worker]) -> None:
    """Merges from threads of one process, each with its own lock, stay exact."""
    dead = dead_workers(directory, workers, [1, 2, 3, 4])
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        merged = list(pool.map(lambda _: multiprocess.sweep(directory), range(4)))
    assert sum(merged) == len(dead)
    assert scrape(directory) == worker_samples(10)


def test_clear_keeps_only_this_processs_files(directory: Path, workers: list[Worker]) -> None:
    """Clearing deletes earlier runs' files and archives, and keeps this process's own."""
    (worker,) = dead_workers(directory, workers, [2])
    multiprocess.mark_process_dead(worker.pid, directory)
    own = directory / f"counter_{os.getpid()}.db"
    own.write_bytes((directory / "counter_archive.db").read_bytes())
    (directory / f"counter_1.{'0' * 32}.merging").write_bytes(b"")
    multiprocess.clear(directory / ".." / directory.name)
    assert file_names(directory) == {own.name}


def test_clear_uses_the_environment(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a path, the functions use PROMETHEUS_MULTIPROC_DIR, and refuse without it."""
    (directory / "counter_1.db").write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    multiprocess.clear()
    assert file_names(directory) == set()
    assert multiprocess.sweep() == 0
    multiprocess.mark_process_dead(1)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    for call in (
        multiprocess.clear,
        multiprocess.sweep,
        lambda: multiprocess.mark_process_dead(1),
    ):
        with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR is not set"):
            call()


def test_collector_refuses_a_missing_directory(tmp_path: Path) -> None:
    """The collector raises ValueError for a directory that does not exist, as upstream's."""
    with pytest.raises(ValueError, match="not a directory"):
        multiprocess.MultiProcessCollector(CollectorRegistry(), path=str(tmp_path / "nope"))


@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00"])
def test_a_foreign_archive_is_refused(directory: Path, content: bytes) -> None:
    """A file in the archive's place that this module did not write raises ValueError."""
    (directory / "counter_archive.db").write_bytes(content)
    (directory / f"counter_1.{'0' * 32}.merging").write_bytes(b"")
    with pytest.raises(ValueError, match=r"counter_archive\.db is not an archive written by"):
        multiprocess.sweep(directory)


def test_an_archive_of_another_version_is_refused(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An archive that a release with another format wrote raises ValueError, not a guess."""
    (dead,) = dead_workers(directory, workers, [1])
    with monkeypatch.context() as patch:
        patch.setattr(multiprocess._files, "_ARCHIVE_VERSION", 3)
        multiprocess.mark_process_dead(dead.pid, directory)
    with pytest.raises(ValueError, match=r"archive of version 3; this release reads version 2"):
        scrape(directory)


def test_a_merge_leaves_other_temporary_files_alone(
    directory: Path, workers: list[Worker]
) -> None:
    """Only the merges' own temporary archives count as left over; other .tmp files stay."""
    (directory / "notes.tmp").write_text("not ours")
    (dead,) = dead_workers(directory, workers, [1])
    multiprocess.mark_process_dead(dead.pid, directory)
    assert file_names(directory) == {"notes.tmp", *ARCHIVES}


def test_without_procfs_a_running_pid_is_left_alone(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where /proc is missing, a pid that runs counts as in use and one that does not as dead."""
    monkeypatch.setattr(multiprocess._files, "PROC", tmp_path / "no-procfs")
    (dead,) = dead_workers(directory, workers, [1])
    live = Worker(directory)
    workers.append(live)
    assert multiprocess.sweep(directory) == 1
    assert file_names(directory) == {
        f"counter_{live.pid}.db",
        f"histogram_{live.pid}.db",
        *ARCHIVES,
    }
    assert dead.pid != live.pid


def test_unreadable_process_descriptors_count_as_in_use(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """When /proc/<pid>/fd cannot be read, the files of that pid are left alone."""
    (dead,) = dead_workers(directory, workers, [1])
    proc = tmp_path / "proc"
    (proc / str(dead.pid)).mkdir(parents=True)
    (proc / str(dead.pid) / "fd").write_text("not a directory")
    monkeypatch.setattr(multiprocess._files, "PROC", proc)
    assert multiprocess.sweep(directory) == 0
    multiprocess.mark_process_dead(dead.pid, directory)
    assert file_names(directory) == {f"counter_{dead.pid}.db", f"histogram_{dead.pid}.db"}


def test_is_running_tells_live_from_dead_pids(workers: list[Worker], directory: Path) -> None:
    """A pid that runs, even as another user's, is running; one that exited is not."""
    (dead,) = dead_workers(directory, workers, [1])
    assert multiprocess._merge.is_running(os.getpid())
    assert not multiprocess._merge.is_running(dead.pid)


def test_a_hidden_process_that_runs_keeps_its_files(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where procfs hides a process (hidepid), a pid that runs keeps its files."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    monkeypatch.setattr(multiprocess._files, "PROC", proc)
    (dead,) = dead_workers(directory, workers, [1])
    live = Worker(directory)
    workers.append(live)
    assert multiprocess.sweep(directory) == 1
    multiprocess.mark_process_dead(live.pid, directory)
    assert f"counter_{live.pid}.db" in file_names(directory)
    assert f"counter_{dead.pid}.db" not in file_names(directory)


def test_mark_process_dead_refuses_a_pid_that_is_not_an_int(directory: Path) -> None:
    """A pid given as a str or a bool raises TypeError instead of merging nothing."""
    for pid in ("123", True, 1.0):
        with pytest.raises(TypeError, match="pid must be an int, got"):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[arg-type]


# Starts a process that writes a live gauge under its own pid and keeps it, then waits.
LIVE_GAUGE = textwrap.dedent("""
    import os, sys
    from prometheus_client import Gauge
    Gauge("in_flight", "Live.", multiprocess_mode="livesum").set(2)
    print(os.getpid(), flush=True)
    sys.stdin.readline()
""")


def test_a_late_call_for_a_reused_pid_keeps_the_live_gauge(
    directory: Path, workers: list[Worker]
) -> None:
    """A dead worker's leftovers merge, but the new process with its pid keeps its gauges."""
    (dead,) = dead_workers(directory, workers, [3])
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    with subprocess.Popen(
        [sys.executable, "-c", LIVE_GAUGE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    ) as heir:
        assert heir.stdin is not None
        assert heir.stdout is not None
        pid = int(heir.stdout.readline())
        move_files(directory, dead.pid, pid)
        multiprocess.mark_process_dead(pid, directory)
        assert file_names(directory) == {
            f"gauge_livesum_{pid}.db",
            *ARCHIVES,
        }
        assert scrape(directory) == {**worker_samples(3), ("in_flight", ()): 2.0}
        heir.stdin.close()
        assert heir.wait(timeout=30) == 0
    multiprocess.mark_process_dead(pid, directory)
    assert file_names(directory) == ARCHIVES


def test_only_the_files_in_use_are_given_back(directory: Path, workers: list[Worker]) -> None:
    """A new process that continues one file of a dead pid keeps it; the stale rest merge."""
    (dead,) = dead_workers(directory, workers, [3])

    def continue_the_counter_only(pid: int) -> None:
        (directory / f"counter_{dead.pid}.db").rename(directory / f"counter_{pid}.db")

    heir = Worker(directory, before_open=continue_the_counter_only)
    workers.append(heir)
    # The heir opened the dead worker's counter file and a histogram file of its own;
    # the dead worker's histogram file is stale, under the heir's pid.
    (directory / f"histogram_{heir.pid}.db").rename(directory / "heirs-own")
    (directory / f"histogram_{dead.pid}.db").rename(directory / f"histogram_{heir.pid}.db")
    multiprocess.mark_process_dead(heir.pid, directory)
    (directory / "heirs-own").rename(directory / f"histogram_{heir.pid}.db")
    assert file_names(directory) == {
        f"counter_{heir.pid}.db",
        f"histogram_{heir.pid}.db",
        "histogram_archive.db",
    }
    heir.record(2)
    assert scrape(directory) == worker_samples(5)


def test_a_directory_named_with_glob_characters_loses_its_live_gauges(tmp_path: Path) -> None:
    """Live gauges of a dead process are removed even where the path has [ ] * or ?."""
    directory = tmp_path / "metrics[1]*?"
    directory.mkdir()
    code = "import os\nfrom prometheus_client import Gauge\n"
    code += "Gauge('g', 'G.', multiprocess_mode='liveall').set(1)\nprint(os.getpid())"
    pid = int(run_in_directory(directory, code))
    multiprocess.mark_process_dead(pid, directory)
    assert file_names(directory) == set()


# Takes the shared lock as a scrape does, forks a child that sleeps, then lets go.
FORK_DURING_A_SCRAPE = textwrap.dedent("""
    import fcntl, os, sys, time
    from pathlib import Path
    from veza_business_metrics import multiprocess

    with multiprocess._lock.locked(Path(sys.argv[1]), exclusive=False, timeout=60):
        child = os.fork()
        if child == 0:
            os.closerange(0, 3)  # so that the test does not wait for it to read the output
            time.sleep(60)
            os._exit(0)
    print(child, flush=True)
""")


@pytest.mark.ours
def test_a_process_forked_during_a_scrape_does_not_keep_the_lock(
    directory: Path, workers: list[Worker]
) -> None:
    """A child forked while its parent holds the lock does not go on holding it."""
    (dead,) = dead_workers(directory, workers, [2])
    forked = subprocess.run(
        [sys.executable, "-c", FORK_DURING_A_SCRAPE, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    child = int(forked.stdout)
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if held
        finally:
            os.close(descriptor)
        multiprocess.mark_process_dead(dead.pid, directory)
        assert file_names(directory) == ARCHIVES
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.ours
def test_a_merge_from_a_signal_handler_during_a_merge_does_not_deadlock(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal handler that merges during a merge, as old gunicorns do, merges both."""
    outer, inner = dead_workers(directory, workers, [2, 3])
    previous = signal.signal(
        signal.SIGUSR1, lambda *_: multiprocess.mark_process_dead(inner.pid, directory)
    )
    fsync = os.fsync

    def interrupted_fsync(descriptor: int) -> None:
        monkeypatch.setattr(os, "fsync", fsync)
        signal.raise_signal(signal.SIGUSR1)
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    try:
        multiprocess.mark_process_dead(outer.pid, directory)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert file_names(directory) == ARCHIVES
    assert scrape(directory) == worker_samples(5)


def test_a_file_opened_just_before_its_claim_is_given_back(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that its process opened after the first look, but before the claim, stays."""
    live = Worker(directory)
    workers.append(live)
    live.record(2)
    in_use = multiprocess._merge.in_use
    looks: list[int] = []

    def opened_after_the_first_look(pid: int, directory: Path, names: list[str]) -> set[str]:
        looks.append(pid)
        return set() if len(looks) == 1 else in_use(pid, directory, names)

    monkeypatch.setattr(multiprocess._merge, "in_use", opened_after_the_first_look)
    multiprocess.mark_process_dead(live.pid, directory)
    assert looks == [live.pid, live.pid]
    assert file_names(directory) == {f"counter_{live.pid}.db", f"histogram_{live.pid}.db"}
    live.record(1)
    assert scrape(directory) == worker_samples(3)


def test_a_live_gauge_opened_just_before_its_claim_is_given_back(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live gauge that a reused pid's process opened after the first look stays."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    with subprocess.Popen(
        [sys.executable, "-c", LIVE_GAUGE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    ) as heir:
        assert heir.stdin is not None
        assert heir.stdout is not None
        pid = int(heir.stdout.readline())
        in_use = multiprocess._merge.in_use
        looks: list[int] = []

        def opened_after_the_first_look(pid: int, directory: Path, names: list[str]) -> set[str]:
            looks.append(pid)
            return set() if len(looks) == 1 else in_use(pid, directory, names)

        monkeypatch.setattr(multiprocess._merge, "in_use", opened_after_the_first_look)
        multiprocess.mark_process_dead(pid, directory)
        assert file_names(directory) == {f"gauge_livesum_{pid}.db"}
        assert scrape(directory) == {("in_flight", ()): 2.0}
        heir.stdin.close()
        assert heir.wait(timeout=30) == 0


@pytest.mark.ours
def test_a_forked_child_forgets_the_locks_of_its_parent(directory: Path) -> None:
    """After a fork, the child closes its copies of the lock's descriptors and resets."""
    # What a fork does while this process holds the lock, short of the fork itself: the
    # child runs its hook with copies of its parent's descriptors and the guard held.
    with multiprocess._lock.locked(directory, exclusive=False, timeout=60):
        descriptors = set(multiprocess._lock.descriptors)
        assert len(descriptors) == 2  # the merge lock file's and the directory's
        copies = {os.dup(descriptor) for descriptor in descriptors}
        multiprocess._lock.descriptors.clear()
        multiprocess._lock.descriptors.update(copies)
        parents = multiprocess._lock.opening
        multiprocess._lock.before_fork()
        multiprocess._lock.after_fork_in_child()
        parents.release()
        multiprocess._lock.descriptors.update(descriptors)
        assert multiprocess._lock.opening is not parents
        assert not multiprocess._lock.local.holding
        for copy in copies:
            with pytest.raises(OSError, match="Bad file descriptor"):
                os.fstat(copy)


@pytest.mark.ours
def test_a_forked_child_resets_even_if_a_descriptor_was_closed_already() -> None:
    """A descriptor that another fork hook closed first does not stop the child's reset."""
    closed = os.open(os.devnull, os.O_RDONLY)
    os.close(closed)
    multiprocess._lock.descriptors.add(closed)
    multiprocess._lock.local.holding = True
    multiprocess._merge.stuck_until["/a/stuck/directory"] = math.inf
    multiprocess._merge.deferred["/a/stuck/directory"] = deque([None])
    parents = multiprocess._lock.opening
    multiprocess._lock.before_fork()
    multiprocess._lock.after_fork_in_child()
    multiprocess._merge.after_fork_in_child()
    parents.release()
    assert multiprocess._lock.descriptors == set()
    assert not multiprocess._lock.local.holding
    assert multiprocess._merge.stuck_until == {}
    assert multiprocess._merge.deferred == {}


def test_a_put_off_merge_that_fails_after_a_scrape_keeps_the_scrape(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrape returns its families even if the merge put off until after it fails."""
    (dead,) = dead_workers(directory, workers, [2])
    # As a scrape holds it.
    with multiprocess._lock.locked(directory.resolve(), exclusive=False, timeout=60):
        multiprocess.mark_process_dead(dead.pid, directory)

    def failing(directory: Path, _: set[int] | None) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

    with monkeypatch.context() as patch:
        patch.setattr(multiprocess._merge, "merge", failing)
        assert scrape(directory) == worker_samples(2)
    assert multiprocess._merge.is_deferred(directory.resolve())
    multiprocess.sweep(directory)
    assert file_names(directory) == ARCHIVES


@pytest.mark.ours
@pytest.mark.timeout(60)
def test_a_merge_from_a_signal_handler_while_opening_the_lock_does_not_deadlock(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge asked for by a signal handler while a merge opens the lock runs after it."""
    first, second = dead_workers(directory, workers, [1, 2])
    previous = signal.signal(
        signal.SIGUSR1, lambda *_: multiprocess.mark_process_dead(second.pid, directory)
    )
    real_open = os.open

    def interrupted_open(*arguments: Any, **keywords: Any) -> int:
        monkeypatch.setattr(os, "open", real_open)
        signal.raise_signal(signal.SIGUSR1)
        return real_open(*arguments, **keywords)

    monkeypatch.setattr(os, "open", interrupted_open)
    try:
        multiprocess.mark_process_dead(first.pid, directory)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert file_names(directory) == ARCHIVES
    assert scrape(directory) == worker_samples(3)


# Merges argv[2] as a SIGCHLD handler would between the fork hooks, where the hooks hold
# the guard of the lock's descriptors.
MERGE_DURING_FORK_HOOKS = textwrap.dedent("""
    import sys
    from veza_business_metrics import multiprocess

    multiprocess._lock.before_fork()
    multiprocess.mark_process_dead(int(sys.argv[2]), sys.argv[1])
    multiprocess._lock.after_fork_in_parent()
""")


@pytest.mark.ours
def test_a_merge_between_the_fork_hooks_does_not_deadlock(
    directory: Path, workers: list[Worker]
) -> None:
    """A merge from a signal handler that runs between the fork hooks goes through."""
    (dead,) = dead_workers(directory, workers, [2])
    subprocess.run(
        [sys.executable, "-c", MERGE_DURING_FORK_HOOKS, str(directory), str(dead.pid)],
        timeout=60,
        check=True,
    )
    assert file_names(directory) == ARCHIVES


@pytest.mark.ours
def test_merges_put_off_at_once_by_many_threads_all_run(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merges that many threads put off at the same moment all run with the next merge."""
    (dead,) = dead_workers(directory, workers, [1])
    # Pids above any pid_max: no process has them, and copies of one file cost little.
    pids = [2**31 - 1 - number for number in range(400)]
    for pid in pids:
        for kind in ("counter", "histogram"):
            shutil.copy(directory / f"{kind}_{dead.pid}.db", directory / f"{kind}_{pid}.db")
    monkeypatch.setattr(multiprocess._lock, "flock", lambda *_: False)  # scrapes never end
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often enough to interleave the put-offs
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda pid: multiprocess.mark_process_dead(pid, directory), pids))
    finally:
        sys.setswitchinterval(previous)
    assert len(file_names(directory)) == 2 * 401
    monkeypatch.undo()
    multiprocess.mark_process_dead(dead.pid, directory)
    assert file_names(directory) == ARCHIVES
    assert scrape(directory) == worker_samples(401)


def test_pids_beyond_any_process_are_dead(directory: Path, workers: list[Worker]) -> None:
    """Files named with pid 0 or a pid above 2**31 belong to no process, and merge."""
    (dead,) = dead_workers(directory, workers, [2])
    move_files(directory, dead.pid, 0)
    (other,) = dead_workers(directory, workers, [3])
    move_files(directory, other.pid, 2**31)
    assert not multiprocess._merge.is_running(0)
    assert not multiprocess._merge.is_running(2**31)
    assert multiprocess.sweep(directory) == 2
    assert scrape(directory) == worker_samples(5)


def scrape_as_another_user(directory: Path) -> Series:
    """Return what a process of user nobody, which may not write ``directory``, scrapes."""
    reading, writing = os.pipe()
    # A fork, since this interpreter lies where other users may not run it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
        child = os.fork()
    if child == 0:
        status = 1
        try:
            os.close(reading)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            scraped = [[*series, value] for series, value in scrape(directory).items()]
            os.write(writing, json.dumps(scraped).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        output = pipe.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return {(name, tuple(map(tuple, labels))): value for name, labels, value in json.loads(output)}


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can become another user")
def test_a_process_of_another_user_can_scrape(workers: list[Worker]) -> None:
    """A worker of another user than the merging master's scrapes, whatever its umask."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as temporary:
        directory = Path(temporary)
        directory.chmod(0o755)
        (dead,) = dead_workers(directory, workers, [2])
        assert scrape_as_another_user(directory) == worker_samples(2)
        previous = os.umask(0o077)  # as systemd's UMask=0077 gives a master
        try:
            multiprocess.mark_process_dead(dead.pid, directory)
        finally:
            os.umask(previous)
        assert scrape_as_another_user(directory) == worker_samples(2)


# Holds the shared lock, as a scrape stopped half-way would, until its stdin closes.
STUCK_SCRAPE = textwrap.dedent("""
    import fcntl, sys
    from pathlib import Path
    from veza_business_metrics import multiprocess

    with multiprocess._lock.locked(Path(sys.argv[1]), exclusive=False, timeout=60):
        print("holding", flush=True)
        sys.stdin.readline()
""")


@contextlib.contextmanager
def stuck_scrape(directory: Path) -> Iterator[None]:
    """Hold the shared lock in another process, as a scrape stopped half-way would."""
    with subprocess.Popen(
        [sys.executable, "-c", STUCK_SCRAPE, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as stuck:
        assert stuck.stdin is not None
        assert stuck.stdout is not None
        assert stuck.stdout.readline() == "holding\n"
        yield
        stuck.stdin.close()
        assert stuck.wait(timeout=30) == 0


@pytest.mark.ours
def test_a_merge_blocked_by_a_stuck_scrape_is_put_off_not_lost(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge gives up waiting after a while; the next merge does what it could not."""
    monkeypatch.setattr(multiprocess._lock, "MERGE_TIMEOUT", 0.2)
    first, second = dead_workers(directory, workers, [2, 3])
    with stuck_scrape(directory):
        multiprocess.mark_process_dead(first.pid, directory)
        assert multiprocess.sweep(directory) == 0
    assert f"counter_{first.pid}.db" in file_names(directory)
    multiprocess.mark_process_dead(second.pid, directory)
    assert file_names(directory) == ARCHIVES
    assert scrape(directory) == worker_samples(5)


def test_a_merge_that_fails_keeps_the_merges_it_took_over(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge that raises leaves the merges put off before it to the next one."""
    monkeypatch.setattr(multiprocess._lock, "MERGE_TIMEOUT", 0.2)
    first, second = dead_workers(directory, workers, [2, 3])
    with stuck_scrape(directory):
        multiprocess.mark_process_dead(first.pid, directory)

    def failing(directory: Path, _: list[str]) -> list[str]:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(directory))

    with monkeypatch.context() as patch:
        patch.setattr(multiprocess._merge, "unfinished_claims", failing)
        with pytest.raises(OSError, match="Input/output error"):
            multiprocess.mark_process_dead(second.pid, directory)
    multiprocess.mark_process_dead(second.pid, directory)
    assert file_names(directory) == ARCHIVES
    assert scrape(directory) == worker_samples(5)


@pytest.mark.ours
def test_after_one_merge_waited_in_vain_the_next_ones_do_not_wait(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a scrape is stuck, only the first of several merges waits for it."""
    monkeypatch.setattr(multiprocess._lock, "MERGE_TIMEOUT", 1.0)
    dead = dead_workers(directory, workers, [1, 2, 3])
    waited = []
    with stuck_scrape(directory):
        for worker in dead:
            start = time.monotonic()
            multiprocess.mark_process_dead(worker.pid, directory)
            waited.append(time.monotonic() - start)
    assert waited[0] >= 1.0, waited
    assert max(waited[1:]) < 0.5, waited
    multiprocess.mark_process_dead(dead[0].pid, directory)
    assert scrape(directory) == worker_samples(6)


@pytest.mark.ours
def test_a_merge_asked_for_during_a_scrape_runs_after_it(
    directory: Path, workers: list[Worker]
) -> None:
    """A merge asked for while this thread scrapes, from a signal handler, runs after it."""
    (dead,) = dead_workers(directory, workers, [2])
    # As a scrape holds it.
    with multiprocess._lock.locked(directory.resolve(), exclusive=False, timeout=60):
        multiprocess.mark_process_dead(dead.pid, directory)
        assert f"counter_{dead.pid}.db" in file_names(directory)
    assert scrape(directory) == worker_samples(2)
    assert file_names(directory) == ARCHIVES


# Records the fractions in argv[2:] on a counter and a histogram, then prints its pid.
FRACTIONS = textwrap.dedent("""
    import os, sys
    from prometheus_client import Counter, Histogram
    counter = Counter("work_seconds", "Work.")
    histogram = Histogram("latency_seconds", "Latency.", buckets=(0.5,))
    for value in map(float, sys.argv[2:]):
        counter.inc(value)
        histogram.observe(value)
    print(os.getpid())
""")


def test_fractional_sums_are_exact_and_never_go_down(directory: Path) -> None:
    """Fractional totals are the correctly rounded sums, before and after every merge."""
    generators = map(random.Random, range(4))
    chunks = [[generator.uniform(0, 1) for _ in range(200)] for generator in generators]
    pids = [
        int(
            subprocess.run(
                [sys.executable, "-c", FRACTIONS, str(directory), *map(repr, chunk)],
                capture_output=True,
                text=True,
                env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
                timeout=60,
                check=True,
            ).stdout
        )
        for chunk in chunks
    ]
    # Each process adds up its own values one by one; the files hold those totals.
    exact = math.fsum(functools.reduce(operator.add, chunk) for chunk in chunks)
    for pid in [None, *pids]:
        if pid is not None:
            multiprocess.mark_process_dead(pid, directory)
        totals = scrape(directory)
        assert totals[("work_seconds_total", ())] == exact
        assert totals[("latency_seconds_sum", ())] == exact
    assert file_names(directory) == ARCHIVES


# Below 1e300, forty values cannot add up past the largest double.
@given(st.lists(st.floats(min_value=-1e300, max_value=1e300), max_size=40))
def test_partials_add_up_exactly(values: list[float]) -> None:
    """Adding doubles one by one to partials keeps their exact sum, which fsum rounds."""
    partials: list[float] = []
    for value in values:
        partials = multiprocess._files.add_exactly(partials, value)
    assert math.fsum(partials) == math.fsum(values)


def test_infinite_values_fall_back_to_a_plain_sum() -> None:
    """An infinite value, which no exact sum holds, makes the partials its plain sum."""
    partials = multiprocess._files.add_exactly([1.0], math.inf)
    assert partials == [math.inf]
    assert multiprocess._files.add_exactly(partials, -math.inf)[0] != 0.0
    assert math.isnan(multiprocess._files.exact_sum([math.inf, -math.inf]))
    largest = sys.float_info.max
    assert multiprocess._files.add_exactly([largest], largest) == [math.inf]
    assert multiprocess._files.exact_sum([sys.float_info.max, sys.float_info.max]) == math.inf


class WorkersDyingWhileScraped(RuleBasedStateMachine):
    """Real workers record, exit or are killed, and are merged, killed merges included."""

    def __init__(self) -> None:
        """Start with an empty directory and no process."""
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.directory = self.tmp / "metrics"
        self.directory.mkdir()
        self.live: list[Worker] = []
        self.dead: list[Worker] = []
        self.last: Series = {}
        # The number of the last span a worker recorded in, whose exemplars are served.
        self.spans = 0

    @precondition(lambda self: len(self.live) < 3)
    @rule()
    def start(self) -> None:
        """A new worker starts."""
        self.live.append(Worker(self.directory))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), count=st.integers(1, 50), in_span=st.booleans())
    def record(self, data: st.DataObject, count: int, in_span: bool) -> None:  # noqa: FBT001
        """A live worker records events, in a new sampled span or outside any."""
        worker = data.draw(st.sampled_from(self.live))
        if in_span:
            self.spans += 1
            worker.traced(self.spans, count)
        else:
            worker.record(count)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), killed=st.booleans())
    def die(self, data: st.DataObject, killed: bool) -> None:  # noqa: FBT001
        """A live worker exits, or is SIGKILLed."""
        worker = data.draw(st.sampled_from(self.live))
        self.live.remove(worker)
        self.dead.append(worker)
        if killed:
            worker.kill()
        else:
            worker.exit()

    @precondition(lambda self: self.dead)
    @rule(data=st.data())
    def mark_dead(self, data: st.DataObject) -> None:
        """A dead worker, merged already or not, is reported dead."""
        multiprocess.mark_process_dead(data.draw(st.sampled_from(self.dead)).pid, self.directory)

    @rule()
    def sweep(self) -> None:
        """Every dead worker is merged."""
        multiprocess.sweep(self.directory)

    @rule(die_at=st.integers(1, 12))
    def killed_sweep(self, die_at: int) -> None:
        """A sweep in another process is SIGKILLed at one of its filesystem changes."""
        result = merge_in_a_process(self.directory, die_at, 0)
        assert result.returncode in {0, -signal.SIGKILL}, result.stderr

    @invariant()
    def exact_and_never_lower(self) -> None:
        """Every scrape has every count recorded, and no series went down or vanished."""
        workers = self.live + self.dead
        now = scrape(self.directory)
        assert now == (worker_samples(sum(w.recorded for w in workers)) if workers else {})
        assert all(now.get(series, -1) >= value for series, value in self.last.items())
        self.last = now

    @invariant()
    def newest_exemplar_served(self) -> None:
        """Every scrape serves the exemplars of the span recorded in last, whatever died."""
        assert served(self.directory) == (traced(self.spans) if self.spans else {})

    def teardown(self) -> None:
        """Reap every worker and remove the directory."""
        for worker in self.live + self.dead:
            worker.close()
        shutil.rmtree(self.tmp)


WorkersDyingWhileScraped.TestCase.settings = settings(
    # 12 under Hypothesis's default 100 examples, and in proportion, 2 at the least,
    # under the profile of the runs on other versions (tests/conftest.py).
    max_examples=max(2, 12 * settings().max_examples // 100),
    stateful_step_count=15,
    deadline=None,
)
test_workers_dying_while_scraped = WorkersDyingWhileScraped.TestCase


# Issue 14: what an operator on a bad day, a corrupt file, a stopped process or a scrape
# storm must not be able to do to the counts or to a server.

HOLD_LOCK = """
import os, signal, sys
from pathlib import Path
from veza_business_metrics import multiprocess
with multiprocess._lock.locked(Path(sys.argv[1]), exclusive=sys.argv[2] == "merge", timeout=60):
    print("holding", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""


@contextlib.contextmanager
def stopped_holder(directory: Path, role: str) -> Iterator[subprocess.Popen[str]]:
    """Run a process that takes the lock as a ``role`` ("merge" or "scrape") does, then stops.

    It is stopped with SIGSTOP inside the lock, as a debugger or a frozen container stops
    it, and killed when the block ends.
    """
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(directory.resolve()), role],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "holding\n"
            deadline = time.monotonic() + 10
            while Path(f"/proc/{holder.pid}/stat").read_text().split()[2] != "T":
                assert time.monotonic() < deadline, "the lock holder did not stop"
                time.sleep(0.01)
            yield holder
        finally:
            holder.kill()


def wsgi_get(app: Any, path: str = "/") -> tuple[str, str]:
    """Return the status and the body that the WSGI ``app`` answers to a GET of ``path``."""
    statuses: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": ""}
    body = b"".join(app(environ, lambda status, _: statuses.append(status)))
    return statuses[0], body.decode()


def test_clear_deletes_only_what_prometheus_client_and_this_library_write(
    directory: Path, workers: list[Worker]
) -> None:
    """On a tmpfs shared with other programs, clear() leaves their files and folders be."""
    dead_workers(directory, workers, [1])
    sweep_into_archives = multiprocess.sweep(directory)
    assert sweep_into_archives == 1
    dead_workers(directory, workers, [1])  # files of a process of another run
    foreign = ["PostgreSQL.1234", "sem.shop", "counter_1.db.bak", "notes.corrupt"]
    for name in foreign:
        (directory / name).write_bytes(b"not ours")
    (directory / "lost+found").mkdir()
    (directory / "counter_7.db").mkdir()  # a folder named like a worker's file
    multiprocess.clear(directory)
    assert file_names(directory) == {*foreign, "lost+found", "counter_7.db"}


SERVER_THAT_DIES_BEFORE_ITS_WORKER = """
import os, sys
from veza_business_metrics import multiprocess
multiprocess.clear(sys.argv[1])
if not os.fork():
    print("orphaned", flush=True)
    sys.stdin.read()
"""


@pytest.mark.ours
def test_clear_refuses_a_directory_that_another_server_uses(directory: Path) -> None:
    """A second server given the same directory deletes nothing and says which one uses it."""
    with another_server(directory) as server:
        (directory / "counter_999999.db").write_bytes(b"")
        with pytest.raises(
            multiprocess.DirectoryInUseError,
            match=rf"{directory} is in use by another server \(pid {server.pid}\)",
        ):
            multiprocess.clear(directory)
        assert "counter_999999.db" in file_names(directory)
        multiprocess.attach(directory)  # a USR2 successor shares it
    # This process now serves it alone, so a cold start of its own may empty it.
    multiprocess.clear(directory)
    assert file_names(directory) == set()


@pytest.mark.ours
def test_a_forked_worker_keeps_the_directory_in_use_after_its_server_died(
    directory: Path,
) -> None:
    """Workers orphaned by a killed master still count there, so a new server must wait."""
    with subprocess.Popen(
        [sys.executable, "-c", SERVER_THAT_DIES_BEFORE_ITS_WORKER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as master:
        assert master.stdin is not None
        assert master.stdout is not None
        assert master.stdout.readline() == "orphaned\n"
        assert master.wait(timeout=30) == 0
        with pytest.raises(multiprocess.DirectoryInUseError):
            multiprocess.clear(directory)
        master.stdin.close()  # the orphan reads it to its end, and exits
    poll(lambda: _holds_server_lock(directory), operator.not_)
    multiprocess.clear(directory)


def _holds_server_lock(directory: Path) -> bool:
    inode = (directory / "veza_server.lock").stat().st_ino
    return any(
        line.split()[5].endswith(f":{inode}")
        for line in Path("/proc/locks").read_text().splitlines()
    )


def valid_file(directory: Path, workers: list[Worker], pid: int) -> Path:
    """Copy a real worker's counter file to the name of a dead process ``pid``; return it."""
    (template,) = dead_workers(directory, workers, [1])
    source = directory / f"counter_{template.pid}.db"
    target = directory / f"counter_{pid}.db"
    shutil.copyfile(source, target)
    source.unlink()
    for name in file_names(directory) - {target.name}:
        (directory / name).unlink()
    return target


def replace_bytes(path: Path, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new``, of the same length, in the file ``path``."""
    data = path.read_bytes()
    assert len(old) == len(new)
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


def set_value(path: Path, series: str, value: float) -> None:
    """Set the value of the entry whose key starts with ``series`` in the file ``path``."""
    data = bytearray(path.read_bytes())
    for entry, _, _, position in mmap_dict_entries(bytes(data)):
        if json.loads(entry)[1] == series:
            struct.pack_into("d", data, position, value)
    path.write_bytes(bytes(data))


def used_length(path: Path) -> int:
    """Return the used length that the header of prometheus_client's file ``path`` gives."""
    used: int = struct.unpack_from("i", path.read_bytes())[0]
    return used


def mmap_dict_entries(data: bytes) -> list[tuple[str, float, float, int]]:
    """Return a file's entries as prometheus_client reads them, with each value's offset."""
    entries = []
    position, used = 8, struct.unpack_from("i", data)[0]
    while position < used:
        (length,) = struct.unpack_from("i", data, position)
        key_at, position = position + 4, position + 4 + length + (8 - (length + 4) % 8)
        value, timestamp = struct.unpack_from("dd", data, position)
        entries.append((data[key_at : key_at + length].decode(), value, timestamp, position))
        position += 16
    return entries


CORRUPTIONS: Final[dict[str, Callable[[Path], object]]] = {
    "bad-key": lambda path: replace_bytes(
        path, b'["veza_business_logins"', b'{"veza_business_logins"'
    ),
    "bad-value": lambda path: set_value(path, "veza_business_logins_total", math.nan),
    "negative": lambda path: set_value(path, "veza_business_logins_total", -5.0),
    # Cut inside the used length, as a copy that ran out of disk space would leave it.
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: used_length(path) - 8]),
}


def test_a_file_sized_but_never_written_holds_nothing(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file of zeros, which a process killed while creating it leaves, holds nothing."""
    (directory / f"counter_{2**22 + 9}.db").write_bytes(bytes(65_536))
    with caplog.at_level(logging.ERROR, logger="veza_business_metrics.multiprocess"):
        assert scrape(directory) == {}
        assert multiprocess.sweep(directory) == 1
    assert caplog.text == ""
    assert file_names(directory) == {"counter_archive.db"}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupt_file_is_set_aside_never_merged(
    directory: Path,
    workers: list[Worker],
    corruption: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dead worker's file that does not parse, or counts NaN or less than 0, is set aside."""
    corrupt = valid_file(directory, workers, 2**22 + 7)
    CORRUPTIONS[corruption](corrupt)
    with caplog.at_level(logging.ERROR, logger="veza_business_metrics.multiprocess"):
        assert scrape(directory) == scrape(directory) == {}  # skipped
        assert caplog.text.count(f"Skipped {corrupt}") == 1  # logged once, not per scrape
        assert multiprocess.sweep(directory) == 1
        assert "counter_archive.db" not in file_names(directory)
        dead_workers(directory, workers, [3])
        assert multiprocess.sweep(directory) == 1
    (aside,) = (name for name in file_names(directory) if name.endswith(".corrupt"))
    slug = {"negative": "bad-value"}.get(corruption, corruption)
    assert re.fullmatch(rf"counter_{2**22 + 7}\.{slug}\.[0-9a-f]{{8}}\.corrupt", aside)
    assert file_names(directory) == {*ARCHIVES, aside}
    assert scrape(directory) == stock_scrape(directory) == worker_samples(3)
    assert f"Skipped {corrupt}" in caplog.text
    assert f"Moved {corrupt} aside as {directory / aside}" in caplog.text


def test_a_damaged_archive_is_refused_not_misread(directory: Path, workers: list[Worker]) -> None:
    """An archive whose checksum fails makes scrapes fail with the reason, and the app 503."""
    dead_workers(directory, workers, [3])
    multiprocess.sweep(directory)
    archive = directory / "counter_archive.db"
    data = bytearray(archive.read_bytes())
    position = data.index(b"VBMA") - 16  # the last entry's value
    data[position] ^= 0x01
    archive.write_bytes(bytes(data))
    with pytest.raises(MultiprocessError, match=r"counter_archive\.db is damaged"):
        scrape(directory)
    status, body = wsgi_get(multiprocess.make_wsgi_app(directory))
    assert status.startswith("503")
    assert "counter_archive.db is damaged" in body
    archive.write_bytes(archive.read_bytes()[:-1])  # cut short, too
    with pytest.raises(MultiprocessError, match="is damaged"):
        scrape(directory)


@pytest.mark.ours
def test_a_scrape_waits_a_bounded_time_for_a_stopped_merge(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process stopped inside its merge fails scrapes after SCRAPE_TIMEOUT, never hangs."""
    monkeypatch.setattr(multiprocess._lock, "SCRAPE_TIMEOUT", 1.0)
    dead_workers(directory, workers, [2])
    app = multiprocess.make_wsgi_app(directory)
    with stopped_holder(directory, "merge"):
        start = time.monotonic()
        with pytest.raises(multiprocess.LockTimeoutError, match="waited 1 s in vain"):
            scrape(directory)
        status, body = wsgi_get(app)
        waited = time.monotonic() - start
        with pytest.raises(multiprocess.LockTimeoutError):
            multiprocess.clear(directory)
    assert status.startswith("503"), body
    assert "in vain" in body
    assert 2.0 <= waited < 6.0, f"two scrapes waited {waited:.2f} s"
    assert wsgi_get(app)[0].startswith("200")
    assert scrape(directory) == worker_samples(2)


@pytest.mark.ours
def test_merges_get_their_turn_under_a_storm_of_scrapes(
    directory: Path, workers: list[Worker]
) -> None:
    """Nine threads that scrape without a pause delay no merge past MERGE_TIMEOUT."""
    dead = dead_workers(directory, workers, [1] * 12)
    stop = threading.Event()
    scrapes: list[int] = []

    def storm() -> None:
        while not stop.is_set() and len(scrapes) < 100_000:
            scrape(directory)
            scrapes.append(1)

    with concurrent.futures.ThreadPoolExecutor(max_workers=9) as pool:
        for _ in range(9):
            pool.submit(storm)
        try:
            time.sleep(0.2)
            slowest = 0.0
            for worker in dead:
                start = time.monotonic()
                multiprocess.mark_process_dead(worker.pid, directory)
                slowest = max(slowest, time.monotonic() - start)
                assert not multiprocess._merge.is_deferred(directory.resolve()), (
                    f"a merge was put off after {len(scrapes)} scrapes"
                )
                assert f"counter_{worker.pid}.db" not in file_names(directory)
        finally:
            stop.set()
    assert slowest < multiprocess.MERGE_TIMEOUT, f"the slowest merge took {slowest:.2f} s"
    assert len(scrapes) > 12
    assert file_names(directory) == ARCHIVES
    assert scrape(directory) == worker_samples(12)


@pytest.mark.ours
def test_merges_resume_once_a_stopped_scrape_goes_away(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merges put off while a scrape is stopped run at the first merge after its window."""
    monkeypatch.setattr(multiprocess._lock, "MERGE_TIMEOUT", 0.3)
    monkeypatch.setattr(multiprocess._merge, "STUCK_SECONDS", 0.5)
    dead = dead_workers(directory, workers, [1, 2, 3])
    with stopped_holder(directory, "scrape"):
        for worker in dead[:2]:
            multiprocess.mark_process_dead(worker.pid, directory)
        assert multiprocess._merge.is_deferred(directory.resolve())
    time.sleep(0.5)  # past the window in which merges only try once
    multiprocess.mark_process_dead(dead[2].pid, directory)
    assert file_names(directory) == ARCHIVES
    assert scrape(directory) == worker_samples(6)


def test_an_archive_records_only_what_an_interrupted_merge_leaves(
    directory: Path, workers: list[Worker], tmp_path: Path
) -> None:
    """After a sweep of 300 dead workers, the archive is no larger than after a sweep of one."""
    data = valid_file(directory, workers, 2**22 + 1).read_bytes()
    for offset in range(2, 301):
        (directory / f"counter_{2**22 + offset}.db").write_bytes(data)
    single = tmp_path / "single"
    single.mkdir()
    (single / f"counter_{2**22 + 1}.db").write_bytes(data)
    assert multiprocess.sweep(directory) == 300
    assert multiprocess.sweep(single) == 1
    partials, absorbed, _ = multiprocess._files.read_archive(directory.resolve(), "counter")
    assert len(absorbed) == 1
    logins = next(key for key in partials if '"success"' in key)
    assert math.fsum(partials[logins]) == 300.0
    sizes = [(path / "counter_archive.db").stat().st_size for path in (directory, single)]
    # The totals have more digits, nothing else grows.
    assert sizes[0] - sizes[1] < 64, f"archive sizes after 300 and 1 merged files: {sizes}"


def test_the_legacy_lower_case_variable_is_honoured(
    directory: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment that sets only prometheus_multiproc_dir merges there, as upstream does."""
    (dead,) = dead_workers(directory, workers, [2])
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("prometheus_multiproc_dir", str(directory))
    multiprocess.mark_process_dead(dead.pid)
    assert multiprocess.sweep() == 0
    assert file_names(directory) == ARCHIVES


def file_of(entries: list[tuple[str, float]]) -> bytes:
    """Return a file of prometheus_client's format that holds ``entries``, duplicates too."""
    data = bytearray(8)
    for entry, value in entries:
        encoded = entry.encode()
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        data += struct.pack(f"i{len(padded)}sdd", len(encoded), padded, value, 0.0)
    struct.pack_into("i", data, 0, len(data))
    return bytes(data)


LOGINS_KEY: Final = json.dumps(["logins", "logins_total", {"outcome": "success"}, "Logins."])
BUCKET_KEY: Final = json.dumps(["latency", "latency_bucket", {"le": "0.1"}, "Latency."])


@pytest.mark.parametrize(
    ("kind", "data", "slug"),
    [
        ("counter", b"\x10\x00", "truncated"),
        ("counter", struct.pack("ii", 64, 0), "truncated"),
        ("counter", struct.pack("iii", 16, 0, 100) + bytes(4), "truncated"),
        ("counter", b"", "none"),
        ("counter", file_of([(LOGINS_KEY, 1.0), (LOGINS_KEY, 2.0)]), "bad-key"),
        ("counter", file_of([(json.dumps([1, 2, {}, "help"]), 1.0)]), "bad-key"),
        ("counter", file_of([(json.dumps({"not": "a list"}), 1.0)]), "bad-key"),
        ("counter", file_of([(json.dumps(["a", "a_total", {"l": 1}, "h"]), 1.0)]), "bad-key"),
        ("histogram", file_of([(BUCKET_KEY.replace('"le"', '"el"'), 1.0)]), "bad-key"),
        ("histogram", file_of([(BUCKET_KEY.replace('"0.1"', '"low"'), 1.0)]), "bad-key"),
        ("histogram", file_of([(BUCKET_KEY, -1.0)]), "bad-value"),
        ("summary", file_of([(BUCKET_KEY.replace("bucket", "sum"), math.inf)]), "bad-value"),
    ],
)
def test_only_what_prometheus_client_writes_is_read(
    tmp_path: Path, kind: str, data: bytes, slug: str
) -> None:
    """A file that prometheus_client could not have written is refused, and says why."""
    path = tmp_path / "file.db"
    path.write_bytes(data)
    if slug == "none":
        assert multiprocess._files.entries(path, kind) == {}
        return
    with pytest.raises(multiprocess._files.CorruptFileError) as refused:
        multiprocess._files.entries(path, kind)
    assert refused.value.slug == slug


def test_a_key_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    """A key whose bytes are not UTF-8 makes its file corrupt."""
    path = tmp_path / "file.db"
    path.write_bytes(file_of([(LOGINS_KEY, 1.0)]).replace(b"logins_total", b"logins\xfftotal"))
    with pytest.raises(multiprocess._files.CorruptFileError, match="is not UTF-8"):
        multiprocess._files.entries(path, "counter")


def test_gauges_may_hold_any_value_but_a_corrupt_one_is_skipped(
    directory: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A gauge set to NaN or below 0 is read; a gauge file that does not parse is skipped."""
    gauge = json.dumps(["temperature", "temperature", {}, "Heat."])
    (directory / f"gauge_all_{2**22 + 1}.db").write_bytes(file_of([(gauge, -3.0)]))
    (directory / f"gauge_all_{2**22 + 2}.db").write_bytes(file_of([("not json", 1.0)]))
    # With no room left to remember keys or reports, every scrape checks and logs anew.
    monkeypatch.setattr(multiprocess._files, "_MAX_CHECKED_KEYS", 0)
    with caplog.at_level(logging.ERROR, logger="veza_business_metrics.multiprocess"):
        read = scrape(directory)
        assert read == scrape(directory) == {key("temperature", "pid", str(2**22 + 1)): -3.0}
    assert caplog.text.count("Skipped") == 2


def test_folders_named_like_files_are_never_read_or_merged(
    directory: Path, workers: list[Worker]
) -> None:
    """A folder named like a worker's file or an archive's claim is left out of everything."""
    dead_workers(directory, workers, [2])
    (directory / f"counter_{2**22 + 3}.db").mkdir()
    (directory / f"counter_{2**22 + 4}.{'0' * 32}.merging").mkdir()
    assert scrape(directory) == worker_samples(2)
    assert multiprocess.sweep(directory) == 1
    assert scrape(directory) == worker_samples(2)


@pytest.mark.ours
@pytest.mark.parametrize("lock", ["loop", "dangling"])
def test_a_scraper_that_cannot_open_the_merge_lock_still_scrapes_and_merges(
    directory: Path, workers: list[Worker], lock: str
) -> None:
    """Where the merge lock file cannot be opened or made, the directory's lock suffices."""
    target = "veza_merge.lock" if lock == "loop" else "nowhere/veza_merge.lock"
    (directory / "veza_merge.lock").symlink_to(target)
    dead_workers(directory, workers, [2])
    assert multiprocess.sweep(directory) == 1
    assert scrape(directory) == worker_samples(2)


@pytest.mark.ours
def test_a_lock_file_made_under_a_strict_umask_is_lockable_by_all(directory: Path) -> None:
    """The merge lock file is made readable by everyone, whatever the umask."""
    old = os.umask(0o077)
    try:
        multiprocess.sweep(directory)
        scrape(directory)
    finally:
        os.umask(old)
    assert (directory / "veza_merge.lock").stat().st_mode & 0o777 == 0o644


def test_the_app_logs_a_merge_that_fails_and_answers_503_for_the_archive(
    directory: Path, workers: list[Worker], caplog: pytest.LogCaptureFixture
) -> None:
    """A sweep before a scrape that fails is logged; the scrape then says why it fails."""
    (directory / "counter_archive.db").write_bytes(bytes(8))  # not this library's
    dead_workers(directory, workers, [1])
    with caplog.at_level(logging.ERROR, logger="veza_business_metrics.multiprocess"):
        status, body = wsgi_get(multiprocess.make_wsgi_app(str(directory)))
    assert status.startswith("503")
    assert "is not an archive written by veza_business_metrics" in body
    assert f"Could not merge the metrics files in {directory}" in caplog.text


@pytest.mark.ours
def test_a_server_that_fails_to_take_a_directory_keeps_its_share(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A serving process refused a cold start still holds its share, with or without procfs."""
    multiprocess.attach(directory)
    with another_server(directory, "attach") as other:
        with pytest.raises(multiprocess.DirectoryInUseError, match=rf"\(pid {other.pid}\)"):
            multiprocess.clear(directory)
        monkeypatch.setattr(multiprocess._files, "PROC", directory / "no-procfs")
        with pytest.raises(multiprocess.DirectoryInUseError, match="by another server: give"):
            multiprocess.clear(directory)
    assert _holds_server_lock(directory)  # this process's share, kept


def get(url: str, authorization: str | None = None) -> tuple[int, Message, str]:
    """Send a GET with an optional Authorization header; return the status, headers, body."""
    headers = {} if authorization is None else {"Authorization": authorization}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read().decode()


def basic(user: str, password: str) -> str:
    """Return the Authorization header value of basic auth with ``user`` and ``password``."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.ours
@pytest.mark.parametrize("served", [wsgi_served, asgi_served], ids=["wsgi", "asgi"])
def test_the_apps_refuse_a_scrape_without_the_credentials(
    directory: Path, workers: list[Worker], served: Any
) -> None:
    """With a token or a user and password, the apps answer 401 to any other request."""
    dead_workers(directory, workers, [2])
    make = multiprocess.make_asgi_app if served is asgi_served else multiprocess.make_wsgi_app
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"bearer_token": "s3cret"}, "Bearer s3cret", "Bearer s3cret2"),
        ({"basic_auth": ("prometheus", "pass:word")}, basic("prometheus", "pass:word"), "Bearer"),
    ]
    for credentials, right, wrong in cases:
        with served(make(directory, **credentials)) as url:
            for authorization in [None, wrong, right.upper(), right.replace(" ", "  ")]:
                status, headers, body = get(url, authorization)
                assert status == 401, (authorization, body)
                expected = "Bearer" if "bearer_token" in credentials else 'Basic realm="metrics"'
                assert headers["WWW-Authenticate"] == expected
            for authorization in [right, right.replace("B", "b", 1)]:  # any case of scheme
                status, _, body = get(url, authorization)
                assert status == 200
                assert samples(body) == worker_samples(2)
    assert file_names(directory) == ARCHIVES  # merged before the first scrape


def test_the_asgi_app_merges_at_a_workers_start_and_serves_openmetrics(
    directory: Path, workers: list[Worker]
) -> None:
    """As a server's whole app, the ASGI app merges at a worker's start, before any scrape."""
    dead_workers(directory, workers, [3])
    with asgi_served(multiprocess.make_asgi_app(directory)) as url:
        assert file_names(directory) == ARCHIVES
        request = urllib.request.Request(  # noqa: S310
            url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert response.read().decode().endswith("# EOF\n")


@pytest.mark.parametrize(
    ("credentials", "error", "message"),
    [
        ({"bearer_token": ""}, ValueError, "bearer_token must be non-empty"),
        ({"bearer_token": "token\n"}, ValueError, "without surrounding white space"),
        ({"bearer_token": b"token"}, TypeError, "bearer_token must be a str, got bytes"),
        ({"basic_auth": "user:password"}, TypeError, "must be a .user, password. tuple"),
        ({"basic_auth": ("user",)}, TypeError, "must be a .user, password. tuple"),
        ({"basic_auth": ("us:er", "pw")}, ValueError, "must not contain ':'"),
        ({"basic_auth": ("user", "")}, ValueError, "the basic_auth password must be non-empty"),
        ({"basic_auth": (None, "pw")}, TypeError, "the basic_auth user must be a str, got None"),
    ],
)
@pytest.mark.ours
def test_the_apps_refuse_credentials_that_cannot_work(
    directory: Path, credentials: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A credential that no scrape config could send raises at once, never showing it."""
    for make in (multiprocess.make_wsgi_app, multiprocess.make_asgi_app):
        with pytest.raises(error, match=message) as raised:
            make(directory, **credentials)
        assert "token" not in str(raised.value).replace("bearer_token", "")


@pytest.mark.once
def test_prometheus_scrapes_the_apps_with_its_credentials(
    directory: Path, workers: list[Worker], tmp_path: Path
) -> None:
    """A real Prometheus with the matching authorization or basic_auth config scrapes them."""
    dead_workers(directory, workers, [4])
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text("t0ken-from-a-file\n")  # as a secret mount has it
    token = (secrets / "token").read_text().strip()
    rules = tmp_path / "rules.yml"
    rules.write_text("groups: []\n")
    with (
        wsgi_served(multiprocess.make_wsgi_app(directory, bearer_token=token)) as bearer,
        asgi_served(multiprocess.make_asgi_app(directory, basic_auth=("prom", "pw"))) as basic_,
        wsgi_served(multiprocess.make_wsgi_app(directory, bearer_token=token)) as refused,
    ):
        address = {
            url: url.removeprefix("http://").removesuffix("/metrics")
            for url in (bearer, basic_, refused)
        }
        settings = {
            "bearer": {"authorization": {"credentials_file": str(secrets / "token")}},
            "basic": {"basic_auth": {"username": "prom", "password": "pw"}},
        }
        targets = {
            "bearer": [address[bearer]],
            "basic": [address[basic_]],
            "none": [address[refused]],
        }
        with running_prometheus(tmp_path, rules, targets, settings) as prometheus:
            up = poll(
                lambda: {
                    item["metric"]["job"]: item["value"][1] for item in prometheus.query("up")
                },
                lambda found: len(found) == 3,
            )
            logins = poll(
                lambda: prometheus.query('veza_business_logins_total{outcome="success"}'),
                lambda found: len(found) == 2,
            )
    assert up == {"bearer": "1", "basic": "1", "none": "0"}
    assert sorted(item["value"][1] for item in logins) == ["4", "4"]
