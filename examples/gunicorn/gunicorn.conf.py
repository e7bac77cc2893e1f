r"""Configure gunicorn for the multiprocess example shop.

Start it from the repository root with a directory for the metrics files::

    PROMETHEUS_MULTIPROC_DIR=/tmp/shop-metrics \
        gunicorn --config examples/gunicorn/gunicorn.conf.py app:app

``--preload``, ``--max-requests`` and a ``USR2`` upgrade work too. ``SHOP_BIND`` (default
``127.0.0.1:8000``) and ``SHOP_WORKERS`` (default 4) override the address and the number
of workers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Protocol


class _Arbiter(Protocol):
    master_pid: int


class _Worker(Protocol):
    pid: int


class _Logger(Protocol):
    def exception(self, message: str, *arguments: object) -> None: ...


class _Server(Protocol):
    log: _Logger


HERE = Path(__file__).resolve().parent
sys.path.extend([str(HERE), str(HERE.parent)])

bind = os.environ.get("SHOP_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("SHOP_WORKERS", "4"))

# prometheus_client picks its storage when first imported, so the directory must be
# known before any worker (or, with --preload, the master) imports the app.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    sys.exit("set PROMETHEUS_MULTIPROC_DIR to a directory for the metrics files")
# Importing the package writes the master's zero series there, so it must exist first.
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

from veza_business_metrics import multiprocess  # noqa: E402


def on_starting(server: _Arbiter) -> None:
    """Delete the metrics files of earlier runs on a cold start, so that counts start at 0."""
    # On a USR2 upgrade, gunicorn starts the new master with the old one's pid in
    # master_pid: the old workers still serve and write there, so nothing is deleted.
    if server.master_pid == 0:
        multiprocess.clear()


def child_exit(server: _Server, worker: _Worker) -> None:
    """Merge the files of a worker that exited, however it died, into the archives."""
    try:
        multiprocess.mark_process_dead(worker.pid)
    except Exception:
        # gunicorn would halt on it; the merge stays put off for the next one to retry.
        server.log.exception("Could not merge the metrics files of worker %s", worker.pid)
