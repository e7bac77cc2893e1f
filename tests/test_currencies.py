"""Tests for veza_business_metrics._currencies."""

from __future__ import annotations

import pycountry

from veza_business_metrics._currencies import CURRENCY_CODES


def test_codes_equal_the_maintained_iso_4217_list() -> None:
    """The shipped codes are exactly pycountry's active ISO 4217 alphabetic codes."""
    maintained = {currency.alpha_3 for currency in pycountry.currencies}
    assert sorted(CURRENCY_CODES - maintained) == []
    assert sorted(maintained - CURRENCY_CODES) == []


def test_codes_are_three_upper_case_ascii_letters() -> None:
    """Every code is three upper-case ASCII letters, the form exported as a label."""
    assert all(len(code) == 3 and code.isascii() and code.isupper() for code in CURRENCY_CODES)


def test_there_are_178_codes() -> None:
    """The README's series bound, 2 x 178, matches the number of codes shipped."""
    assert len(CURRENCY_CODES) == 178
