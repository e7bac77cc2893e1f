"""Tests for the public surface re-exported by veza_business_metrics."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

import veza_business_metrics
from veza_business_metrics import metrics


def test_all_is_sorted_and_importable() -> None:
    """__all__ is sorted constants, classes, functions, and every name in it is importable."""
    names = veza_business_metrics.__all__
    assert names == sorted(names, key=lambda name: (not name.isupper(), name[0].islower(), name))
    assert all(hasattr(veza_business_metrics, name) for name in veza_business_metrics.__all__)


def test_every_record_helper_is_exported() -> None:
    """Every record_* helper of the metrics module is re-exported from the package."""
    helpers = {name for name in dir(metrics) if name.startswith("record_")}
    assert len(helpers) == 15
    assert helpers <= set(veza_business_metrics.__all__)
    assert all(getattr(veza_business_metrics, name) == getattr(metrics, name) for name in helpers)


def test_version_is_the_installed_distribution_version() -> None:
    """__version__ is exported and equals the version in the installed metadata."""
    assert "__version__" in veza_business_metrics.__all__
    assert veza_business_metrics.__version__ == importlib.metadata.version("veza-business-metrics")


def test_unknown_attributes_still_raise_attribute_error() -> None:
    """Looking up the version lazily leaves other missing names an AttributeError."""
    with pytest.raises(AttributeError, match="has no attribute 'record_nothing'"):
        veza_business_metrics.record_nothing  # type: ignore[attr-defined]  # noqa: B018


def test_importing_the_package_loads_only_its_own_modules() -> None:
    """After prometheus_client, the import loads nothing but the package's own modules."""
    program = (
        "import sys, prometheus_client; before = set(sys.modules);"
        "import veza_business_metrics; print(*sorted(set(sys.modules) - before))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "veza_business_metrics.metrics" in loaded
    assert [name for name in loaded if not name.startswith("veza_business_metrics")] == []
