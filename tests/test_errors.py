"""Tests for veza_business_metrics._errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from veza_business_metrics import InvalidAmountError, InvalidLabelError

if TYPE_CHECKING:
    from veza_business_metrics import BusinessMetrics


def test_bad_labels_can_be_caught_as_value_error(metrics: BusinessMetrics) -> None:
    """InvalidLabelError is a ValueError, so generic handlers of bad values catch it."""
    assert issubclass(InvalidLabelError, ValueError)
    with pytest.raises(ValueError, match="outcome must be"):
        metrics.record_login("nope")  # type: ignore[arg-type]


def test_bad_amounts_can_be_caught_as_value_error(metrics: BusinessMetrics) -> None:
    """InvalidAmountError is a ValueError, so generic handlers of bad values catch it."""
    assert issubclass(InvalidAmountError, ValueError)
    with pytest.raises(ValueError, match="amount_cents must be 0 or more"):
        metrics.record_revenue(-1, "EUR")
