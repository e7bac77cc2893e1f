"""gunicorn's server hooks that keep multiprocess counts exact as workers come and go.

A complete ``gunicorn.conf.py`` is this import plus the server's own settings::

    from veza_business_metrics.gunicorn import *

    bind = "127.0.0.1:8000"
    workers = 4

Serve ``/metrics`` with :func:`veza_business_metrics.multiprocess.make_wsgi_app`, or with
a registry that holds :class:`~veza_business_metrics.multiprocess.MultiProcessCollector`.
``PROMETHEUS_MULTIPROC_DIR`` must name a directory of this server's own, which exists
before gunicorn starts, since importing this module writes the master's zero series
there.
"""

from __future__ import annotations

from typing import Final, Protocol

from veza_business_metrics import multiprocess

__all__ = ["child_exit", "when_ready"]

# How long child_exit waits for the lock, in seconds.
CHILD_EXIT_TIMEOUT: Final = 0.25


class _Logger(Protocol):
    def error(self, message: str, /, *arguments: object) -> None: ...
    def exception(self, message: str, /, *arguments: object) -> None: ...


class _Arbiter(Protocol):
    master_pid: int

    @property
    def log(self) -> _Logger: ...


class _Worker(Protocol):
    pid: int


def when_ready(server: _Arbiter) -> None:
    """Take the directory for this server, emptying it on a cold start only.

    gunicorn calls it once it has bound its sockets and before it starts a worker, so a
    duplicate start that cannot bind never gets here. After a ``USR2`` upgrade, the new
    master finds the old one's pid in ``master_pid``: the old workers still write there,
    so it keeps every file.

    Raises:
        SystemExit: If another live server uses the directory, or a stopped process
            holds its lock; the reason is logged first.
    """
    try:
        if server.master_pid == 0:
            multiprocess.clear()
        else:
            multiprocess.attach()
    except (multiprocess.DirectoryInUseError, multiprocess.LockTimeoutError) as error:
        server.log.error("Cannot serve the metrics: %s", error)  # noqa: TRY400  one line
        raise SystemExit(1) from None


def child_exit(server: _Arbiter, worker: _Worker) -> None:
    """Merge the files of a worker that exited, however it died, into the archives."""
    try:
        # A short wait: the master replaces no worker meanwhile. What a stopped process
        # puts off, the next merge or a scrape through make_wsgi_app() does.
        multiprocess.mark_process_dead(worker.pid, timeout=CHILD_EXIT_TIMEOUT)
    except Exception:
        # gunicorn would halt on it; the merge stays put off for the next one to retry.
        server.log.exception("Could not merge the metrics files of worker %s", worker.pid)
