"""Tests for veza_business_metrics._currencies."""

from __future__ import annotations

from pathlib import Path

import iso4217
import pycountry

from veza_business_metrics._currencies import MINOR_UNITS, NO_MINOR_UNIT

# ISO 4217 List One as the iso4217 package publishes it, independently of the library.
PUBLISHED = {currency.code: currency.exponent for currency in iso4217.Currency}


def test_minor_units_equal_the_published_iso_4217_table() -> None:
    """Every code that List One gives a minor unit is shipped with that exponent, no other."""
    published = {code: exponent for code, exponent in PUBLISHED.items() if exponent is not None}
    assert dict(MINOR_UNITS) == published


def test_codes_without_minor_unit_equal_the_published_table() -> None:
    """The codes refused for having no minor unit are exactly List One's "N.A." codes."""
    assert {code for code, exponent in PUBLISHED.items() if exponent is None} == NO_MINOR_UNIT


def test_codes_equal_the_maintained_iso_4217_list() -> None:
    """Accepted and refused codes together are exactly pycountry's ISO 4217 codes."""
    maintained = {currency.alpha_3 for currency in pycountry.currencies}
    assert sorted(MINOR_UNITS.keys() | NO_MINOR_UNIT) == sorted(maintained)
    assert not MINOR_UNITS.keys() & NO_MINOR_UNIT


def test_codes_are_three_upper_case_ascii_letters() -> None:
    """Every code is three upper-case ASCII letters, the form exported as a label."""
    codes = MINOR_UNITS.keys() | NO_MINOR_UNIT
    assert all(len(code) == 3 and code.isascii() and code.isupper() for code in codes)


def test_the_documented_series_bound_matches_the_table() -> None:
    """docs/money.md gives the number of codes shipped and the bound of twice that many series."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "money.md").read_text()
    count = len(MINOR_UNITS)
    assert f"one of the {count} ISO 4217 codes" in text
    assert f"at most 2 \N{MULTIPLICATION SIGN} {count} = {2 * count} series" in text
    assert f"The {len(NO_MINOR_UNIT)} codes that List One gives" in text
