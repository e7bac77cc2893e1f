"""Tests for veza_business_metrics._money."""

from __future__ import annotations

import doctest
import re
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import iso4217
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import REVENUE, Proxy, exposing, scrape
from veza_business_metrics import (
    BusinessMetrics,
    InvalidAmountError,
    InvalidLabelError,
    _money,
    to_minor_units,
)
from veza_business_metrics._errors import SHOWN_CHARS

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import CollectorRegistry

# The published ISO 4217 exponents, independently of the table the library ships.
EXPONENTS = {c.code: c.exponent for c in iso4217.Currency if c.exponent is not None}
MAX_MINOR_UNITS = 2**53


class LyingDecimal(Decimal):
    """A Decimal whose methods and comparisons claim it is 1 and whole."""

    __slots__ = ()

    def __str__(self) -> str:
        """Claim to be 1."""
        return "1"

    def as_tuple(self) -> Any:
        """Claim to be 1."""
        return Decimal(1).as_tuple()

    def __lt__(self, other: object) -> bool:
        """Claim never to be below anything."""
        return False

    def is_finite(self) -> bool:
        """Claim to be finite."""
        return True


class LyingStr(str):
    """A str whose __str__ claims it is "1"."""

    __slots__ = ()

    def __str__(self) -> str:
        """Claim to be "1"."""
        return "1"


@pytest.mark.parametrize(
    ("amount", "currency", "minor_units"),
    [
        (Decimal("19.99"), "EUR", 1999),
        ("19.99", "eur", 1999),
        (Decimal("19.990"), "EUR", 1999),
        ("19.9", "EUR", 1990),
        ("19", "EUR", 1900),
        ("1500", "JPY", 1500),
        ("1500.000", "jpy", 1500),
        (Decimal("1.5E+3"), "JPY", 1500),
        ("2.5", "KWD", 2500),
        ("2.500", "KwD", 2500),
        ("0.001", "KWD", 1),
        ("1.0001", "CLF", 10001),
        ("90071992547409.92", "EUR", MAX_MINOR_UNITS),
        ("9007199254740992", "JPY", MAX_MINOR_UNITS),
        ("1000.50", "EUR", 100050),
        ("1." + "0" * 100, "EUR", 100),
        (LyingDecimal("19.99"), "EUR", 1999),
        (LyingStr("19.99"), "EUR", 1999),
    ],
    ids=repr,
)
def test_amounts_convert_with_the_currency_exponent(
    amount: Decimal | str, currency: str, minor_units: int
) -> None:
    """EUR has 2 decimals, JPY 0 and KWD 3; trailing zeros and subclasses change nothing."""
    assert to_minor_units(amount, currency) == minor_units


@pytest.mark.parametrize(
    "amount", ["0", "-0", "0.00000", Decimal("0E+999999"), Decimal("-0E-999999"), Decimal(0)]
)
def test_zero_in_any_form_is_zero(amount: Decimal | str) -> None:
    """Zero written with any sign, decimals or exponent is 0 minor units."""
    assert to_minor_units(amount, "EUR") == 0


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        ("19.999", "EUR"),
        ("0.001", "EUR"),
        ("1.5", "JPY"),
        ("0.0001", "KWD"),
        ("1.00001", "CLF"),
        ("0." + "0" * 100 + "1", "EUR"),
        (Decimal("5E-1000000"), "EUR"),
        ("9007199254740991.5", "JPY"),
    ],
)
def test_more_decimals_than_the_currency_has_raise(amount: Decimal | str, currency: str) -> None:
    """An amount with a non-zero digit past the minor unit raises, and is never rounded."""
    exponent = EXPONENTS[currency]
    with pytest.raises(InvalidAmountError, match=f"at most {exponent} decimals, the minor unit"):
        to_minor_units(amount, currency)


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("90071992547409.93", "at most 2\\*\\*53"),
        (Decimal("1E+999999999"), "at most 2\\*\\*53"),
        ("9" * 100_000, "at most 2\\*\\*53"),
        (Decimal("-0.01"), "0 or more"),
        (Decimal("-Infinity"), "0 or more|finite"),
        (Decimal("NaN"), "finite"),
        (Decimal("sNaN"), "finite"),
        (Decimal("Infinity"), "finite"),
        ("-Infinity", "ASCII digits"),
        ("NaN", "ASCII digits"),
        ("", "ASCII digits"),
        ("19,99", "ASCII digits"),
        ("EUR 19.99", "ASCII digits"),
        ("\ud800", "ASCII digits"),
        (LyingDecimal("-5"), "0 or more"),
        (LyingDecimal("NaN"), "finite"),
        (LyingStr("1.5.5"), "ASCII digits"),
    ],
    ids=repr,
)
def test_amounts_that_are_no_count_of_minor_units_raise(
    amount: Decimal | str, message: str
) -> None:
    """Negative, non-finite, unparsable and too large amounts raise InvalidAmountError."""
    with pytest.raises(InvalidAmountError, match=f"^amount must be .*({message})"):
        to_minor_units(amount, "EUR")


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        ("1_000", "it groups digits with '_'"),
        ("\u0661\u0669.\u0669\u0669", "it has digits other than ASCII 0-9"),
        ("\uff11\uff19.99", "it has digits other than ASCII 0-9"),
        ("1e2", "it has an exponent; write the digits out"),
        ("-1.5E+3", "it has an exponent; write the digits out"),
        ("  19.99  ", "it has whitespace around it"),
        ("19.99\n", "it has whitespace around it"),
        ("", "it is empty"),
        ("NaN", "it is not a finite number"),
        ("-inf", "it is not a finite number"),
        ("+19.99", "it has a '+' sign"),
        ("19,99", "it has a ','; the decimal separator is '.', and digits are not grouped"),
        ("1.000.50", "it has more than one '.'"),
        (".5", "a '.' needs a digit on each side"),
        ("5.", "a '.' needs a digit on each side"),
        ("-", "a '.' needs a digit on each side"),
        ("EUR 19.99", "it has characters other than ASCII digits, one '.' and a leading '-'"),
        ("0x10", "it has characters other than ASCII digits, one '.' and a leading '-'"),
        (LyingStr("1_000"), "it groups digits with '_'"),
    ],
    ids=repr,
)
def test_only_plain_ascii_decimals_are_read(amount: str, reason: str) -> None:
    """A str that Decimal() would read but that is no plain ASCII decimal raises, saying why."""
    with pytest.raises(InvalidAmountError) as raised:
        to_minor_units(amount, "EUR")
    assert str(raised.value) == (
        "amount must be ASCII digits with at most one '.' between them, such as '19.99',"
        f" got {str.__str__(amount)!r}: {reason}"
    )


def test_a_long_amount_is_shown_with_its_own_length() -> None:
    """The length in a message counts the characters of the amount, not of its repr."""
    with pytest.raises(InvalidAmountError) as raised:
        to_minor_units("1" * 199 + "x", "EUR")
    assert "1" * 99 + "... (200 characters): " in str(raised.value)


@pytest.mark.parametrize(
    ("amount", "hint"),
    [
        (19.99, "pass a Decimal or its str"),
        (True, "pass a Decimal or its str"),
        (None, "pass a Decimal or its str"),
        (b"19.99", "pass a Decimal or its str"),
        (Fraction(1999, 100), "pass a Decimal or its str"),
        (1999, "pass an int of minor units to record_revenue"),
        (Proxy(Decimal("19.99")), "pass a Decimal or its str"),
        (Proxy("19.99"), "pass a Decimal or its str"),
    ],
    ids=repr,
)
def test_other_types_raise_type_error(amount: object, hint: str) -> None:
    """A float, an int or any type but Decimal and str raises TypeError with what to pass."""
    with pytest.raises(TypeError, match=r"^amount must be a Decimal or a str") as raised:
        to_minor_units(amount, "EUR")  # type: ignore[arg-type]
    assert hint in str(raised.value)


@pytest.mark.parametrize(
    ("currency", "error"),
    [
        ("XAU", InvalidLabelError),
        ("xts", InvalidLabelError),
        ("EURO", InvalidLabelError),
        (978, TypeError),
        (None, TypeError),
    ],
)
def test_currency_is_checked_as_record_revenue_checks_it(
    currency: object, error: type[Exception]
) -> None:
    """A currency that record_revenue refuses is refused here with the same error."""
    with pytest.raises(error, match=r"^currency must be"):
        to_minor_units("1", currency)  # type: ignore[arg-type]


@pytest.mark.parametrize("amount", ["9" * 2**20, "x" * 2**20], ids=["digits", "letters"])
def test_messages_show_a_bounded_part_of_the_amount(amount: str) -> None:
    """A huge amount is cut short in the error message."""
    with pytest.raises(InvalidAmountError) as raised:
        to_minor_units(amount, "EUR")
    assert f"got {amount[:20]}" in str(raised.value).replace("'", "")
    assert len(str(raised.value)) < SHOWN_CHARS + 300


@pytest.mark.parametrize(
    ("amount", "currency"),
    [(Decimal("19.99"), "EUR"), (Decimal(1500), "JPY"), (Decimal("2.505"), "KWD")],
)
@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_amounts_round_trip_through_a_scrape(
    metrics: BusinessMetrics,
    registry: CollectorRegistry,
    record: str,
    amount: Decimal,
    currency: str,
) -> None:
    """An amount converted, recorded and scraped over HTTP converts back to itself."""
    getattr(metrics, record)(to_minor_units(amount, currency), currency)
    label = currency + ("-refund" if record == "record_refund" else "")
    with exposing(registry) as url:
        scraped = scrape(url)[(REVENUE, (("currency", label),))]
    assert scraped.is_integer()
    assert Decimal(int(scraped)).scaleb(-EXPONENTS[currency]) == amount


@st.composite
def _exact_amounts(draw: Callable[..., Any]) -> tuple[str, Decimal, int]:
    """Draw a currency, an amount with at most its exponent's decimals, and its minor units."""
    code = draw(st.sampled_from(sorted(EXPONENTS)))
    minor_units = draw(st.integers(min_value=0, max_value=MAX_MINOR_UNITS))
    trailing_zeros = draw(st.integers(min_value=0, max_value=3))
    digits = tuple(int(d) for d in str(minor_units * 10**trailing_zeros))
    amount = Decimal((0, digits, -(EXPONENTS[code] + trailing_zeros)))
    return code, amount, minor_units


@given(drawn=_exact_amounts(), as_str=st.booleans(), lower=st.booleans())
def test_amounts_within_the_minor_unit_convert_exactly(
    drawn: tuple[str, Decimal, int], *, as_str: bool, lower: bool
) -> None:
    """Any amount with at most its currency's decimals gives amount * 10**exponent exactly."""
    code, amount, minor_units = drawn
    currency = code.lower() if lower else code
    assert to_minor_units(str(amount) if as_str else amount, currency) == minor_units
    assert Fraction(amount) * 10 ** EXPONENTS[code] == minor_units


@given(
    drawn=_exact_amounts(),
    extra=st.lists(st.integers(min_value=0, max_value=9), max_size=30),
    last=st.integers(min_value=1, max_value=9),
)
def test_amounts_past_the_minor_unit_raise(
    drawn: tuple[str, Decimal, int], extra: list[int], last: int
) -> None:
    """Any amount with a non-zero digit past its currency's decimals raises."""
    code, amount, _ = drawn
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)
    more = Decimal((sign, (*digits, *extra, last), exponent - len(extra) - 1))
    with pytest.raises(InvalidAmountError, match="decimals"):
        to_minor_units(more, code)


@given(
    amount=st.one_of(
        st.decimals(min_value=-(10**20), max_value=10**20),
        st.decimals(allow_nan=True, allow_infinity=True, places=5),
        st.text(alphabet="0123456789.-+eE_ ,\u0661\uff19", max_size=24),
        st.from_regex(r"-?[0-9]{1,18}(\.[0-9]{1,6})?", fullmatch=True),
    ),
    code=st.sampled_from(sorted(EXPONENTS)),
)
def test_any_amount_converts_exactly_or_raises(amount: Decimal | str, code: str) -> None:
    """Any Decimal, or str of ASCII digits with at most one '.', converts exactly or raises."""
    plain = isinstance(amount, Decimal) or re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", amount)
    value = Decimal(amount) if plain else Decimal("NaN")
    scaled = Fraction(value) * 10 ** EXPONENTS[code] if value.is_finite() else None
    if scaled is None or scaled.denominator != 1 or not 0 <= scaled <= MAX_MINOR_UNITS:
        with pytest.raises(InvalidAmountError):
            to_minor_units(amount, code)
    else:
        assert to_minor_units(amount, code) == scaled


def test_the_docstring_example_runs() -> None:
    """The example in to_minor_units' docstring gives the results it shows."""
    results = doctest.testmod(_money, raise_on_error=True)
    assert results.attempted >= 2


def test_importing_the_package_does_not_import_decimal(run_python: Callable[..., str]) -> None:
    """The decimal module is imported on the first conversion, not with the package."""
    code = (
        "import sys, veza_business_metrics as v; print('decimal' in sys.modules);"
        " v.to_minor_units('1', 'EUR'); print('decimal' in sys.modules)"
    )
    assert run_python(code).split() == ["False", "True"]
