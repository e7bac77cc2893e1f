r"""Configure gunicorn for the multiprocess example shop.

Start it from the repository root with an empty directory for the metrics files::

    PROMETHEUS_MULTIPROC_DIR=/tmp/shop-metrics \
        gunicorn --config examples/gunicorn/gunicorn.conf.py app:app

``--preload`` works too. ``SHOP_BIND`` (default ``127.0.0.1:8000``) and ``SHOP_WORKERS``
(default 4) override the address and the number of workers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Protocol


class _Worker(Protocol):
    pid: int


HERE = Path(__file__).resolve().parent
sys.path.extend([str(HERE), str(HERE.parent)])

bind = os.environ.get("SHOP_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("SHOP_WORKERS", "4"))

# prometheus_client picks its storage when first imported, so the directory must be
# known before any worker (or, with --preload, the master) imports the app.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    sys.exit("set PROMETHEUS_MULTIPROC_DIR to an empty directory for the metrics files")
METRICS_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_starting(server: object) -> None:  # noqa: ARG001
    """Delete the metrics files of earlier runs, so that counts start from zero."""
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    # With --preload the app, and so the zero series, were loaded into this master
    # process before this hook runs: its own files are this run's and must stay.
    own_suffix = f"_{os.getpid()}.db"
    for path in METRICS_DIR.glob("*.db"):
        if not path.name.endswith(own_suffix):
            path.unlink()


def child_exit(server: object, worker: _Worker) -> None:  # noqa: ARG001
    """Tell prometheus_client that a worker is gone, however it died."""
    # Imported here, after PROMETHEUS_MULTIPROC_DIR is set, like every other import of
    # prometheus_client in these processes. Counter files stay: their counts live on.
    from prometheus_client import multiprocess  # noqa: PLC0415

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
