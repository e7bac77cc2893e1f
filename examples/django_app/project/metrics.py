"""/metrics for several worker processes: the counters of every worker, live or dead.

``project/urls.py`` serves it instead of django-prometheus's view when
``PROMETHEUS_MULTIPROC_DIR`` is set, which must then name an existing directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.http import HttpRequest, HttpResponse

from veza_business_metrics.multiprocess import make_wsgi_app

if TYPE_CHECKING:
    from collections.abc import Callable

# The default registry would only see the worker that answers the scrape. This app
# merges the files of the workers that exited, which matters where no hook does it when
# they exit (uWSGI), then reads the files of every worker, live or merged, in
# PROMETHEUS_MULTIPROC_DIR. It replaces django-prometheus's view, whose prometheus_client
# collector takes no lock: a scrape during a merge would miss the merged counts.
metrics_app = make_wsgi_app()


def metrics(request: HttpRequest) -> HttpResponse:
    """Serve the sum of every worker's metrics, or 503 if a stopped process holds their lock."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], _exc_info: object = None
    ) -> Callable[[bytes], object]:
        started.append((status, headers))
        return lambda _: None

    # Django's request.META is the WSGI environ that the server gave.
    body = b"".join(metrics_app(request.META, start_response))
    status, headers = started[-1]
    response = HttpResponse(body, status=int(status.partition(" ")[0]))
    for name, value in headers:
        response[name] = value
    return response
