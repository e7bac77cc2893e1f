"""/metrics for several worker processes: the counters of every worker, live or dead.

``project/urls.py`` serves it instead of django-prometheus's view when
``PROMETHEUS_MULTIPROC_DIR`` is set, which must then name an existing directory.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from veza_business_metrics.multiprocess import MultiProcessCollector

# The default registry would only see the worker that answers the scrape; this one reads
# the files of every worker, live or merged, in PROMETHEUS_MULTIPROC_DIR. It replaces
# django-prometheus's view, whose prometheus_client collector takes no lock: a scrape
# during the merge of a dead worker's files would miss their counts.
registry = CollectorRegistry()
MultiProcessCollector(registry)


def metrics(_request: HttpRequest) -> HttpResponse:
    """Serve the sum of every worker's metrics in Prometheus's text format."""
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
