"""Settings of the example shop: django-prometheus, the shop's app, and nothing else."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The framework-independent handlers are examples/shop.py, shared with the other hosts.
# Appended, so that this project's own packages win over anything else in examples/.
sys.path.append(str(Path(__file__).resolve().parents[2]))

# An example that serves made-up data on 127.0.0.1; a real project reads its own secret.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-shop-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["django_prometheus", "storefront"]
MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]
ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
# Django's default is America/Chicago; the logs, like Prometheus, should read in UTC.
TIME_ZONE = "UTC"
