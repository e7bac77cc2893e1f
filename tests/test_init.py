"""Tests for the public surface re-exported by veza_business_metrics."""

from __future__ import annotations

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
