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

The package is four rooms, each import pointing down: ``_files`` knows the names and
the format of prometheus_client's files and of the archives, and sums exactly; ``_lock``
holds the locks and bounds every wait; ``_merge`` claims and merges the files of
processes that are gone; this module is the public face. It relies on prometheus_client
internals that ``_files`` lists, tested on every minor release from 0.20 on.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as _exposition
from prometheus_client import multiprocess as upstream

from veza_business_metrics._errors import DirectoryInUseError, LockTimeoutError, MultiprocessError
from veza_business_metrics.multiprocess import _files, _lock, _merge
from veza_business_metrics.multiprocess._lock import MERGE_TIMEOUT, SCRAPE_TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, MutableMapping

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from prometheus_client.metrics_core import Metric

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

# How long the apps' merge before a scrape waits: the scrape's own wait comes after it.
_SWEEP_BEFORE_SCRAPE_TIMEOUT: Final = 0.25
_LOG: Final = logging.getLogger(__name__)


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
        with _lock.locked(directory, exclusive=False, timeout=_lock.SCRAPE_TIMEOUT) as taken:
            if not taken:
                msg = (
                    f"waited {_lock.SCRAPE_TIMEOUT:g} s in vain for the lock on {directory}:"
                    " a process that holds it is stopped or stuck; the first scrape after"
                    " it lets go succeeds"
                )
                raise LockTimeoutError(msg)
            families = _files.collect(directory)
        if _merge.is_deferred(directory):  # a signal handler asked for a merge meanwhile
            # The merge stays put off if it fails; the scrape it follows must not fail.
            with contextlib.suppress(OSError, ValueError):
                _merge.compact(directory, set())
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
    _merge.compact(_directory(path), {pid}, timeout)


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
    if not _merge.is_deferred(directory) and not _merge.has_work(directory):
        return 0
    return _merge.compact(directory, None, timeout)


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
    with _lock.server_lock(directory, alone=True):
        # A process that imported prometheus_client's metrics already wrote its zero
        # series, as a gunicorn master does with --preload: those files are this run's.
        own = (f"_{os.getpid()}.db", f"_{os.getpid()}.bin")
        for entry in os.scandir(directory):
            if (
                _files.WRITTEN.fullmatch(entry.name)
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
    with _lock.server_lock(_directory(path), alone=False):
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
