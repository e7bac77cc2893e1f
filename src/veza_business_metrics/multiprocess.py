"""prometheus_client's multiprocess mode, with dead workers' files merged exactly.

prometheus_client keeps one file per process and type in ``PROMETHEUS_MULTIPROC_DIR``
and reads every one of them on every scrape, so a server that recycles its workers
scrapes slower each day. Here the files of a dead process are merged into one archive
per type (counter, histogram, summary), which a scrape reads with the live files.

Scrapes and merges exclude each other through an ``fcntl.flock`` on the directory
itself, so a scrape sees the directory wholly before or wholly after a merge. A merge
never loses or repeats a count, even when killed at any point:

1. it renames each file to merge to a name that no process will ever open again (the
   *claim*), so a new process that gets the same pid starts a fresh file;
2. it writes the new archive to a temporary file, fsyncs it and ``os.replace``-s the old
   one; the archive records the claimed names it absorbed;
3. it unlinks the claimed files.

A scrape counts claimed files that their archive has not absorbed, and skips the others;
the next merge finishes what a killed one started. A file is only merged once no process
with its pid has it open (``/proc/<pid>/fd``), which prometheus_client does from the file's
creation on; this also protects a worker that reused a dead worker's pid and continued
its file.

Sums are exact: the archive keeps each series' total as a sum of doubles that lose
nothing (Shewchuk's partials), and a scrape adds them and the live files' values with
``math.fsum``. A total is thus the correctly rounded sum of every value ever recorded,
the same whichever files were merged, so no series goes down when a worker is merged,
not even by the last bit of a fractional histogram ``_sum``.

This module relies on these prometheus_client internals, tested on 0.20.0 and the newest
release: the file names ``<type>_<pid>.db`` and ``gauge_<mode>_<pid>.db``; the file format
(a 4-byte used length, 4 bytes of padding, then entries of a 4-byte key length, the UTF-8
key padded with spaces to 8 bytes, a value and a timestamp, both doubles; readers stop at
the used length) and its keys, the JSON of ``[metric name, sample name, labels, help]``;
the additivity of counter, histogram and summary values per key;
``MmapedDict.read_all_values_from_file``; ``MultiProcessCollector``'s ``_path``,
``_read_metrics`` and ``_accumulate_metrics``; and the live gauge modes, ``live*``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import struct
import threading
import time
import uuid
from collections import defaultdict, deque
from pathlib import Path
from typing import TYPE_CHECKING, Final

from prometheus_client import multiprocess as upstream
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from prometheus_client.registry import CollectorRegistry

__all__ = ["MultiProcessCollector", "clear", "mark_process_dead", "sweep"]

_ADDITIVE: Final = ("counter", "histogram", "summary")
_PROCESS_FILE: Final = re.compile(r"(?:counter|histogram|summary|gauge_[a-z]+)_(\d+)\.db")
_LIVE_FILE: Final = re.compile(r"(counter|histogram|summary)_(\d+)\.db")
_LIVE_GAUGE_FILE: Final = re.compile(r"gauge_live[a-z]+_\d+\.db")
_CLAIMED_FILE: Final = re.compile(r"(counter|histogram|summary)_(\d+)\.[0-9a-f]{32}\.merging")
_CLAIMED_GAUGE_FILE: Final = re.compile(r"gauge_live[a-z]+_(\d+)\.[0-9a-f]{32}\.merging")
_TEMPORARY_ARCHIVE: Final = re.compile(r"(counter|histogram|summary)_archive\.[0-9a-f]{32}\.tmp")
_ARCHIVE_VERSION: Final = 1
_HEADER: Final = 8  # prometheus_client's used length and padding
# The archive keeps prometheus_client's format up to the used length, so that its reader
# reads it like a process's file; the archive's own record follows, after this mark.
_RECORD_MARK: Final = b"VBMA"
_PROC: Final = Path("/proc")
# How long a merge waits for scrapes to let go of the lock before it leaves its work to
# the next merge: a scrape stopped half-way must not hang a gunicorn master.
_LOCK_TIMEOUT: Final = 2.0
# Until when a directory's merges try the lock once without waiting, after one waited in
# vain: a burst of worker exits must not hold a gunicorn master for 2 seconds each.
_stuck_until: dict[str, float] = {}

# The descriptors through which this process takes the lock. A child forked meanwhile
# gets copies, which would hold the lock until the child exits: it closes them. The
# lock that guards the set is reentrant, since a signal handler may run a merge, and
# so open a descriptor, while the code it interrupted holds it, as gunicorn's before
# version 24 do when a SIGCHLD comes during the fork hooks.
_descriptors: set[int] = set()
_opening = threading.RLock()
# Whether this thread is taking or holding the lock: a merge that a signal handler asks
# for meanwhile must not wait for it. It is put off, with a merge that waited too long
# for scrapes, in its directory's deque: append and popleft are atomic even against
# signal handlers, and only the merges of that directory, one at a time since each holds
# its lock, take from it. None stands for a sweep.
_local = threading.local()
# Keyed by str, since a Path hashes in Python code that a signal handler could interrupt.
_deferred: dict[str, deque[set[int] | None]] = {}


def _before_fork() -> None:
    _opening.acquire()


def _after_fork_in_parent() -> None:
    _opening.release()


def _after_fork_in_child() -> None:
    global _opening  # noqa: PLW0603  a child starts with a lock that nothing holds
    _opening = threading.RLock()
    for descriptor in _descriptors:
        # Another fork hook may have closed it already; the resets below must still run.
        with contextlib.suppress(OSError):
            os.close(descriptor)
    _descriptors.clear()
    _local.holding = False
    _deferred.clear()
    _stuck_until.clear()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


class MultiProcessCollector(upstream.MultiProcessCollector):
    """Collect the metrics of every process, live or merged, as prometheus_client's does.

    Args:
        registry: The registry to register with, or ``None``.
        path: The multiprocess directory; ``PROMETHEUS_MULTIPROC_DIR`` by default.

    Raises:
        ValueError: If ``path`` is not given and the variable is not set, or if it is
            not a directory.
    """

    def __init__(self, registry: CollectorRegistry | None, path: str | None = None) -> None:
        """Check the directory, and register with ``registry`` unless it is ``None``."""
        super().__init__(registry, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        """Return every family, summed exactly over the live files and the archives."""
        directory = Path(self._path).resolve()
        with _locked(directory, fcntl.LOCK_SH):
            families = _collect(directory)
        if _is_deferred(directory):  # a signal handler asked for a merge meanwhile
            # The merge stays put off if it fails; the scrape it follows must not fail.
            with contextlib.suppress(OSError):
                _compact(directory, set())
        return families


def mark_process_dead(pid: int, path: str | os.PathLike[str] | None = None) -> None:
    """Remove a dead process's live gauges, then merge its other files into the archives.

    Call it from gunicorn's ``child_exit`` hook, or wherever a host learns that one of
    its worker processes has exited. Gauge files other than live ones stay, as
    prometheus_client's own ``mark_process_dead`` leaves them. Files that a running
    process with that pid has open, as a new worker that reused the pid may, stay too.

    Args:
        pid: The process that exited.
        path: The multiprocess directory; ``PROMETHEUS_MULTIPROC_DIR`` by default.

    Raises:
        TypeError: If ``pid`` is not an int.
        ValueError: If ``path`` is not given and the variable is not set.
    """
    if isinstance(pid, bool) or not isinstance(pid, int):
        msg = f"pid must be an int, got {type(pid).__name__} {pid!r}"
        raise TypeError(msg)
    _compact(_directory(path), {int(pid)})


def sweep(path: str | os.PathLike[str] | None = None) -> int:
    """Do what ``mark_process_dead`` does for every process that is no longer running.

    It is for hosts without a hook on a worker's exit, and for files left while nothing
    was watching. It decides from the pids in the file names, so the directory must only
    hold files of processes in this host's PID namespace.

    Args:
        path: The multiprocess directory; ``PROMETHEUS_MULTIPROC_DIR`` by default.

    Returns:
        How many dead processes' files it merged.

    Raises:
        ValueError: If ``path`` is not given and the variable is not set.
    """
    return _compact(_directory(path), None)


def clear(path: str | os.PathLike[str] | None = None) -> None:
    """Delete every file in the directory but this process's own: count from zero.

    Call it when a server starts cold, before its workers start, so that counts of an
    earlier run do not add up with the new ones. Never call it while processes of a
    running server still write there, as during a gunicorn ``USR2`` upgrade.

    Args:
        path: The multiprocess directory; ``PROMETHEUS_MULTIPROC_DIR`` by default.

    Raises:
        ValueError: If ``path`` is not given and the variable is not set.
    """
    directory = _directory(path)
    # A process that imported prometheus_client's metrics already wrote its zero series,
    # as a gunicorn master does with --preload: those files are this run's.
    own = f"_{os.getpid()}.db"
    with _locked(directory, fcntl.LOCK_EX):
        for file in directory.iterdir():
            if not file.name.endswith(own):
                file.unlink()


def _directory(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not path:
            msg = "path was not given and PROMETHEUS_MULTIPROC_DIR is not set"
            raise ValueError(msg)
    return Path(path).resolve()


@contextlib.contextmanager
def _locked(directory: Path, operation: int, timeout: float | None = None) -> Iterator[bool]:
    """Hold the directory's lock while the block runs; give whether it was taken in time."""
    outer = getattr(_local, "holding", False)
    _local.holding = True
    try:
        with _opening:
            # The directory itself, not a lock file: whoever may read the directory, a
            # worker of another user or an exporter on a read-only mount, may lock it.
            descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            _descriptors.add(descriptor)
        try:
            if timeout is None:
                fcntl.flock(descriptor, operation)
                yield True
            else:
                yield _flock_before(descriptor, operation, time.monotonic() + timeout)
        finally:
            with _opening:
                _descriptors.discard(descriptor)
                os.close(descriptor)
    finally:
        _local.holding = outer


def _flock_before(descriptor: int, operation: int, deadline: float) -> bool:
    while True:
        try:
            fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        else:
            return True


def _collect(directory: Path) -> Iterable[Metric]:
    names = []
    gauges = []
    for file in os.scandir(directory):
        # prometheus_client creates a file empty, then sizes it: until then it holds
        # nothing, and its reader would fail on it.
        if file.name.startswith("gauge_") and file.name.endswith(".db") and file.stat().st_size:
            gauges.append(file.path)
        else:
            names.append(file.name)
    metrics: dict[str, Metric] = upstream.MultiProcessCollector._read_metrics(gauges)  # type: ignore[no-untyped-call]  # noqa: SLF001
    samples: dict[tuple[str, str, str, tuple[tuple[str, str], ...]], list[float]] = {}
    for (kind, key), parts in _additive_values(directory, names).items():
        metric_name, name, labels, help_text = json.loads(key)
        if metric_name not in metrics:
            metrics[metric_name] = Metric(metric_name, help_text, kind)
        # Keys that differ only by help text name one series: sum them exactly too.
        series = (metric_name, kind, name, tuple(sorted(labels.items())))
        samples.setdefault(series, []).extend(parts)
    for (metric_name, _, name, labels), parts in samples.items():
        metrics[metric_name].add_sample(name, labels, _sum(parts))  # type: ignore[arg-type]
    families: Iterable[Metric] = upstream.MultiProcessCollector._accumulate_metrics(metrics, True)  # type: ignore[no-untyped-call]  # noqa: FBT003, SLF001
    return families


def _additive_values(directory: Path, names: list[str]) -> dict[tuple[str, str], list[float]]:
    """Return what the archives and the files ``names`` hold of each additive key."""
    absorbed: set[str] = set()
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for kind in _ADDITIVE:
        partials, kind_absorbed = _read_archive(directory, kind)
        absorbed |= kind_absorbed
        for key, parts in partials.items():
            values[kind, key] += parts
    for name in names:
        if _LIVE_FILE.fullmatch(name) or (
            _CLAIMED_FILE.fullmatch(name)
            and name not in absorbed
            and not _given_back(directory, name)
        ):
            kind = name.partition("_")[0]
            for key, value in _values(directory / name).items():
                values[kind, key].append(value)
    return values


def _sum(parts: list[float]) -> float:
    """Return the correctly rounded sum of ``parts``, or their plain sum if it has none."""
    try:
        return math.fsum(parts)
    except (OverflowError, ValueError):  # past the largest double, or inf and -inf
        return sum(parts)


def _add_exactly(partials: list[float], value: float) -> list[float]:
    """Add ``value`` to ``partials``, doubles whose exact sum is a running total.

    It is Shewchuk's algorithm, which ``math.fsum`` runs inside: the partials never
    overlap, so their exact sum, which ``math.fsum`` rounds correctly, loses nothing.
    """
    total = value
    kept = []
    for partial in partials:
        high, low = (total, partial) if abs(total) >= abs(partial) else (partial, total)
        total = high + low
        error = low - (total - high)
        if error:
            kept.append(error)
    # Past the largest double, or with an infinity, no exact sum exists.
    return [*kept, total] if math.isfinite(total) else [_sum([*partials, value])]


def _archive(directory: Path, kind: str) -> Path:
    return directory / f"{kind}_archive.db"


def _read_archive(directory: Path, kind: str) -> tuple[dict[str, list[float]], set[str]]:
    """Return the partials of each key in the archive of ``kind``, and what it absorbed."""
    path = _archive(directory, kind)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, set()
    used = struct.unpack_from("i", data)[0] if len(data) >= _HEADER else 0
    if used < _HEADER or data[used : used + len(_RECORD_MARK)] != _RECORD_MARK:
        msg = f"{path} is not an archive written by veza_business_metrics"
        raise ValueError(msg)
    (length,) = struct.unpack_from("I", data, used + len(_RECORD_MARK))
    start = used + len(_RECORD_MARK) + 4
    record = json.loads(data[start : start + length])
    if (version := record.get("version")) != _ARCHIVE_VERSION:
        msg = (
            f"{path} is an archive of version {version!r};"
            f" this release reads version {_ARCHIVE_VERSION}"
        )
        raise ValueError(msg)
    return record["partials"], set(record["absorbed"])


def _values(path: Path) -> dict[str, float]:
    if not path.stat().st_size:  # killed between creating its file and sizing it
        return {}
    return {
        key: value
        for key, value, _, _ in MmapedDict.read_all_values_from_file(os.fspath(path))  # type: ignore[no-untyped-call]
    }


def _encode(partials: dict[str, list[float]], absorbed: list[str]) -> bytes:
    data = bytearray(_HEADER)
    for key, parts in partials.items():
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        data += struct.pack(f"i{len(padded)}sdd", len(encoded), padded, _sum(parts), 0.0)
    struct.pack_into("i", data, 0, len(data))
    record = {"version": _ARCHIVE_VERSION, "absorbed": sorted(absorbed), "partials": partials}
    encoded_record = json.dumps(record).encode("utf-8")
    return bytes(data) + _RECORD_MARK + struct.pack("I", len(encoded_record)) + encoded_record


def _compact(directory: Path, pids: set[int] | None) -> int:
    """Merge the files of ``pids``, or of every dead process; return how many processes.

    The merges put off for the directory run too, and so do those that a signal handler
    asks for meanwhile.
    """
    key = str(directory)
    merged = 0
    while not getattr(_local, "holding", False):
        # Soon after a merge waited in vain, one more try is all a merge makes.
        patience = _LOCK_TIMEOUT if time.monotonic() >= _stuck_until.get(key, 0) else 0
        with _locked(directory, fcntl.LOCK_EX, patience) as taken:
            if taken:
                pids = _with_deferred(directory, pids)
                try:
                    merged += _merge(directory, pids)
                except BaseException:
                    _defer(directory, pids)
                    raise
        if not taken:
            _stuck_until[key] = time.monotonic() + _LOCK_TIMEOUT
            break
        if not _is_deferred(directory):
            return merged
        pids = set()
    _defer(directory, pids)
    return merged


def _defer(directory: Path, pids: set[int] | None) -> None:
    _deferred.setdefault(str(directory), deque()).append(pids)


def _is_deferred(directory: Path) -> bool:
    return bool(_deferred.get(str(directory)))


def _with_deferred(directory: Path, pids: set[int] | None) -> set[int] | None:
    """Return ``pids`` with those put off for ``directory``, which leave the queue."""
    waiting = _deferred.get(str(directory), deque())
    for _ in range(len(waiting)):
        more = waiting.popleft()
        pids = None if pids is None or more is None else pids | more
    return pids


def _merge(directory: Path, pids: set[int] | None) -> int:
    """Merge the files of ``pids``, or of every dead process, holding the lock."""
    names = [file.name for file in directory.iterdir()]
    pending = _unfinished_claims(directory, names)
    merged = {_pid(name) for name in pending if _CLAIMED_FILE.fullmatch(name)}
    for pid, files in _files_by_pid(names, pids).items():
        claims = _claim(directory, pid, files)
        pending += claims
        merged.update(pid for name in claims if _CLAIMED_FILE.fullmatch(name))
    by_kind: dict[str, list[str]] = defaultdict(list)
    for name in pending:
        by_kind[name.partition("_")[0]].append(name)
    # Claims must be on disk before an archive that absorbs them, and archives before
    # the claims they absorbed are unlinked. A live gauge dies with its process.
    _sync(directory)
    for kind in _ADDITIVE:
        _absorb(directory, kind, by_kind[kind])
    _sync(directory)
    for name in pending:
        (directory / name).unlink()
    return len(merged)


def _unfinished_claims(directory: Path, names: list[str]) -> list[str]:
    """Clean up after a merge that was killed; return its claims that remain to finish."""
    claims = []
    for name in names:
        if _TEMPORARY_ARCHIVE.fullmatch(name):
            (directory / name).unlink()
        elif _CLAIMED_FILE.fullmatch(name) or _CLAIMED_GAUGE_FILE.fullmatch(name):
            claims.append(name)
    if not claims:  # the usual case, where reading the archives would cost every merge
        return []
    absorbed = {name for kind in _ADDITIVE for name in _read_archive(directory, kind)[1]}
    pending = []
    for name in claims:
        if name in absorbed or _given_back(directory, name):
            (directory / name).unlink()
        elif not (_in_use(_pid(name), directory, [name]) and _give_back(directory, name)):
            pending.append(name)
    return pending


def _files_by_pid(names: list[str], pids: set[int] | None) -> dict[int, list[str]]:
    files: dict[int, list[str]] = defaultdict(list)
    for name in names:
        match = _PROCESS_FILE.fullmatch(name)
        if match and (pids is None or int(match[1]) in pids):
            files[int(match[1])].append(name)
    return files


def _claim(directory: Path, pid: int, files: list[str]) -> list[str]:
    """Claim the files of ``pid``, but gauges other than live ones, that no process uses."""
    in_use = _in_use(pid, directory, files)
    claims = []
    for name in files:
        if name not in in_use and (_LIVE_FILE.fullmatch(name) or _LIVE_GAUGE_FILE.fullmatch(name)):
            claim = f"{name[:-3]}.{uuid.uuid4().hex}.merging"
            (directory / name).rename(directory / claim)
            claims.append(claim)
    # Checked again after the claim: a process that reused the pid may have opened a
    # file until its rename, never after it. Only that process could have created the
    # name again, and it did not, since it holds the claimed file.
    taken_back = {
        claim for claim in _in_use(pid, directory, claims) if _give_back(directory, claim)
    }
    return [claim for claim in claims if claim not in taken_back]


def _give_back(directory: Path, claim: str) -> bool:
    """Give ``claim``, which a running process uses, its live name back, if still free.

    Returns:
        Whether it did. If not, a process with the claim's pid created the live name
        since, and uses that file: the claim is an earlier process's, to merge.
    """
    # A link, since a rename would replace the new file; a kill before the unlink leaves
    # two names for one file, which _given_back tells.
    try:
        os.link(directory / claim, _live_name(directory, claim))
    except FileExistsError:
        return False
    (directory / claim).unlink()
    return True


def _given_back(directory: Path, claim: str) -> bool:
    """Tell whether ``claim`` is also its live name, given back by a merge since killed."""
    try:
        live = _identity(_live_name(directory, claim).stat())
    except FileNotFoundError:
        return False
    return live == _identity((directory / claim).stat())


def _live_name(directory: Path, claim: str) -> Path:
    return directory / f"{claim.partition('.')[0]}.db"


def _pid(claim: str) -> int:
    return int(claim.partition(".")[0].rpartition("_")[2])


def _in_use(pid: int, directory: Path, names: list[str]) -> set[str]:
    """Return which of the files ``names`` a running process ``pid`` has open."""
    if not names:
        return set()
    try:
        descriptors = list((_PROC / str(pid) / "fd").iterdir())
    except FileNotFoundError:
        # No such process, or one that procfs hides (hidepid, or no procfs at all, as on
        # macOS): a running process may be a reuse of the pid, so it keeps every file.
        return set(names) if _is_running(pid) else set()
    except OSError:
        # Another user's process, say: it may use the files, so they are left alone.
        return set(names)
    identities = {_identity((directory / name).stat()): name for name in names}
    in_use = set()
    for descriptor in descriptors:
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            name = identities.get(_identity(descriptor.stat()))
            if name is not None:
                in_use.add(name)
    return in_use


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


def _is_running(pid: int) -> bool:
    # 0 and negative numbers name process groups for kill(), and no pid is that large.
    if not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)
    except OSError as error:
        # PermissionError: the process exists, but belongs to another user.
        return not isinstance(error, ProcessLookupError)
    return True


def _absorb(directory: Path, kind: str, claims: list[str]) -> None:
    """Replace the archive of ``kind`` with one that adds the values of ``claims``."""
    if not claims:
        return
    partials = _read_archive(directory, kind)[0]
    for name in claims:
        for key, value in _values(directory / name).items():
            partials[key] = _add_exactly(partials.get(key, []), value)
    data = memoryview(_encode(partials, claims))
    temporary = directory / f"{kind}_archive.{uuid.uuid4().hex}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        # Whatever the umask: workers of another user read it, and the directory's own
        # mode decides who else may.
        os.fchmod(descriptor, 0o644)
        while data:
            data = data[os.write(descriptor, data) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    temporary.replace(_archive(directory, kind))


def _sync(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
