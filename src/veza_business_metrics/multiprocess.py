"""prometheus_client's multiprocess mode, with dead workers' files merged exactly.

prometheus_client keeps one file per process and type in ``PROMETHEUS_MULTIPROC_DIR``
and reads every one of them on every scrape, so a server that recycles its workers
scrapes slower each day. Here the files of a dead process are merged into one archive
per type (counter, histogram, summary), which a scrape reads with the live files.

Scrapes and merges exclude each other through an ``fcntl.flock`` on the directory
itself, so a scrape sees the directory wholly before or wholly after a merge. Both take
the lock of the file ``veza_merge.lock`` first, a scrape only until it has the
directory's: a merge that waits for scrapes to finish keeps new ones out, so a stream of
scrapes cannot put merges off. Every wait is bounded: a scrape waits at most
``SCRAPE_TIMEOUT`` seconds, then raises :class:`LockTimeoutError`; a merge waits at most
``MERGE_TIMEOUT`` seconds, then is put off until the next merge or scrape of this
process. A merge never loses or repeats a count, even when killed at any point:

1. it renames each file to merge to a name that no process will ever open again (the
   *claim*, named after the merge), so a new process that gets the same pid starts a
   fresh file;
2. it checks every claimed file, and moves one that does not parse, or that holds a
   counter value that is negative or not finite, aside as ``*.corrupt``;
3. it writes the new archive to a temporary file, fsyncs it and ``os.replace``-s the old
   one; the archive records which merges it absorbed, and ends with a CRC-32 of itself;
4. it unlinks the claimed files.

A scrape counts claimed files that their archive has not absorbed, and skips the others;
the next merge finishes what a killed one started. A scrape skips a live file that does
not parse, and logs it once. A file is only merged once no process with its pid has it
open (``/proc/<pid>/fd``), which prometheus_client does from the file's creation on; this
also protects a worker that reused a dead worker's pid and continued its file.

A server that calls :func:`clear` or :func:`attach` holds a shared ``flock`` on
``veza_server.lock`` for as long as it or a process it forked lives; :func:`clear` takes
it exclusively first, and refuses to delete anything while another server holds it.

Sums are exact: the archive keeps each series' total as a sum of doubles that lose
nothing (Shewchuk's partials), and a scrape adds them and the live files' values with
``math.fsum``. A total is thus the correctly rounded sum of every value ever recorded,
the same whichever files were merged, so no series goes down when a worker is merged,
not even by the last bit of a fractional histogram ``_sum``.

This module relies on these prometheus_client internals, tested on every minor release
from 0.20 on: the file names ``<type>_<pid>.db`` and ``gauge_<mode>_<pid>.db``; the file
format (a 4-byte used length, 4 bytes of padding, then entries of a 4-byte key length,
the UTF-8 key padded with spaces to 8 bytes, a value and a timestamp, both doubles;
readers stop at the used length) and its keys, the JSON of ``[metric name, sample name,
labels, help]``; the additivity of counter, histogram and summary values per key;
``MultiProcessCollector``'s ``_path``, ``_read_metrics`` and ``_accumulate_metrics``; and
the live gauge modes, ``live*``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hmac
import json
import logging
import math
import os
import re
import struct
import threading
import time
import uuid
import zlib
from collections import defaultdict, deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as _exposition
from prometheus_client import multiprocess as upstream
from prometheus_client.metrics_core import Metric

from veza_business_metrics._errors import DirectoryInUseError, LockTimeoutError, MultiprocessError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    # An ASGI 3 application, as the servers and frameworks call it.
    ASGIApplication = Callable[
        [
            MutableMapping[str, Any],
            Callable[[], Awaitable[MutableMapping[str, Any]]],
            Callable[[MutableMapping[str, Any]], Awaitable[None]],
        ],
        Awaitable[None],
    ]

__all__ = [
    "MERGE_TIMEOUT",
    "SCRAPE_TIMEOUT",
    "DirectoryInUseError",
    "LockTimeoutError",
    "MultiProcessCollector",
    "attach",
    "clear",
    "make_asgi_app",
    "make_wsgi_app",
    "mark_process_dead",
    "sweep",
]

# How long a scrape, and a clear, wait for the lock before they raise LockTimeoutError: a
# process stopped while holding it (SIGSTOP, a debugger, a frozen container) must not
# hang a server's workers. Longer than a merge's wait, so that a merge that waits in vain
# for a stopped scrape, and keeps new scrapes out meanwhile, does not fail them.
SCRAPE_TIMEOUT: Final = 5.0
# How long a merge waits for the lock before it is put off: a gunicorn master must not
# hang on a stopped process either.
MERGE_TIMEOUT: Final = 2.0
# After a merge waited in vain, the merges of the next this many seconds try once
# without waiting, so that a burst of worker exits does not cost MERGE_TIMEOUT each.
_STUCK_SECONDS: Final = 5.0
# How long the apps' merge before a scrape waits: the scrape's own wait comes after it.
_SWEEP_BEFORE_SCRAPE_TIMEOUT: Final = 0.25

_LOG: Final = logging.getLogger(__name__)
_ADDITIVE: Final = ("counter", "histogram", "summary")
_PROCESS_FILE: Final = re.compile(r"(?:counter|histogram|summary|gauge_[a-z]+)_(\d+)\.db")
_LIVE_FILE: Final = re.compile(r"(counter|histogram|summary)_(\d+)\.db")
_LIVE_GAUGE_FILE: Final = re.compile(r"gauge_live[a-z]+_\d+\.db")
_CLAIMED_FILE: Final = re.compile(r"(counter|histogram|summary)_(\d+)\.([0-9a-f]{32})\.merging")
_CLAIMED_GAUGE_FILE: Final = re.compile(r"gauge_live[a-z]+_(\d+)\.[0-9a-f]{32}\.merging")
_TEMPORARY_ARCHIVE: Final = re.compile(r"(counter|histogram|summary)_archive\.[0-9a-f]{32}\.tmp")
# Every name that prometheus_client or this module writes and clear() may delete: never
# another program's, since the directory may sit among others on a tmpfs.
_WRITTEN: Final = re.compile(
    "|".join(
        pattern.pattern
        for pattern in (_PROCESS_FILE, _CLAIMED_FILE, _CLAIMED_GAUGE_FILE, _TEMPORARY_ARCHIVE)
    )
    + r"|(?:counter|histogram|summary)_archive\.db"
)
_MERGE_LOCK: Final = "veza_merge.lock"
_SERVER_LOCK: Final = "veza_server.lock"
_ARCHIVE_VERSION: Final = 2
_HEADER: Final = 8  # prometheus_client's used length and padding
# The archive keeps prometheus_client's format up to the used length, so that its reader
# reads it like a process's file; the archive's own record follows, after this mark, and
# a CRC-32 of everything before it ends the file.
_RECORD_MARK: Final = b"VBMA"
_CHECKSUM: Final = struct.Struct("<I")
_PROC: Final = Path("/proc")
# Keys already checked, with whether their values must be at least 0; bounded, since a
# process may see many keys in its life.
_MAX_CHECKED_KEYS: Final = 100_000
_checked_keys: dict[tuple[str, str], bool] = {}
# Corrupt live files already logged, so that each scrape does not log them again.
_reported: set[str] = set()

# Until when a directory's merges try the lock once without waiting, after one waited in
# vain for MERGE_TIMEOUT.
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
# The descriptor of each directory's server lock that this process holds, shared, for
# its life. Forked workers keep it on purpose: while any of them lives, the server does.
_serving: dict[str, int] = {}


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


# What the name of a file set aside says of it.
_TRUNCATED: Final = "truncated"
_BAD_KEY: Final = "bad-key"
_BAD_VALUE: Final = "bad-value"


class _CorruptFileError(Exception):
    """A file that prometheus_client's reader would misread or fail on."""

    def __init__(self, slug: str, reason: str) -> None:
        super().__init__(reason)
        self.slug = slug


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
        """Return every family, summed exactly over the live files and the archives.

        Raises:
            LockTimeoutError: If another process held the lock for ``SCRAPE_TIMEOUT``.
            MultiprocessError: If an archive is damaged or of another version.
        """
        directory = Path(self._path).resolve()
        with _locked(directory, exclusive=False, timeout=SCRAPE_TIMEOUT) as taken:
            if not taken:
                msg = (
                    f"waited {SCRAPE_TIMEOUT:g} s in vain for the lock on {directory}:"
                    " a process that holds it is stopped or stuck; the first scrape after"
                    " it lets go succeeds"
                )
                raise LockTimeoutError(msg)
            families = _collect(directory)
        if _is_deferred(directory):  # a signal handler asked for a merge meanwhile
            # The merge stays put off if it fails; the scrape it follows must not fail.
            with contextlib.suppress(OSError, ValueError):
                _compact(directory, set())
        return families


class _SweepingCollector(MultiProcessCollector):
    """Merge the files of processes that are gone, then collect every process's metrics."""

    def collect(self) -> Iterable[Metric]:
        """Return every family once the files of exited processes are merged."""
        _sweep_logged(self._path)
        return super().collect()


def make_wsgi_app(
    path: str | os.PathLike[str] | None = None,
    *,
    bearer_token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> WSGIApplication:
    """Return a WSGI app that serves the metrics of every process of the directory.

    Before each scrape it merges the files of processes that are gone, so it suits
    servers without a hook on a worker's exit. A scrape that cannot take the lock in
    time, or meets a damaged archive, gets a 503 with the reason. Revenue is business
    data: given a bearer token or basic auth credentials, it answers 401 to a request
    that does not carry them, compared in constant time.

    Args:
        path: The multiprocess directory; ``PROMETHEUS_MULTIPROC_DIR`` by default.
        bearer_token: The token that ``Authorization: Bearer <token>`` must carry.
        basic_auth: The user name and password that basic auth must carry.

    Raises:
        ValueError: If ``path`` is not given and the variable is not set, if it is not a
            directory, or if a credential is empty.
        TypeError: If a credential is not a str.
    """
    accepted = _accepted_authorizations(bearer_token, basic_auth)
    registry = CollectorRegistry(auto_describe=False)
    _SweepingCollector(registry, os.fspath(_directory(path)))
    served = _exposition.make_wsgi_app(registry)

    def metrics_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if accepted and not _authorized(environ.get("HTTP_AUTHORIZATION"), accepted):
            challenge = "Bearer" if bearer_token is not None else 'Basic realm="metrics"'
            headers = [("Content-Type", "text/plain; charset=utf-8")]
            start_response("401 Unauthorized", [*headers, ("WWW-Authenticate", challenge)])
            return [b"401 Unauthorized: /metrics needs the credentials of the scrape config\n"]
        try:
            body: Iterable[bytes] = served(environ, start_response)
        except (LockTimeoutError, MultiprocessError) as error:
            start_response(
                "503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")]
            )
            return [f"{error}\n".encode()]
        return body

    return metrics_app


def make_asgi_app(
    path: str | os.PathLike[str] | None = None,
    *,
    bearer_token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> ASGIApplication:
    """Return an ASGI app that does what :func:`make_wsgi_app` does.

    The scrape runs in a thread, so that a wait for the lock never blocks the event
    loop. Given the ASGI lifespan events, as when it is the server's whole app, it
    merges the files of processes that are gone at each worker's start too.

    Args:
        path: The multiprocess directory; ``PROMETHEUS_MULTIPROC_DIR`` by default.
        bearer_token: The token that ``Authorization: Bearer <token>`` must carry.
        basic_auth: The user name and password that basic auth must carry.

    Raises:
        ValueError: If ``path`` is not given and the variable is not set, if it is not a
            directory, or if a credential is empty.
        TypeError: If a credential is not a str.
    """
    import asyncio  # noqa: PLC0415  only ASGI hosts pay for it

    wsgi = make_wsgi_app(path, bearer_token=bearer_token, basic_auth=basic_auth)
    directory = os.fspath(_directory(path))

    async def metrics_app(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await asyncio.to_thread(_sweep_logged, directory)
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = {name.decode("latin-1"): value for name, value in scope["headers"]}
        environ = {
            "REQUEST_METHOD": scope["method"],
            "PATH_INFO": scope["path"],
            "QUERY_STRING": scope["query_string"].decode("latin-1"),
            **{
                f"HTTP_{name.upper().replace('-', '_')}": headers[name].decode("latin-1")
                for name in ("accept", "accept-encoding", "authorization")
                if name in headers
            },
        }
        status, response_headers, body = await asyncio.to_thread(_respond, wsgi, environ)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (name.lower().encode(), value.encode()) for name, value in response_headers
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return metrics_app


def _respond(
    app: WSGIApplication, environ: dict[str, Any]
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Call the WSGI ``app``; return its status code, headers and body."""
    started: list[tuple[str, list[tuple[str, str]]]] = []
    written: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], *_: object
    ) -> Callable[[bytes], object]:
        started.append((status, headers))
        return written.append

    output = b"".join(app(environ, start_response))
    (status, headers), *_ = started
    return int(status.split()[0]), headers, b"".join(written) + output


def _accepted_authorizations(
    bearer_token: str | None, basic_auth: tuple[str, str] | None
) -> list[bytes]:
    """Return the Authorization header values that the credentials accept."""
    accepted = []
    if bearer_token is not None:
        _check_secret("bearer_token", bearer_token)
        accepted.append(f"bearer {bearer_token}".encode())
    if basic_auth is not None:
        if type(basic_auth) is not tuple or len(basic_auth) != 2:  # noqa: PLR2004
            msg = f"basic_auth must be a (user, password) tuple, got {type(basic_auth).__name__}"
            raise TypeError(msg)
        user, password = basic_auth
        _check_secret("the basic_auth user", user)
        _check_secret("the basic_auth password", password)
        if ":" in user:
            msg = "the basic_auth user must not contain ':', which basic auth uses to split it"
            raise ValueError(msg)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        accepted.append(f"basic {token}".encode())
    return accepted


def _check_secret(name: str, secret: object) -> None:
    # The value itself is never shown: it is a secret.
    if type(secret) is not str:
        msg = f"{name} must be a str, got {type(secret).__name__}"
        raise TypeError(msg)
    if not secret or secret != secret.strip():
        msg = f"{name} must be non-empty, without surrounding white space (a file's newline?)"
        raise ValueError(msg)


def _authorized(header: str | None, accepted: list[bytes]) -> bool:
    # The scheme is case-insensitive (RFC 9110); the credentials are compared as sent.
    scheme, _, credentials = (header or "").partition(" ")
    given = f"{scheme.lower()} {credentials}".encode("latin-1", "replace")
    # Every one is compared, each in constant time, so the time says nothing either.
    return sum(hmac.compare_digest(given, value) for value in accepted) > 0


def _sweep_logged(directory: str) -> None:
    try:
        sweep(directory, timeout=_SWEEP_BEFORE_SCRAPE_TIMEOUT)
    except (OSError, ValueError):
        # Put off, not lost: the scrape still shows every count, merged or not.
        _LOG.exception("Could not merge the metrics files in %s", directory)


def mark_process_dead(
    pid: int, path: str | os.PathLike[str] | None = None, *, timeout: float | None = None
) -> None:
    """Remove a dead process's live gauges, then merge its other files into the archives.

    Call it from gunicorn's ``child_exit`` hook, or wherever a host learns that one of
    its worker processes has exited. Gauge files other than live ones stay, as
    prometheus_client's own ``mark_process_dead`` leaves them. Files that a running
    process with that pid has open, as a new worker that reused the pid may, stay too.
    If another process holds the lock for ``timeout`` seconds, the merge is put off
    until this process's next merge or scrape.

    Args:
        pid: The process that exited.
        path: The multiprocess directory; ``PROMETHEUS_MULTIPROC_DIR`` by default.
        timeout: How long to wait for the lock, in seconds; ``MERGE_TIMEOUT`` by default.

    Raises:
        TypeError: If ``pid`` is not an int.
        ValueError: If ``path`` is not given and the variable is not set.
    """
    if type(pid) is not int:
        msg = f"pid must be an int, got {type(pid).__name__} {pid!r}"
        raise TypeError(msg)
    _compact(_directory(path), {pid}, timeout)


def sweep(path: str | os.PathLike[str] | None = None, *, timeout: float | None = None) -> int:
    """Do what ``mark_process_dead`` does for every process that is no longer running.

    It is for hosts without a hook on a worker's exit, and for files left while nothing
    was watching. It decides from the pids in the file names, so the directory must only
    hold files of processes in this host's PID namespace. With nothing to merge, it takes
    no lock.

    Args:
        path: The multiprocess directory; ``PROMETHEUS_MULTIPROC_DIR`` by default.
        timeout: How long to wait for the lock, in seconds, before the merge is put off;
            ``MERGE_TIMEOUT`` by default.

    Returns:
        How many dead processes' files it merged.

    Raises:
        ValueError: If ``path`` is not given and the variable is not set.
    """
    directory = _directory(path)
    if not _is_deferred(directory) and not _has_work(directory):
        return 0
    return _compact(directory, None, timeout)


def clear(path: str | os.PathLike[str] | None = None) -> None:
    """Make this process the directory's server, and delete the files of earlier runs.

    Call it when a server starts cold, once it has bound its port and before its
    workers start, so that counts of an earlier run do not add up with the new ones. It
    deletes only the files that prometheus_client and this module write, and keeps
    this process's own. This process, and the processes it forks, then hold the
    directory's server lock for their life.

    Args:
        path: The multiprocess directory; ``PROMETHEUS_MULTIPROC_DIR`` by default.

    Raises:
        ValueError: If ``path`` is not given and the variable is not set.
        DirectoryInUseError: If another live server uses the directory; nothing is
            deleted.
        LockTimeoutError: If another process held the lock for ``SCRAPE_TIMEOUT``.
    """
    directory = _directory(path)
    with _server_lock(directory, alone=True):
        # A process that imported prometheus_client's metrics already wrote its zero
        # series, as a gunicorn master does with --preload: those files are this run's.
        own = f"_{os.getpid()}.db"
        for entry in os.scandir(directory):
            if (
                _WRITTEN.fullmatch(entry.name)
                and not entry.name.endswith(own)
                and entry.is_file(follow_symlinks=False)
            ):
                Path(entry.path).unlink()


def attach(path: str | os.PathLike[str] | None = None) -> None:
    """Make this process a server of the directory beside the one that runs there.

    Call it instead of :func:`clear` where a new server takes over from a running one
    without a cold start, as gunicorn's master does after ``USR2``: a later cold start
    then sees that the directory is in use.

    Args:
        path: The multiprocess directory; ``PROMETHEUS_MULTIPROC_DIR`` by default.

    Raises:
        ValueError: If ``path`` is not given and the variable is not set.
        LockTimeoutError: If another process held the lock for ``SCRAPE_TIMEOUT``.
    """
    with _server_lock(_directory(path), alone=False):
        pass


def _directory(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        # As prometheus_client's mark_process_dead honours it, silently, so that a legacy
        # deployment merges the directory that it counts into; its collector warns.
        path = os.environ.get(
            "PROMETHEUS_MULTIPROC_DIR",
            os.environ.get("prometheus_multiproc_dir"),  # noqa: SIM112
        )
        if not path:
            msg = "path was not given and PROMETHEUS_MULTIPROC_DIR is not set"
            raise ValueError(msg)
    return Path(path).resolve()


@contextlib.contextmanager
def _server_lock(directory: Path, *, alone: bool) -> Iterator[None]:
    """Hold the directory's lock, and this process's share of its server lock, for the block.

    Raises:
        DirectoryInUseError: If ``alone`` and another server holds a share.
        LockTimeoutError: If another process held the lock for ``SCRAPE_TIMEOUT``.
    """
    # Under the directory's lock, so that no other start converts its lock meanwhile.
    with _locked(directory, exclusive=True, timeout=SCRAPE_TIMEOUT) as taken:
        if not taken:
            msg = (
                f"waited {SCRAPE_TIMEOUT:g} s in vain for the lock on {directory}: a"
                " process that holds it is stopped or stuck; nothing was deleted"
            )
            raise LockTimeoutError(msg)
        key = str(directory)
        descriptor = _serving.get(key)
        if descriptor is None:
            descriptor = os.open(directory / _SERVER_LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            if alone:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    others = _holders(directory / _SERVER_LOCK)
                    msg = (
                        f"{directory} is in use by another server"
                        f"{f' (pid {others})' if others else ''}: give each server a"
                        " directory of its own, or stop the other one first; nothing was"
                        " deleted"
                    )
                    raise DirectoryInUseError(msg) from None
                finally:
                    # A failed conversion drops the lock this process held: take it
                    # again, which no other start can prevent while this one has the
                    # directory's lock.
                    fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            else:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BaseException:
            if key not in _serving:
                os.close(descriptor)
            raise
        _serving[key] = descriptor
        yield


def _holders(lock_file: Path) -> str:
    """Return the pids of the other processes that hold ``lock_file``, as /proc/locks says."""
    try:
        inode = lock_file.stat().st_ino
        lines = (_PROC / "locks").read_text().splitlines()
    except OSError:
        return ""
    own = str(os.getpid())
    return ", ".join(
        sorted(
            {
                fields[4]
                for fields in map(str.split, lines)
                # "1: FLOCK ADVISORY READ 1234 fd:01:5678 0 EOF"; a waiter has "->" after "1:".
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}")  # noqa: PLR2004
            }
            - {own},
            key=int,
        )
    )


@contextlib.contextmanager
def _locked(directory: Path, *, exclusive: bool, timeout: float) -> Iterator[bool]:
    """Hold the directory's lock while the block runs; give whether it was taken in time."""
    outer = getattr(_local, "holding", False)
    _local.holding = True
    deadline = time.monotonic() + timeout
    try:
        with _opened(directory, _MERGE_LOCK) as turn, _opened(directory, None) as whole:
            taken = turn is None or _flock(turn, fcntl.LOCK_EX, deadline)
            if taken:
                operation = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
                taken = _flock(cast("int", whole), operation, deadline)
                if turn is not None and not exclusive:
                    # A scrape lets the next one in at once; a merge keeps scrapes out
                    # until it is done, and while it waits for the ones under way.
                    fcntl.flock(turn, fcntl.LOCK_UN)
            yield taken
    finally:
        _local.holding = outer


@contextlib.contextmanager
def _opened(directory: Path, name: str | None) -> Iterator[int | None]:
    """Open the directory, or its file ``name``, for a lock; give None if it cannot be."""
    with _opening:
        if name is None:
            # The directory itself, not a file: whoever may read the directory, a worker
            # of another user or an exporter on a read-only mount, may lock it.
            descriptor: int | None = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        else:
            descriptor = _open_lock_file(directory / name)
        if descriptor is not None:
            _descriptors.add(descriptor)
    try:
        yield descriptor
    finally:
        if descriptor is not None:
            with _opening:
                _descriptors.discard(descriptor)
                os.close(descriptor)


def _open_lock_file(path: Path) -> int | None:
    # Open it, or create it, or open it as another process just created it.
    for flags in (os.O_RDONLY, os.O_RDONLY | os.O_CREAT | os.O_EXCL, os.O_RDONLY):
        try:
            descriptor = os.open(path, flags, 0o644)
        except (FileNotFoundError, FileExistsError):
            continue
        except OSError:
            # A scraper that may not write there, another user's or on a read-only
            # mount, takes the directory's lock alone: it merely does not give merges
            # their turn.
            return None
        if flags & os.O_CREAT:
            # Whatever the umask: other users' scrapers lock it too.
            os.fchmod(descriptor, 0o644)
        return descriptor
    return None  # a dangling link, say


def _flock(descriptor: int, operation: int, deadline: float) -> bool:
    pause = 0.001
    while True:
        try:
            fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.02)
        else:
            return True


def _collect(directory: Path) -> Iterable[Metric]:
    names = []
    gauges = []
    for file in os.scandir(directory):
        if not file.is_file(follow_symlinks=False):
            continue
        # prometheus_client creates a file empty, then sizes it: until then it holds
        # nothing, and its reader would fail on it.
        if file.name.startswith("gauge_") and file.name.endswith(".db") and file.stat().st_size:
            if _checked(file.path, "gauge") is not None:
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


def _checked(path: str, kind: str) -> dict[str, float] | None:
    """Return what ``_entries`` returns, or None for a file that does not parse, logged once."""
    try:
        return _entries(path, kind)
    except _CorruptFileError as error:
        if path not in _reported:
            if len(_reported) < _MAX_CHECKED_KEYS:
                _reported.add(path)
            _LOG.error(
                "Skipped %s in every scrape: %s. Its process's counts are unknowable; it"
                " is moved aside as *.corrupt once the process exits",
                path,
                error,
            )
        return None


def _additive_values(directory: Path, names: list[str]) -> dict[tuple[str, str], list[float]]:
    """Return what the archives and the files ``names`` hold of each additive key."""
    absorbed: dict[str, set[str]] = {}
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for kind in _ADDITIVE:
        partials, absorbed[kind] = _read_archive(directory, kind)
        for key, parts in partials.items():
            values[kind, key] += parts
    for name in names:
        claim = _CLAIMED_FILE.fullmatch(name)
        if _LIVE_FILE.fullmatch(name) or (
            claim and claim[3] not in absorbed[claim[1]] and not _given_back(directory, name)
        ):
            kind = name.partition("_")[0]
            path = os.path.join(directory, name)  # noqa: PTH118  a scrape's hot loop
            for key, value in (_checked(path, kind) or {}).items():
                values[kind, key].append(value)
    return values


def _entries(path: str | os.PathLike[str], kind: str) -> dict[str, float]:
    """Return each key of a prometheus_client file with its value, checked.

    Raises:
        _CorruptFileError: If the file does not parse as prometheus_client writes it, or
            holds an additive value that is not finite, or a negative count.
    """
    with open(path, "rb") as file:  # noqa: PTH123
        data = file.read()
    if not data:  # killed between creating its file and sizing it
        return {}
    if len(data) < _HEADER:
        raise _CorruptFileError(_TRUNCATED, "it is shorter than its header")
    (used,) = struct.unpack_from("i", data)
    if not _HEADER <= used <= len(data):
        msg = f"its used length {used} is outside the file's {len(data)} bytes"
        raise _CorruptFileError(_TRUNCATED, msg)
    values = {}
    position = _HEADER
    while position < used:
        (length,) = struct.unpack_from("i", data, position) if position + 4 <= used else (0,)
        end = position + 4 + length + (8 - (length + 4) % 8) + 16
        if length <= 0 or end > used:
            msg = f"an entry at byte {position} runs past the used length {used}"
            raise _CorruptFileError(_TRUNCATED, msg)
        try:
            key = data[position + 4 : position + 4 + length].decode("utf-8")
        except UnicodeDecodeError:
            msg = f"the key at byte {position} is not UTF-8"
            raise _CorruptFileError(_BAD_KEY, msg) from None
        (value,) = struct.unpack_from("d", data, end - 16)
        counts = _checked_keys.get((kind, key))
        if counts is None:
            counts = _check_key(kind, key)
        if kind != "gauge" and (not math.isfinite(value) or (counts and value < 0)):
            msg = f"{key} holds {value!r}"
            raise _CorruptFileError(_BAD_VALUE, msg)
        if key in values:
            msg = f"{key} appears twice"
            raise _CorruptFileError(_BAD_KEY, msg)
        values[key] = value
        position = end
    return values


def _check_key(kind: str, key: str) -> bool:
    """Check ``key`` as prometheus_client writes it; return whether it counts events.

    Raises:
        _CorruptFileError: If it is not the JSON of ``[metric name, sample name, labels,
            help]`` that the collectors read.
    """
    try:
        metric_name, name, labels, help_text = json.loads(key)
    except ValueError:
        msg = f"the key {key[:100]!r} is not [metric, sample, labels, help] in JSON"
        raise _CorruptFileError(_BAD_KEY, msg) from None
    if not (
        isinstance(metric_name, str)
        and metric_name
        and isinstance(name, str)
        and name.startswith(metric_name)
        and isinstance(help_text, str)
        and isinstance(labels, dict)
        and all(isinstance(value, str) for value in labels.values())
    ):
        msg = f"the key {key[:100]!r} is not [metric, sample, labels, help]"
        raise _CorruptFileError(_BAD_KEY, msg)
    if kind == "histogram" and name.endswith("_bucket"):
        try:
            float(labels["le"])
        except (KeyError, ValueError):
            msg = f"the bucket {key[:100]!r} has no numeric le label"
            raise _CorruptFileError(_BAD_KEY, msg) from None
    counts = kind == "counter" or name.endswith(("_bucket", "_count"))
    if len(_checked_keys) >= _MAX_CHECKED_KEYS:
        _checked_keys.clear()
    _checked_keys[kind, key] = counts
    return counts


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
    # Past the largest double no exact sum exists.
    return [*kept, total] if math.isfinite(total) else [_sum([*partials, value])]


def _archive(directory: Path, kind: str) -> Path:
    return directory / f"{kind}_archive.db"


def _read_archive(directory: Path, kind: str) -> tuple[dict[str, list[float]], set[str]]:
    """Return the partials of each key in the archive of ``kind``, and the merges it absorbed.

    Raises:
        MultiprocessError: If the archive is damaged, not this module's, or of another
            version.
    """
    path = _archive(directory, kind)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, set()
    body = data[: -_CHECKSUM.size]
    used = struct.unpack_from("i", data)[0] if len(data) >= _HEADER else 0
    if used < _HEADER or data[used : used + len(_RECORD_MARK)] != _RECORD_MARK:
        msg = f"{path} is not an archive written by veza_business_metrics"
        raise MultiprocessError(msg)
    if len(data) < used + len(_RECORD_MARK) + 4 + _CHECKSUM.size or (
        zlib.crc32(body) != _CHECKSUM.unpack_from(data, len(body))[0]
    ):
        msg = (
            f"{path} is damaged: its checksum does not match its content, so its counts"
            " cannot be trusted; see the multiprocess page of the documentation"
        )
        raise MultiprocessError(msg)
    (length,) = struct.unpack_from("I", data, used + len(_RECORD_MARK))
    start = used + len(_RECORD_MARK) + 4
    record = json.loads(data[start : start + length])
    if (version := record.get("version")) != _ARCHIVE_VERSION:
        msg = (
            f"{path} is an archive of version {version!r};"
            f" this release reads version {_ARCHIVE_VERSION}"
        )
        raise MultiprocessError(msg)
    return record["partials"], set(record["absorbed"])


def _encode(partials: dict[str, list[float]], absorbed: set[str]) -> bytes:
    data = bytearray(_HEADER)
    for key, parts in partials.items():
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        data += struct.pack(f"i{len(padded)}sdd", len(encoded), padded, _sum(parts), 0.0)
    struct.pack_into("i", data, 0, len(data))
    record = {"version": _ARCHIVE_VERSION, "absorbed": sorted(absorbed), "partials": partials}
    encoded_record = json.dumps(record).encode("utf-8")
    data += _RECORD_MARK + struct.pack("I", len(encoded_record)) + encoded_record
    return bytes(data + _CHECKSUM.pack(zlib.crc32(data)))


def _compact(directory: Path, pids: set[int] | None, timeout: float | None = None) -> int:
    """Merge the files of ``pids``, or of every dead process; return how many processes.

    The merges put off for the directory run too, and so do those that a signal handler
    asks for meanwhile.
    """
    key = str(directory)
    merged = 0
    while not getattr(_local, "holding", False):
        # Soon after a merge waited in vain, one more try is all a merge makes; a try
        # that fails does not make that time longer, so merges wait again after it.
        wait = MERGE_TIMEOUT if timeout is None else timeout
        patience = wait if time.monotonic() >= _stuck_until.get(key, 0) else 0
        with _locked(directory, exclusive=True, timeout=patience) as taken:
            if taken:
                _stuck_until.pop(key, None)
                pids = _with_deferred(directory, pids)
                try:
                    merged += _merge(directory, pids)
                except BaseException:
                    _defer(directory, pids)
                    raise
        if not taken:
            if patience:
                _stuck_until[key] = time.monotonic() + _STUCK_SECONDS
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


def _has_work(directory: Path) -> bool:
    """Tell, without the lock, whether a sweep of ``directory`` would merge anything."""
    names = _file_names(directory)
    if any(_CLAIMED_FILE.fullmatch(name) or _TEMPORARY_ARCHIVE.fullmatch(name) for name in names):
        return True
    for pid, files in _files_by_pid(names, None).items():
        mergeable = [
            name
            for name in files
            if _LIVE_FILE.fullmatch(name) or _LIVE_GAUGE_FILE.fullmatch(name)
        ]
        if len(_in_use(pid, directory, mergeable)) < len(mergeable):
            return True
    return False


def _merge(directory: Path, pids: set[int] | None) -> int:
    """Merge the files of ``pids``, or of every dead process, holding the lock."""
    names = _file_names(directory)
    pending = _unfinished_claims(directory, names)
    merged = {_pid(name) for name in pending if _CLAIMED_FILE.fullmatch(name)}
    merge = uuid.uuid4().hex
    for pid, files in _files_by_pid(names, pids).items():
        claims = _claim(directory, pid, files, merge)
        pending += claims
        merged.update(pid for name in claims if _CLAIMED_FILE.fullmatch(name))
    if not pending:
        return 0
    by_kind: dict[str, list[str]] = defaultdict(list)
    for name in pending:
        by_kind[name.partition("_")[0]].append(name)
    # Claims must be on disk before an archive that absorbs them, and archives before
    # the claims they absorbed are unlinked. A live gauge dies with its process.
    _sync(directory)
    set_aside = set()
    for kind in _ADDITIVE:
        set_aside |= _absorb(directory, kind, by_kind[kind])
    _sync(directory)
    for name in pending:
        if name not in set_aside:
            (directory / name).unlink()
    return len(merged)


def _file_names(directory: Path) -> list[str]:
    """Return the names of the regular files in ``directory``: a folder is never merged."""
    return [entry.name for entry in os.scandir(directory) if entry.is_file(follow_symlinks=False)]


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
    absorbed = {kind: _read_archive(directory, kind)[1] for kind in _ADDITIVE}
    pending = []
    for name in claims:
        claim = _CLAIMED_FILE.fullmatch(name)
        if (claim and claim[3] in absorbed[claim[1]]) or _given_back(directory, name):
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


def _claim(directory: Path, pid: int, files: list[str], merge: str) -> list[str]:
    """Claim the files of ``pid``, but gauges other than live ones, that no process uses."""
    in_use = _in_use(pid, directory, files)
    claims = []
    for name in files:
        if name not in in_use and (_LIVE_FILE.fullmatch(name) or _LIVE_GAUGE_FILE.fullmatch(name)):
            claim = f"{name[:-3]}.{merge}.merging"
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


def _absorb(directory: Path, kind: str, claims: list[str]) -> set[str]:
    """Replace the archive of ``kind`` with one that adds the values of ``claims``.

    Returns:
        The claims that it set aside as corrupt instead.
    """
    if not claims:
        return set()
    partials = _read_archive(directory, kind)[0]
    set_aside = set()
    absorbed = set()
    for name in claims:
        try:
            values = _entries(directory / name, kind)
        except _CorruptFileError as error:
            _set_aside(directory, name, error)
            set_aside.add(name)
            continue
        for key, value in values.items():
            partials[key] = _add_exactly(partials.get(key, []), value)
        absorbed.add(name.split(".")[1])
    if not absorbed:
        return set_aside
    data = memoryview(_encode(partials, absorbed))
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
    return set_aside


def _set_aside(directory: Path, claim: str, error: _CorruptFileError) -> None:
    """Rename the corrupt ``claim`` to a name that no reader reads, saying why; log it."""
    corrupt = f"{claim.partition('.')[0]}.{error.slug}.{uuid.uuid4().hex[:8]}.corrupt"
    (directory / claim).rename(directory / corrupt)
    _LOG.error(
        "Moved %s aside as %s instead of merging it: %s. Its process's counts are lost;"
        " every other total is intact. Keep it to investigate, then delete it",
        directory / f"{claim.partition('.')[0]}.db",
        directory / corrupt,
        error,
    )


def _sync(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
