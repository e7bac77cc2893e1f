"""Configure the shop's Django app."""

from __future__ import annotations

from django.apps import AppConfig


class StorefrontConfig(AppConfig):
    """Import the business metrics when Django starts."""

    name = "storefront"

    def ready(self) -> None:
        """Register the business counters, so that their zero series precede any request."""
        # Django imports URLconfs and views lazily, and /metrics may be served without
        # them (django-prometheus's PROMETHEUS_METRICS_EXPORT_PORT): importing here is
        # what guarantees the zero series from startup on.
        import veza_business_metrics  # noqa: F401, PLC0415
