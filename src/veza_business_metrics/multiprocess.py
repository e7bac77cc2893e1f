"""prometheus_client's multiprocess mode, with dead workers' files merged exactly.

prometheus_client keeps one file per process and type in ``PROMETHEUS_MULTIPROC_DIR``
and reads every one of them on every scrape, so a server that recycles its workers
scrapes slower each day. Here the files of a dead process are merged into one archive
per type (counter, histogram, summary), which a scrape reads like any other file.

Scrapes and merges exclude each other through an ``fcntl.flock`` on a lock file in the
directory, so a scrape sees the directory wholly before or wholly after a merge. A merge
never loses or repeats a count, even when killed at any point:

1. it renames each file to merge to a name that no process will ever open again (the
   *claim*), so a new process that gets the same pid starts a fresh file;
2. it writes the new archive to a temporary file, fsyncs it and ``os.replace``-s the old
   one; the archive records the claimed names it absorbed;
3. it unlinks the claimed files.

A scrape counts claimed files that their archive has not absorbed, and skips the others;
the next merge finishes what a killed one started. A file is only merged once no process
with its pid has it open (``/proc/<pid>/fd``), from its creation on, which also protects
a worker that reused a dead worker's pid and continued its file.

This module relies on these prometheus_client internals, tested on 0.20.0 and the newest
release: the file names ``<type>_<pid>.db`` and ``gauge_<mode>_<pid>.db``; the file format
(a 4-byte used length, 4 bytes of padding, then entries of a 4-byte key length, the UTF-8
key padded with spaces to 8 bytes, a value and a timestamp, both doubles; readers stop at
the used length); the additivity of counter, histogram and summary values per key;
``MmapedDict.read_all_values_from_file``; and the ``_path`` attribute of
``MultiProcessCollector``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import struct
import uuid
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Final

from prometheus_client import multiprocess as upstream
from prometheus_client.mmap_dict import MmapedDict

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Iterator, Mapping

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = ["MultiProcessCollector", "clear", "mark_process_dead", "sweep"]

LOCK_FILE: Final = ".veza_business_metrics.lock"
_ADDITIVE: Final = ("counter", "histogram", "summary")
_PROCESS_FILE: Final = re.compile(r"(?:counter|histogram|summary|gauge_[a-z]+)_(\d+)\.db")
_LIVE_FILE: Final = re.compile(r"(counter|histogram|summary)_(\d+)\.db")
_CLAIMED_FILE: Final = re.compile(r"(counter|histogram|summary)_(\d+)\.[0-9a-f]{32}\.merging")
# The archive keeps prometheus_client's format up to the used length, so that the
# collector reads it like a process's file; what it absorbed follows, after this mark.
_ABSORBED_MARK: Final = b"VBMA"
_PROC: Final = Path("/proc")


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
        """Return every family, summed over the live files and the archives."""
        with _locked(self._path, fcntl.LOCK_SH):
            merged: Iterable[Metric] = self.merge(_readable_files(self._path))  # type: ignore[no-untyped-call]
            return merged


def mark_process_dead(pid: int, path: str | os.PathLike[str] | None = None) -> None:
    """Remove a dead process's live gauges, then merge its other files into the archives.

    Call it from gunicorn's ``child_exit`` hook, or wherever a host learns that one of
    its worker processes has exited. Gauge files other than live ones stay, as
    prometheus_client's own ``mark_process_dead`` leaves them.

    Args:
        pid: The process that exited.
        path: The multiprocess directory; ``PROMETHEUS_MULTIPROC_DIR`` by default.

    Raises:
        ValueError: If ``path`` is not given and the variable is not set.
    """
    _compact(_directory(path), {pid})


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
            if file.name != LOCK_FILE and not file.name.endswith(own):
                file.unlink()


def _directory(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not path:
            msg = "path was not given and PROMETHEUS_MULTIPROC_DIR is not set"
            raise ValueError(msg)
    return Path(path)


@contextlib.contextmanager
def _locked(directory: str | os.PathLike[str], operation: int) -> Iterator[None]:
    descriptor = os.open(Path(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, operation)
        yield
    finally:
        os.close(descriptor)


def _readable_files(directory: str) -> list[str]:
    files = list(os.scandir(directory))
    names = [file.name for file in files]
    # prometheus_client creates a file empty, then sizes it: until then it holds
    # nothing, and its reader would fail on it.
    readable = [file.name for file in files if file.name.endswith(".db") and file.stat().st_size]
    claimed = [name for name in names if _CLAIMED_FILE.fullmatch(name)]
    if claimed:
        # Only a merge killed half-way leaves claimed files behind.
        absorbed = {name for kind in _ADDITIVE for name in _read_archive(directory, kind)[1]}
        readable += [name for name in claimed if name not in absorbed]
    return [os.fspath(Path(directory, name)) for name in readable]


def _archive(directory: str | os.PathLike[str], kind: str) -> Path:
    return Path(directory, f"{kind}_archive.db")


def _read_archive(
    directory: str | os.PathLike[str], kind: str
) -> tuple[dict[str, float], set[str]]:
    path = _archive(directory, kind)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, set()
    (used,) = struct.unpack_from("i", data)
    mark = data[used : used + len(_ABSORBED_MARK)]
    if mark != _ABSORBED_MARK:
        msg = f"{path} is not an archive written by veza_business_metrics"
        raise ValueError(msg)
    (length,) = struct.unpack_from("I", data, used + len(_ABSORBED_MARK))
    start = used + len(_ABSORBED_MARK) + 4
    absorbed = set(json.loads(data[start : start + length]))
    return _values(path), absorbed


def _values(path: str | os.PathLike[str]) -> dict[str, float]:
    if not Path(path).stat().st_size:  # killed between creating its file and sizing it
        return {}
    return {
        key: value
        for key, value, _, _ in MmapedDict.read_all_values_from_file(os.fspath(path))  # type: ignore[no-untyped-call]
    }


def _encode(values: Mapping[str, float], absorbed: Collection[str]) -> bytes:
    data = bytearray(8)
    for key, value in values.items():
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        data += struct.pack(f"i{len(padded)}sdd", len(encoded), padded, value, 0.0)
    struct.pack_into("i", data, 0, len(data))
    trailer = json.dumps(sorted(absorbed)).encode("utf-8")
    return bytes(data) + _ABSORBED_MARK + struct.pack("I", len(trailer)) + trailer


def _compact(directory: Path, pids: set[int] | None) -> int:
    """Merge the files of ``pids``, or of every dead process; return how many processes."""
    with _locked(directory, fcntl.LOCK_EX):
        names = [file.name for file in directory.iterdir()]
        pending = _unfinished_claims(directory, names)
        merged = {_pid(name) for claims in pending.values() for name in claims}
        for pid, files in _files_by_pid(names, pids).items():
            # A sweep leaves running processes' files alone instead of claiming them.
            if pids is None and _holds(pid, directory, files):
                continue
            claims = _claim(directory, pid, files)
            if claims is None:
                continue
            upstream.mark_process_dead(pid, os.fspath(directory))  # type: ignore[no-untyped-call]
            for name in claims:
                pending[name.partition("_")[0]].append(name)
                merged.add(pid)
        # Claims must be on disk before an archive that absorbs them, and archives
        # before the claims they absorbed are unlinked.
        _sync(directory)
        for kind, claims in pending.items():
            _absorb(directory, kind, claims)
        _sync(directory)
        for claims in pending.values():
            for name in claims:
                (directory / name).unlink()
        return len(merged)


def _unfinished_claims(directory: Path, names: list[str]) -> dict[str, list[str]]:
    """Clean up after a merge that was killed; return its claims that remain to absorb."""
    pending: dict[str, list[str]] = defaultdict(list)
    for name in names:
        if name.endswith(".tmp"):
            (directory / name).unlink()
        elif _CLAIMED_FILE.fullmatch(name):
            pending[name.partition("_")[0]].append(name)
    for kind, claims in pending.items():
        absorbed = _read_archive(directory, kind)[1]
        for name in list(claims):
            if name in absorbed:
                (directory / name).unlink()
                claims.remove(name)
            elif _holds(_pid(name), directory, [name]):
                # Killed between a claim and its undoing: the file is still in use.
                (directory / name).rename(directory / f"{kind}_{_pid(name)}.db")
                claims.remove(name)
    return pending


def _files_by_pid(names: list[str], pids: set[int] | None) -> dict[int, list[str]]:
    files: dict[int, list[str]] = defaultdict(list)
    for name in names:
        match = _PROCESS_FILE.fullmatch(name)
        if match and (pids is None or int(match[1]) in pids):
            files[int(match[1])].append(name)
    return files


def _claim(directory: Path, pid: int, files: list[str]) -> list[str] | None:
    """Rename the additive files of ``pid`` out of its way; ``None`` if it still uses them."""
    claims = []
    for name in files:
        if _LIVE_FILE.fullmatch(name):
            claim = f"{name[:-3]}.{uuid.uuid4().hex}.merging"
            (directory / name).rename(directory / claim)
            claims.append(claim)
    # Checked after the claim: a process that reused the pid may have opened the file
    # until the rename, never after it.
    if _holds(pid, directory, claims or files):
        for claim in claims:
            (directory / claim).rename(directory / f"{claim.partition('.')[0]}.db")
        return None
    return claims


def _pid(claim: str) -> int:
    return int(claim.partition(".")[0].rpartition("_")[2])


def _holds(pid: int, directory: Path, names: list[str]) -> bool:
    """Return whether a running process ``pid`` has one of the files ``names`` open."""
    try:
        descriptors = list((_PROC / str(pid) / "fd").iterdir())
    except FileNotFoundError:
        # Without procfs (macOS), a running process with that pid may be a reuse.
        return not (_PROC / "self").exists() and _is_running(pid)
    except OSError:
        # Another user's process, say: it may use the files, so they are left alone.
        return True
    files = {_identity((directory / name).stat()) for name in names}
    # prometheus_client keeps each file open from its creation on: the mapping comes
    # later, and CPython's mmap holds a descriptor of its own.
    for descriptor in descriptors:
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            if _identity(descriptor.stat()) in files:
                return True
    return False


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


def _is_running(pid: int) -> bool:
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
    values = _read_archive(directory, kind)[0]
    for name in claims:
        for key, value in _values(directory / name).items():
            values[key] = values.get(key, 0.0) + value
    data = memoryview(_encode(values, claims))
    temporary = directory / f"{kind}_archive.{uuid.uuid4().hex}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
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
