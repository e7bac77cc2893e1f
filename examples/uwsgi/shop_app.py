"""The Flask shop for uWSGI with several processes: /metrics sums every process's counters.

Start it with ``uwsgi --ini examples/uwsgi/uwsgi.ini`` (see that file), which puts this
directory and ``examples/`` on the import path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import metrics_hooks  # noqa: F401  the cold start and each new worker's merge, first
from prometheus_client import Counter, Histogram
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from flask_app import create_app
from veza_business_metrics import multiprocess

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


def metrics_token() -> str | None:
    """Return the bearer token that /metrics requires, or None to leave it open."""
    # From a file that only the server's user reads, such as systemd's LoadCredential=
    # gives: an environment variable would show in /proc to every process of the user.
    path = os.environ.get("SHOP_METRICS_TOKEN_FILE")
    return Path(path).read_text(encoding="utf-8").strip() if path else None


# The default registry's /metrics of create_app() would only see the worker that answers
# the scrape; this one merges the files of exited workers, then reads every process's,
# and answers 503 rather than hang if a stopped process holds their lock, and 401
# without the token, if there is one.
metrics = multiprocess.make_wsgi_app(bearer_token=metrics_token())
app = DispatcherMiddleware(create_app(), {"/ping": ping, "/metrics": metrics})
