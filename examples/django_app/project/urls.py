"""The shop's routes, and /metrics for Prometheus."""

from __future__ import annotations

import os

from django.urls import URLPattern, URLResolver, include, path

from storefront import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("login", views.login),
    path("orders", views.create_order),
    path("orders/<str:order_id>/complete", views.complete_order),
    path("orders/<str:order_id>/fail", views.fail_order),
    path("orders/<str:order_id>/refund", views.refund_order),
    path("account", views.delete_account),
]

if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
    # Imported only here: its collector needs the directory of the workers' files.
    from project.metrics import metrics

    urlpatterns.append(path("metrics", metrics))
else:
    # django-prometheus serves the default registry, which holds the business counters.
    urlpatterns.append(path("", include("django_prometheus.urls")))
