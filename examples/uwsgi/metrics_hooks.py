"""What uWSGI runs for the metrics of several processes: a cold start, and each new worker.

Import it first thing in the module that uWSGI loads, as ``shop_app.py`` does. With
``lazy-apps`` off, as in ``uwsgi.ini``, uWSGI's master loads that module, and so runs
this one, once, before it forks any worker. Set ``PROMETHEUS_MULTIPROC_DIR`` to a
directory of the server's own before uWSGI starts.
"""

from __future__ import annotations

import importlib
from typing import Any

from veza_business_metrics import multiprocess

# The module that uWSGI gives the Python code it runs; by name, since it exists only
# inside uWSGI and has no type stubs.
uwsgi: Any = importlib.import_module("uwsgi")


def merge_exited_workers() -> None:
    """Merge the files of the workers that exited, as each new worker starts."""
    # uWSGI's master runs no Python when a worker exits, recycled or killed: the worker
    # that replaces it merges its files, before it writes its own, so the directory
    # keeps one file per type and process. A scrape of /metrics merges them too.
    multiprocess.sweep()


if uwsgi.worker_id() == 0:
    # The master, before it forks any worker: a cold start, or a reload, after which no
    # worker of the earlier run lives. Their counts go; a second server given this
    # directory stops here with DirectoryInUseError, and deletes nothing.
    multiprocess.clear()
uwsgi.post_fork_hook = merge_exited_workers
