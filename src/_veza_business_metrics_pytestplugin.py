"""The pytest plugin of veza_business_metrics: the ``business_metrics*`` fixtures.

This module lives outside the package, as Hypothesis's plugin does, so that loading it
at pytest's start imports neither the package nor prometheus_client. The counters are
registered when a test first uses a fixture: a misconfigured multiprocess directory then
fails that test with a clear error instead of every pytest run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from veza_business_metrics import BusinessMetrics
    from veza_business_metrics.testing import MetricsDelta


@pytest.fixture
def business_metrics() -> BusinessMetrics:
    """Give the instance that ``business_metrics_delta`` watches; override it to isolate."""
    from veza_business_metrics import DEFAULT_METRICS  # noqa: PLC0415

    return DEFAULT_METRICS


@pytest.fixture
def business_metrics_delta(business_metrics: BusinessMetrics) -> MetricsDelta:
    """Give the changes of the business counters since the test started."""
    from veza_business_metrics.testing import MetricsDelta  # noqa: PLC0415

    return MetricsDelta(business_metrics)
