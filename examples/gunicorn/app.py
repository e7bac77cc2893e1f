"""The Flask shop for several gunicorn workers: /metrics sums every worker's counters.

Start it with ``gunicorn --config examples/gunicorn/gunicorn.conf.py app:app`` (see that
file); the config puts this directory and ``examples/`` on the import path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from flask_app import create_app
from veza_business_metrics.multiprocess import make_wsgi_app

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# The host application's own metrics, which the multiprocess files carry too.
PINGS = Counter("shop_pings_total", "Pings answered by the shop.")
PING_SECONDS = Histogram("shop_ping_seconds", "Time to answer a ping.", buckets=(0.1, 0.5, 1))


def ping(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:  # noqa: ARG001
    """Answer a ping, counted only on the host application's own metrics."""
    PINGS.inc()
    # A fixed duration keeps the histogram's sum exact for the tests.
    PING_SECONDS.observe(0.25)
    start_response("204 No Content", [])
    return []


# The default registry's /metrics of create_app() would only see the worker that answers
# the scrape; this one reads the files of every worker, live, exited or merged, in
# PROMETHEUS_MULTIPROC_DIR, and answers 503 rather than hang if a stopped process holds
# their lock.
app = DispatcherMiddleware(create_app(), {"/ping": ping, "/metrics": make_wsgi_app()})
