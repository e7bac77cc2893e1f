"""Tests for veza_business_metrics._errors."""

from __future__ import annotations

import pickle
import traceback
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest

import veza_business_metrics
from veza_business_metrics import InvalidAmountError, InvalidLabelError, MultiprocessError
from veza_business_metrics._errors import SHOWN_CHARS, shown

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


@pytest.mark.parametrize("error", [InvalidLabelError, InvalidAmountError, MultiprocessError])
def test_errors_are_named_where_users_import_them(error: type[ValueError]) -> None:
    """Tracebacks and reprs show veza_business_metrics.Name, which names the very class."""
    assert error.__module__ == "veza_business_metrics"
    assert getattr(veza_business_metrics, error.__name__) is error
    assert repr(error) == f"<class 'veza_business_metrics.{error.__name__}'>"
    assert traceback.format_exception_only(error("bad")) == [
        f"veza_business_metrics.{error.__name__}: bad\n"
    ]


def test_a_raised_error_survives_pickling(metrics: BusinessMetrics) -> None:
    """An error pickles, as multiprocessing and Celery do with a worker's, and loads back."""
    with pytest.raises(InvalidLabelError) as raised:
        metrics.record_login("nope")  # type: ignore[arg-type]
    loaded = pickle.loads(pickle.dumps(raised.value))  # noqa: S301  pickled just above
    assert type(loaded) is InvalidLabelError
    assert loaded.args == raised.value.args


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("EUR", "'EUR'"),
        (None, "None"),
        (2**256 - 1, str(2**256 - 1)),
        (-(2**256) + 1, str(-(2**256) + 1)),
        ("x" * SHOWN_CHARS, repr("x" * SHOWN_CHARS)[:SHOWN_CHARS] + "... (100 characters)"),
        ("x" * 200, "'" + "x" * (SHOWN_CHARS - 1) + "... (200 characters)"),
        ("\0" * 200, "'" + "\\x00" * 24 + "\\x0... (200 characters)"),
        (Decimal("9" * 200), "Decimal('" + "9" * (SHOWN_CHARS - 9) + "... (200 characters)"),
        (["x" * 200], "['" + "x" * (SHOWN_CHARS - 2) + "... (204 characters)"),
        (2**256, "an int of 257 bits"),
        (-(10**5000), "an int of 16610 bits"),
    ],
    ids=[
        "str",
        "None",
        "int",
        "negative-int",
        "long-str",
        "longer-str",
        "escaped-str",
        "long-decimal",
        "long-list",
        "long-int",
        "huge-int",
    ],
)
def test_shown_cuts_what_it_repeats(value: object, text: str) -> None:
    """A value is shown as its repr, cut at SHOWN_CHARS with its own length, or an int by size."""
    assert shown(value) == text
