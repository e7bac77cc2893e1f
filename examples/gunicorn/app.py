"""The Flask shop for several gunicorn workers: /metrics sums every worker's counters.

Start it with ``gunicorn --config examples/gunicorn/gunicorn.conf.py app:app`` (see that
file); the config puts this directory and ``examples/`` on the import path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, multiprocess

from flask_app import create_app

# The default registry would only see the worker that answers the scrape; this one
# reads the files that every worker, dead or alive, wrote in PROMETHEUS_MULTIPROC_DIR.
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]

app = create_app(registry)
