"""Tests for exemplars in multiprocess mode: each process's file, the merge and the serving."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import shutil
import signal
import time
import urllib.request
from typing import TYPE_CHECKING, Final

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from prometheus_client import Counter, values
from prometheus_client import multiprocess as stock
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import veza_business_metrics as business
from helpers import (
    LOGINS,
    REVENUE,
    Worker,
    asgi_served,
    file_names,
    key,
    merge_in_a_process,
    samples,
    served,
    traced,
    worker_samples,
    wsgi_served,
)
from mp_worker import span_ids
from veza_business_metrics import multiprocess
from veza_business_metrics._exemplars import TracedToFile
from veza_business_metrics._exemplars import traced as traced_child
from veza_business_metrics.multiprocess import _exemplars

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager
    from pathlib import Path
    from typing import Any, TypeAlias

    # wsgi_served or asgi_served: serves an app on 127.0.0.1 and gives its URL.
    ServedApp: TypeAlias = Callable[[Any], AbstractContextManager[str]]


ARCHIVES: Final = {"counter_archive.db", "histogram_archive.db"}
EUR: Final = key(REVENUE, "currency", "EUR")
SUCCESS: Final = key(LOGINS, "outcome", "success")


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """Give an empty multiprocess directory."""
    path = tmp_path / "metrics"
    path.mkdir()
    return path


def start(directory: Path, workers: list[Worker]) -> Worker:
    """Start a worker that records into ``directory``."""
    worker = Worker(directory)
    workers.append(worker)
    return worker


def whole(exemplar: tuple[int, int, float]) -> bool:
    """Tell whether a spinning writer's exemplar has the ids and value of one span."""
    trace_id, span_id, value = exemplar
    return span_ids(span_id) == (trace_id, span_id) and value == span_id


def test_each_series_serves_the_newest_exemplar_of_any_live_worker(
    directory: Path, workers: list[Worker]
) -> None:
    """The collector serves, per series, the exemplar that a live worker attached last."""
    first, second = start(directory, workers), start(directory, workers)
    first.traced(1, 1)
    assert served(directory) == traced(1)
    second.traced(2, 1)
    assert served(directory) == traced(2)
    first.traced(3, 2)
    assert served(directory) == traced(3)
    second.record(1)
    assert served(directory) == traced(3)
    assert samples(multiprocess.MultiProcessCollector(None, path=str(directory))) == (
        worker_samples(5)
    )


def test_an_exited_workers_exemplar_survives_its_merge_until_a_newer_one(
    directory: Path, workers: list[Worker]
) -> None:
    """A merged worker's exemplar is served from the archive until a newer one replaces it."""
    first = start(directory, workers)
    first.traced(1, 1)
    first.exit()
    assert multiprocess.sweep(directory) == 1
    assert file_names(directory) == ARCHIVES
    assert served(directory) == traced(1)
    second = start(directory, workers)
    second.record(1)
    assert served(directory) == traced(1)
    second.traced(2, 1)
    assert served(directory) == traced(2)
    second.kill()
    assert multiprocess.sweep(directory) == 1
    assert file_names(directory) == ARCHIVES
    assert served(directory) == traced(2)


def test_a_merged_older_exemplar_never_replaces_a_newer_live_one(
    directory: Path, workers: list[Worker]
) -> None:
    """Merging an exited worker keeps a live worker's newer exemplar served."""
    first, second = start(directory, workers), start(directory, workers)
    first.traced(1, 1)
    second.traced(2, 1)
    first.exit()
    assert multiprocess.sweep(directory) == 1
    assert served(directory) == traced(2)
    second.exit()
    assert multiprocess.sweep(directory) == 1
    assert served(directory) == traced(2)


def test_recycled_and_killed_workers_always_serve_the_newest_exemplar(
    directory: Path, workers: list[Worker]
) -> None:
    """Through generations of workers that exit or are SIGKILLed, the newest span is served."""
    live = [start(directory, workers) for _ in range(3)]
    for number in range(1, 13):
        worker = live[number % 3]
        worker.traced(number, 1)
        assert served(directory) == traced(number)
        if number % 2:
            worker.exit()
        else:
            worker.kill()
        if number % 3 == 0:
            multiprocess.sweep(directory)
        assert served(directory) == traced(number)
        live[number % 3] = start(directory, workers)
    multiprocess.sweep(directory)
    assert served(directory) == traced(12)
    assert samples(multiprocess.MultiProcessCollector(None, path=str(directory))) == (
        worker_samples(12)
    )


@pytest.mark.ours
def test_a_writer_killed_at_any_point_never_leaves_a_torn_exemplar(
    directory: Path, workers: list[Worker]
) -> None:
    """Scrapes during and after writes cut by SIGKILL serve only whole, ever newer exemplars."""
    newest = 0
    for round_number in range(12):
        writer = start(directory, workers)
        first = 10_000_000 * (round_number + 1)
        writer.spin(first)
        deadline = time.monotonic() + random.uniform(0.01, 0.2)  # noqa: S311
        while time.monotonic() < deadline:
            exemplar = served(directory)[EUR]
            assert whole(exemplar), exemplar
            assert exemplar[1] >= max(newest, first), (exemplar, newest)
            newest = exemplar[1]
        writer.process.send_signal(signal.SIGKILL)
        writer.close()
        exemplar = served(directory)[EUR]
        assert whole(exemplar), exemplar
        assert exemplar[1] >= newest
        newest = exemplar[1]
        if round_number % 4 == 3:
            multiprocess.sweep(directory)
            assert served(directory)[EUR] == exemplar


@pytest.mark.ours
def test_a_merge_killed_at_any_change_keeps_the_newest_exemplar(
    tmp_path: Path, workers: list[Worker]
) -> None:
    """SIGKILLed at every change, a merge leaves the newest exemplar served, then merged."""
    template = tmp_path / "template"
    template.mkdir()
    earlier, newer = start(template, workers), start(template, workers)
    earlier.traced(1, 1)
    earlier.exit()
    multiprocess.sweep(template)
    newer.traced(2, 1)
    newer.exit()
    assert served(template) == traced(2)
    points = []
    for die_at in range(1, 100):
        directory = tmp_path / f"killed-at-{die_at}"
        directory.mkdir()
        for name in file_names(template):
            (directory / name).write_bytes((template / name).read_bytes())
        result = merge_in_a_process(directory, die_at, 0)
        if result.returncode == 0:
            break
        points.append(result.stderr.strip())
        assert result.returncode == -signal.SIGKILL, result.stderr
        assert served(directory) == traced(2), f"after dying at {points[-1]}"
        multiprocess.sweep(directory)
        assert served(directory) == traced(2), f"after recovering from {points[-1]}"
        assert file_names(directory) == ARCHIVES, points[-1]
    kinds = {point.split()[0] for point in points}
    assert kinds == {"rename", "write", "fsync", "replace", "unlink"}
    assert any("exemplars_" in point for point in points), points


def test_a_corrupt_exemplar_file_is_skipped_then_set_aside(
    directory: Path, workers: list[Worker], caplog: pytest.LogCaptureFixture
) -> None:
    """A file of exemplars that does not parse is skipped, logged once, then set aside."""
    live, broken = start(directory, workers), start(directory, workers)
    live.traced(1, 1)
    broken.traced(2, 1)
    broken.exit()
    path = directory / f"exemplars_{broken.pid}.bin"
    path.write_bytes(b"VBEX\x09" + path.read_bytes()[5:])
    with caplog.at_level(logging.ERROR, "veza_business_metrics.multiprocess"):
        assert served(directory) == traced(1)
        assert served(directory) == traced(1)
    assert [record.message.split(":")[0] for record in caplog.records] == [
        f"Skipped the exemplars of {path} in every scrape"
    ]
    caplog.clear()
    with caplog.at_level(logging.ERROR, "veza_business_metrics.multiprocess"):
        assert multiprocess.sweep(directory) == 1
    (corrupt,) = (name for name in file_names(directory) if name.endswith(".corrupt"))
    assert corrupt.startswith(f"exemplars_{broken.pid}.bad-header.")
    assert "Its process's exemplars are lost" in caplog.text
    assert served(directory) == traced(1)
    assert samples(multiprocess.MultiProcessCollector(None, path=str(directory))) == (
        worker_samples(2)
    )


def test_a_torn_half_serves_the_other_whole_one(directory: Path, workers: list[Worker]) -> None:
    """A slot whose newest half fails its checksum serves its older whole half."""
    worker = start(directory, workers)
    worker.traced(1, 1)
    worker.traced(2, 1)
    worker.exit()
    path = directory / f"exemplars_{worker.pid}.bin"
    data = bytearray(path.read_bytes())
    # The logins' slot came first, the revenue's second; sequence 2 is in the first half.
    data[16 + 256 + 128 + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    assert served(directory) == {SUCCESS: traced(2)[SUCCESS], EUR: traced(1)[EUR]}
    multiprocess.sweep(directory)
    assert served(directory) == {SUCCESS: traced(2)[SUCCESS], EUR: traced(1)[EUR]}


def test_prometheus_clients_collector_reads_a_directory_with_exemplars(
    directory: Path, workers: list[Worker]
) -> None:
    """The files of exemplars are never mistaken by prometheus_client's collector for its own."""
    first, second = start(directory, workers), start(directory, workers)
    first.traced(1, 2)
    second.traced(2, 1)
    second.exit()
    multiprocess.sweep(directory)
    theirs = samples(stock.MultiProcessCollector(None, path=str(directory)))  # type: ignore[no-untyped-call]
    assert theirs == worker_samples(3)


def test_a_process_that_reused_a_pid_goes_on_after_the_slots_of_its_file(
    directory: Path, workers: list[Worker]
) -> None:
    """A process that finds its pid's file of exemplars keeps them and writes after them."""
    gone = start(directory, workers)
    gone.traced(1, 1)
    gone.exit()

    def inherit(pid: int) -> None:
        for name in (f"exemplars_{gone.pid}.bin", f"counter_{gone.pid}.db"):
            (directory / name).rename(directory / name.replace(str(gone.pid), str(pid)))

    heir = Worker(directory, before_open=inherit)
    workers.append(heir)
    assert served(directory) == traced(1)
    heir.traced(2, 1)
    assert served(directory) == traced(2)
    data = (directory / f"exemplars_{heir.pid}.bin").read_bytes()
    assert int.from_bytes(data[8:12], "little") == 2
    heir.exit()
    multiprocess.sweep(directory)
    assert served(directory) == traced(2)


def test_a_process_that_finds_a_damaged_file_under_its_pid_starts_it_again(
    directory: Path, workers: list[Worker]
) -> None:
    """A damaged file of exemplars under a new process's pid is emptied, then written."""

    def damage(pid: int) -> None:
        (directory / f"exemplars_{pid}.bin").write_bytes(b"not ours")

    worker = Worker(directory, before_open=damage)
    workers.append(worker)
    worker.traced(3, 1)
    assert served(directory) == traced(3)


@pytest.fixture
def in_multiprocess_mode(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the counters created in this test keep their values in ``directory``'s files."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())  # type: ignore[no-untyped-call]
    # The process's writer opens its file once: each test gets a writer of its own.
    monkeypatch.setattr(_exemplars, "writer", _exemplars.Writer())
    return directory


def own_file(directory: Path) -> dict[str, _exemplars.Stored]:
    """Return the exemplars in this process's file in ``directory``."""
    return _exemplars.read_file(directory / _exemplars.file_name(os.getpid()))


def test_a_traced_child_in_multiprocess_mode_writes_what_the_collector_serves(
    in_multiprocess_mode: Path,
) -> None:
    """In multiprocess mode a traced child counts in its file and writes its span's ids."""
    revenue = Counter(REVENUE.removesuffix("_total"), "Revenue.", ["currency"], registry=None)
    business.enable_trace_exemplars()
    try:
        child = traced_child(revenue.labels("EUR"))
        assert type(child) is TracedToFile
        trace_id, span_id = span_ids(9)
        flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        ids = trace.SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags)
        with trace.use_span(trace.NonRecordingSpan(ids)):
            child.inc(1999)
        child.inc(1)
    finally:
        business.disable_trace_exemplars()
        # prometheus_client keeps the counter file open for the process's life.
        revenue.labels("EUR")._value._file.close()
    assert served(in_multiprocess_mode) == {EUR: (trace_id, span_id, 1999.0)}
    assert samples(multiprocess.MultiProcessCollector(None, str(in_multiprocess_mode)))[EUR] == (
        2000
    )


def test_a_writer_goes_on_after_the_slots_its_pid_left(in_multiprocess_mode: Path) -> None:
    """A writer that finds its pid's file keeps its exemplars and continues each sequence."""
    _exemplars.Writer().write(series_key(1), 1, 1, 1, 1.0)
    _exemplars.writer.write(series_key(1), 2, 2, 2, 2.0)
    _exemplars.writer.write(series_key(2), 3, 3, 3, 3.0)
    stored = own_file(in_multiprocess_mode)
    assert {key: (e.sequence, e.value) for key, e in stored.items()} == {
        series_key(1): (2, 2.0),
        series_key(2): (1, 3.0),
    }


@pytest.mark.parametrize("left", [b"", bytes(64), b"VBEX", b"VBEX\x09\x00\x00\x00" * 8])
def test_a_writer_starts_again_a_file_that_holds_no_exemplar_of_this_release(
    in_multiprocess_mode: Path, left: bytes
) -> None:
    """An empty, unwritten, short or foreign file under this pid is started again, then written."""
    (in_multiprocess_mode / _exemplars.file_name(os.getpid())).write_bytes(left)
    _exemplars.writer.write(series_key(5), 5, 5, 5, 5.0)
    assert own_file(in_multiprocess_mode) == {series_key(5): _exemplars.Stored(5.0, 1, 5.0, 5, 5)}


@pytest.mark.parametrize(("data", "read"), [(b"", {}), (bytes(16), {}), (bytes(4000), {})])
def test_a_file_that_its_writer_never_wrote_to_reads_as_empty(
    data: bytes, read: dict[str, _exemplars.Stored]
) -> None:
    """A file killed between its creation, its sizing and its header holds no exemplar."""
    assert _exemplars.read(data) == read


@pytest.mark.parametrize("data", [b"VBEX", b"VBEX\x01\x00\x00\x00\xff\xff\x00\x00" + bytes(4)])
def test_a_file_cut_short_is_refused(data: bytes) -> None:
    """A header cut short, or one that counts more slots than the file holds, is refused."""
    with pytest.raises(_exemplars.BadExemplarFileError):
        _exemplars.read(data)


@pytest.mark.ours
def test_a_signal_handler_that_records_during_a_write_leaves_every_exemplar_whole(
    in_multiprocess_mode: Path,
) -> None:
    """A handler's exemplar in the middle of a write is dropped; every other one is kept."""
    written: dict[str, int] = {}
    handling: list[bool] = []

    def handler(_signal: int, _frame: object) -> None:
        if handling:  # the timer fired again inside the handler: its write is enough
            return
        handling.append(True)
        number = 10_000 + len(written)
        written[series_key(number)] = number
        _exemplars.writer.write(series_key(number), number, number, number, 1.0)
        handling.clear()

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        for number in range(1, 600):
            written[series_key(number)] = number
            _exemplars.writer.write(series_key(number), number, number, number, 1.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    stored = {key: exemplar.span_id for key, exemplar in own_file(in_multiprocess_mode).items()}
    assert {key: number for key, number in written.items() if number < 10_000}.items() <= (
        stored.items()
    )
    assert stored.items() <= written.items()
    assert any(number >= 10_000 for number in stored.values())


def series_key(number: int) -> str:
    """Return the key of a series of a test counter, as ``key_of`` writes it."""
    return json.dumps(["metric", "metric_total", {"n": str(number)}])


@pytest.mark.parametrize(
    "obstacle", ["directory", "symlink", "fifo", "no variable"], ids=lambda obstacle: obstacle
)
def test_a_file_that_cannot_be_opened_fails_no_call(
    in_multiprocess_mode: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    obstacle: str,
) -> None:
    """A writer that cannot open its file logs it once and keeps no exemplar, never raising."""
    path = in_multiprocess_mode / _exemplars.file_name(os.getpid())
    victim = tmp_path / "victim"
    victim.write_bytes(b"not to be written over")
    if obstacle == "directory":
        path.mkdir()
    elif obstacle == "symlink":
        path.symlink_to(victim)
    elif obstacle == "fifo":  # opens, then cannot be read at an offset
        os.mkfifo(path)
    else:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    with caplog.at_level(logging.WARNING, "veza_business_metrics.multiprocess"):
        for number in range(1, 4):
            _exemplars.writer.write(series_key(number), number, number, number, 1.0)
    assert [record.message.split(":")[0] for record in caplog.records] == [
        f"Keeping no more trace exemplars in process {os.getpid()}, whose events are still counted"
    ]
    assert victim.read_bytes() == b"not to be written over"
    assert served(in_multiprocess_mode) == {}


def test_a_slot_that_cannot_be_allocated_gives_up_without_a_crash(
    in_multiprocess_mode: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file system that refuses a new slot's page stops the exemplars, not the process."""
    _exemplars.writer.write(series_key(1), 1, 1, 1, 1.0)
    descriptor = _exemplars.writer._descriptor
    assert descriptor is not None
    # A descriptor that cannot grow the file, as a full tmpfs cannot, in the writer's place.
    refusing = os.open(in_multiprocess_mode / _exemplars.file_name(os.getpid()), os.O_RDONLY)
    os.dup2(refusing, descriptor)
    os.close(refusing)
    with caplog.at_level(logging.WARNING, "veza_business_metrics.multiprocess"):
        _exemplars.writer.write(series_key(2), 2, 2, 2, 2.0)
        _exemplars.writer.write(series_key(1), 3, 3, 3, 3.0)
    assert "Bad file descriptor" in caplog.text
    assert {key: exemplar.span_id for key, exemplar in own_file(in_multiprocess_mode).items()} == {
        series_key(1): 1
    }


def test_a_slot_that_names_no_series_is_never_read_nor_merged(
    in_multiprocess_mode: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whole slots whose key or values no release writes are skipped, and kept from archives."""
    foreign = json.dumps(["metric", "metric_total", {"n": ["a list"]}])
    _exemplars.writer.write(foreign, 1, 1, 1, 1.0)
    _exemplars.writer.write('"a string"', 1, 1, 1, 1.0)
    _exemplars.writer.write(series_key(1), math.nan, 1, 1, 1.0)
    _exemplars.writer.write(series_key(2), 1, 1, 1, math.inf)
    _exemplars.writer.write(series_key(3), 3, 3, 3, 3.0)
    assert list(own_file(in_multiprocess_mode)) == [series_key(3)]
    # The same file, as a process that is gone left it: merged into the archive.
    own = in_multiprocess_mode / _exemplars.file_name(os.getpid())
    shutil.copyfile(own, in_multiprocess_mode / _exemplars.file_name(2**22 + 5))
    with caplog.at_level(logging.ERROR):
        multiprocess.sweep(in_multiprocess_mode)
        assert served(in_multiprocess_mode) == {}
    record = (in_multiprocess_mode / "counter_archive.db").read_bytes()
    assert series_key(3).encode() in record.replace(b'\\"', b'"')
    assert b"a list" not in record
    assert caplog.text == ""


def test_the_limits_of_a_file_skip_the_exemplar_never_the_scrape(
    in_multiprocess_mode: Path,
) -> None:
    """A key too long, a series past the file's capacity or a foreign key fails nothing."""
    _exemplars.writer.write("k" * (_exemplars.MAX_KEY_BYTES + 1), 1, 1, 1, 1.0)
    for index in range(_exemplars.CAPACITY + 1):
        _exemplars.writer.write(series_key(index), index, index + 1, index + 1, 1.0)
    stored = own_file(in_multiprocess_mode)
    assert len(stored) == _exemplars.CAPACITY
    assert series_key(_exemplars.CAPACITY - 1) in stored
    assert series_key(_exemplars.CAPACITY) not in stored
    assert "k" * (_exemplars.MAX_KEY_BYTES + 1) not in stored
    # Series that no counter of this process has are read, and attached to no sample.
    assert served(in_multiprocess_mode) == {}


# Python's fork, which runs the fork hooks, and libc's, which runs none, as uWSGI forks
# its workers unless told otherwise.
FORKS: Final = {"os.fork": "os.fork()", "libc fork": "ctypes.CDLL(None).fork()"}


@pytest.mark.ours
@pytest.mark.parametrize("fork", FORKS.values(), ids=FORKS.keys())
def test_a_forked_child_writes_its_own_file(
    run_python: Callable[..., str], directory: Path, fork: str
) -> None:
    """After a fork, hooks run or not, the child's exemplars go to its own file only."""
    program = f"""
import ctypes, os
from opentelemetry import trace
import veza_business_metrics as business

business.enable_trace_exemplars()

def record(number):
    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
    ids = trace.SpanContext(number, number, is_remote=False, trace_flags=flags)
    with trace.use_span(trace.NonRecordingSpan(ids)):
        business.record_revenue(number, "EUR")

record(1)
child = {fork}
if child == 0:
    record(2)
    os._exit(0)
os.waitpid(child, 0)
print(os.getpid(), child)
"""
    parent, child = run_python(program, {"PROMETHEUS_MULTIPROC_DIR": str(directory)}).split()
    by_file = {
        pid: _exemplars.read_file(directory / _exemplars.file_name(int(pid)))
        for pid in (parent, child)
    }
    assert [stored.span_id for stored in by_file[parent].values()] == [1]
    assert [stored.span_id for stored in by_file[child].values()] == [2]


def test_after_a_fork_the_child_lets_go_of_its_parents_file(in_multiprocess_mode: Path) -> None:
    """The fork hook closes the parent's file in the child, whose next write opens its own."""
    _exemplars.Writer().after_fork_in_child()  # a writer that never opened: nothing to close
    _exemplars.writer.write(series_key(1), 1, 1, 1, 1.0)
    descriptor = _exemplars.writer._descriptor
    assert descriptor is not None
    _exemplars.writer.after_fork_in_child()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(descriptor)
    _exemplars.writer.write(series_key(1), 2, 2, 2, 2.0)
    assert own_file(in_multiprocess_mode)[series_key(1)].span_id == 2
    # A real child has a pid, and so a file, of its own; here the pid is the same, and
    # the reopened writer goes on after the slot it finds.
    assert own_file(in_multiprocess_mode)[series_key(1)].sequence == 2


def test_a_writer_inherited_without_the_fork_hooks_opens_a_file_of_its_own(
    in_multiprocess_mode: Path,
) -> None:
    """A writer whose file another pid opened, as after a fork in C, lets it go first."""
    _exemplars.writer.write(series_key(1), 1, 1, 1, 1.0)
    # What a child forked without Python's fork hooks holds: its parent's open writer.
    _exemplars.writer._pid = os.getpid() + 1
    _exemplars.writer.write(series_key(1), 2, 2, 2, 2.0)
    assert _exemplars.writer._pid == os.getpid()
    assert own_file(in_multiprocess_mode)[series_key(1)].span_id == 2


def test_keys_are_checked_again_when_there_is_no_room_to_remember_them(
    in_multiprocess_mode: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no room left to remember checked keys, every read checks them anew, alike."""
    monkeypatch.setattr(_exemplars, "_MAX_CHECKED_KEYS", 0)
    _exemplars.writer.write(series_key(1), 1, 1, 1, 1.0)
    _exemplars.writer.write('"not a series"', 1, 1, 1, 1.0)
    assert list(own_file(in_multiprocess_mode)) == list(own_file(in_multiprocess_mode))
    assert list(own_file(in_multiprocess_mode)) == [series_key(1)]


def test_clear_keeps_this_processs_exemplars(
    run_python: Callable[..., str], directory: Path
) -> None:
    """clear() deletes other processes' files of exemplars and keeps this process's."""
    (directory / "exemplars_99999999.bin").write_bytes(b"")
    program = """
import os
from opentelemetry import trace
import veza_business_metrics as business
from veza_business_metrics import multiprocess

business.enable_trace_exemplars()
flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
ids = trace.SpanContext(7, 7, is_remote=False, trace_flags=flags)
with trace.use_span(trace.NonRecordingSpan(ids)):
    business.record_login_success()
multiprocess.clear()
print(os.getpid())
"""
    pid = run_python(program, {"PROMETHEUS_MULTIPROC_DIR": str(directory)}).strip()
    assert f"exemplars_{pid}.bin" in file_names(directory)
    assert "exemplars_99999999.bin" not in file_names(directory)


def test_the_largest_ids_stay_within_the_exemplar_limit(
    directory: Path, workers: list[Worker]
) -> None:
    """The longest exemplar the library writes is within OpenMetrics' 128 runes of labels."""
    worker = start(directory, workers)
    worker.traced(2**64 - 1, 1)
    (trace_id, span_id, _) = served(directory)[EUR]
    assert (trace_id, span_id) == (2**128 - 1, 2**64 - 1)
    body = through_the_app(directory, "application/openmetrics-text")
    exemplars = [
        sample.exemplar
        for family in text_string_to_metric_families(body)  # type: ignore[no-untyped-call]
        for sample in family.samples
        if sample.exemplar is not None
    ]
    assert len(exemplars) == 2
    for exemplar in exemplars:
        assert sum(len(name) + len(value) for name, value in exemplar.labels.items()) <= 128


def through_the_app(directory: Path, accept: str | None, serving: ServedApp = wsgi_served) -> str:
    """Return what the app that ``serving`` runs answers a scrape that accepts ``accept``."""
    make = multiprocess.make_wsgi_app if serving is wsgi_served else multiprocess.make_asgi_app
    headers = {} if accept is None else {"Accept": accept}
    with serving(make(directory)) as url:
        request = urllib.request.Request(url, headers=headers)  # noqa: S310  a local server
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            body: bytes = response.read()
    return body.decode()


@pytest.mark.parametrize("serving", [wsgi_served, asgi_served], ids=["wsgi", "asgi"])
def test_the_apps_serve_exemplars_in_openmetrics_only(
    directory: Path, workers: list[Worker], serving: ServedApp
) -> None:
    """The apps serve exemplars to a scraper that asks for OpenMetrics, and none otherwise."""
    worker = start(directory, workers)
    worker.traced(5, 1)
    trace_id, span_id = span_ids(5)
    bodies = [
        through_the_app(directory, accept, serving)
        for accept in ("application/openmetrics-text", None)
    ]
    assert f'trace_id="{trace_id:032x}"' in bodies[0]
    assert f'span_id="{span_id:016x}"' in bodies[0]
    assert "trace_id" not in bodies[1]


def test_an_archive_written_before_exemplars_gains_them_at_the_next_merge(
    directory: Path, workers: list[Worker]
) -> None:
    """An archive without exemplars, as a merge with none writes, reads as none, then grows."""
    first = start(directory, workers)
    first.record(1)
    first.exit()
    multiprocess.sweep(directory)
    assert b'"exemplars"' not in (directory / "counter_archive.db").read_bytes()
    assert served(directory) == {}
    second = start(directory, workers)
    second.traced(4, 1)
    second.exit()
    multiprocess.sweep(directory)
    assert b'"exemplars"' in (directory / "counter_archive.db").read_bytes()
    assert served(directory) == traced(4)


@functools.cache
def written_file() -> tuple[bytes, frozenset[str]]:
    """Return the bytes of a file of exemplars, as a writer leaves it, and its keys."""
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as temporary:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = temporary
        try:
            writer = _exemplars.Writer()
            keys = [json.dumps(["metric", "metric_total", {"n": str(n)}]) for n in range(4)]
            for number in range(1, 40):
                trace_id, span_id = span_ids(number)
                writer.write(keys[number % 4], number, trace_id, span_id, float(number))
            path = os.path.join(temporary, _exemplars.file_name(os.getpid()))  # noqa: PTH118
            with open(path, "rb") as file:  # noqa: PTH123
                return file.read(16 + 4 * 256), frozenset(keys)
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


@given(st.lists(st.tuples(st.integers(0, 16 + 4 * 256 - 1), st.integers(1, 255)), max_size=8))
def test_damaged_bytes_never_read_as_a_torn_exemplar(changes: list[tuple[int, int]]) -> None:
    """Whatever bytes change in a file, a read fails whole or gives only written exemplars."""
    data, keys = written_file()
    damaged = bytearray(data)
    for offset, flip in changes:
        damaged[offset] ^= flip
    try:
        stored = _exemplars.read(bytes(damaged))
    except _exemplars.BadExemplarFileError:
        return
    for series, exemplar in stored.items():
        assert series in keys
        assert whole((exemplar.trace_id, exemplar.span_id, exemplar.value))
        assert exemplar.timestamp == exemplar.value
