"""Serve the metrics of every process of a Celery worker from its main process.

A prefork worker runs tasks in pool children, each with its own counters, and recycles
them (``--max-tasks-per-child``). In prometheus_client's multiprocess mode they count in
files in ``PROMETHEUS_MULTIPROC_DIR``; ``setup`` wires Celery's signals so that the
worker's main process, which runs no task, serves them all on one port:

- ``worker_init``, in the main process before the pool starts: serve ``/metrics`` with
  :func:`~veza_business_metrics.multiprocess.make_wsgi_app`, which merges the files of
  exited children before every scrape, then empty the directory, and log where it
  serves;
- ``worker_process_init``, in each pool child as it starts: merge the files of the
  children that exited before it, whether they ran ``worker_process_shutdown`` or were
  killed by ``SIGKILL``; an exiting child cannot merge its own files, which it has open;
- ``worker_shutdown``, in the main process once the pool has stopped: stop serving.

Processes forked from the main process close the listening socket they inherit, so only
the main process ever holds the port.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from celery import Celery, signals

from veza_business_metrics import multiprocess

if TYPE_CHECKING:
    from celery.worker import WorkController

_LOG: Final = logging.getLogger(__name__)

__all__ = ["setup"]


def setup(
    app: Celery,
    *,
    port: int,
    addr: str = "127.0.0.1",
    bearer_token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> None:
    """Serve ``/metrics`` for every process of ``app``'s workers from their main process.

    Call it once, where the app is defined. It only connects signal receivers, so the
    other processes that import the app, such as the web tier that sends tasks or
    ``celery beat``, serve nothing. Each worker needs ``PROMETHEUS_MULTIPROC_DIR`` in its
    environment, a directory of its own, before prometheus_client is first imported.

    Args:
        app: The Celery app whose workers serve the metrics.
        port: The TCP port that each worker's main process listens on, 1 to 65535.
        addr: The address it listens on.
        bearer_token: The token that a scrape's ``Authorization: Bearer`` must carry.
        basic_auth: The user name and password that a scrape's basic auth must carry.

    Raises:
        TypeError: If ``app`` is not a ``Celery`` app, ``port`` not an int, ``addr``
            not a str, or a credential not a str.
        ValueError: If ``port`` is outside 1 to 65535, or a credential is empty.
    """
    _check_arguments(app, port, addr)
    # Checked here, where the mistake is made, rather than when a worker starts.
    multiprocess._accepted_authorizations(bearer_token, basic_auth)  # noqa: SLF001
    endpoint = _Endpoint(app, port, addr, bearer_token, basic_auth)
    # Celery holds receivers weakly by default, and nothing else holds this endpoint.
    signals.worker_init.connect(endpoint.start, weak=False)
    signals.worker_process_init.connect(endpoint.merge_exited, weak=False)
    signals.worker_shutdown.connect(endpoint.stop, weak=False)


def _check_arguments(app: object, port: object, addr: object) -> None:
    if not isinstance(app, Celery):
        msg = f"app must be a Celery app, got {type(app).__name__} {app!r}"
        raise TypeError(msg)
    if isinstance(port, bool) or not isinstance(port, int):
        msg = f"port must be an int, got {type(port).__name__} {port!r}"
        raise TypeError(msg)
    if not 1 <= port <= 65535:  # noqa: PLR2004
        msg = f"port must be 1 to 65535, got {port}"
        raise ValueError(msg)
    if not isinstance(addr, str):
        msg = f"addr must be a str such as '127.0.0.1', got {type(addr).__name__} {addr!r}"
        raise TypeError(msg)


class _Endpoint:
    """The ``/metrics`` server of the main process of one app's worker."""

    def __init__(
        self,
        app: Celery,
        port: int,
        addr: str,
        bearer_token: str | None,
        basic_auth: tuple[str, str] | None,
    ) -> None:
        self._app = app
        self._port = port
        self._addr = addr
        self._bearer_token = bearer_token
        self._basic_auth = basic_auth
        self._server: WSGIServer | None = None
        self._directory = ""

    def start(self, sender: WorkController, **_: object) -> None:
        """Serve the directory, emptied, if ``sender`` is a worker of this app.

        Raises:
            SystemExit: If ``PROMETHEUS_MULTIPROC_DIR`` is not set or not a directory,
                or the port cannot be bound. Celery hides the exceptions of
                ``worker_init`` receivers, and a worker that ran on without this
                endpoint would count in files that nothing serves.
        """
        if sender.app is not self._app:
            return
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            msg = (
                "Cannot serve /metrics: PROMETHEUS_MULTIPROC_DIR is not set, so each pool"
                " process would count in memory that no scrape reads; set it to a directory"
                " of this worker's own"
            )
            raise SystemExit(msg)
        try:
            served = multiprocess.make_wsgi_app(
                directory, bearer_token=self._bearer_token, basic_auth=self._basic_auth
            )
            family = socket.AF_INET6 if ":" in self._addr else socket.AF_INET
            server_class = type("_Server", (_ThreadingServer,), {"address_family": family})
            self._server = make_server(self._addr, self._port, served, server_class, _QuietHandler)
        except (OSError, ValueError) as error:
            msg = f"Cannot serve /metrics on {self._addr}:{self._port}: {error}"
            raise SystemExit(msg) from None
        # Only once the port is ours: a second worker given the same port and directory
        # by mistake must not delete the first one's files, and one given another port
        # is refused.
        try:
            multiprocess.clear(directory)
        except (multiprocess.DirectoryInUseError, multiprocess.LockTimeoutError) as error:
            # Not serving yet, so there is no loop to shut down: shutdown() would wait.
            self._server.server_close()
            self._server = None
            msg = f"Cannot serve /metrics: {error}"
            raise SystemExit(msg) from None
        self._directory = directory
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        _LOG.info(
            "Serving the metrics of every process in %s on http://%s:%s/metrics%s",
            directory,
            self._addr,
            self._port,
            "" if self._bearer_token is None and self._basic_auth is None else ", with auth",
        )
        # A child keeps every descriptor of its parent: without this, a child outliving
        # a killed main process would keep the port, and a restarted worker could not
        # bind it.
        os.register_at_fork(after_in_child=self._server.socket.close)

    def merge_exited(self, **_: object) -> None:
        """Merge the files of processes that exited, if this app's worker is serving."""
        if self._server is not None:
            multiprocess.sweep(self._directory)

    def stop(self, sender: WorkController, **_: object) -> None:
        """Stop serving, if ``sender`` is the worker of this app that serves."""
        if sender.app is self._app and self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """A WSGI server that answers each scrape in a thread of its own."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """A request handler that does not log each scrape."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Log nothing: Prometheus scrapes every few seconds."""
