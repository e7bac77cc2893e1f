"""Conversion of amounts in major units to the minor units that the counters take."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, cast

from veza_business_metrics._currencies import MINOR_UNITS
from veza_business_metrics._errors import InvalidAmountError, shown
from veza_business_metrics._recorder import MAX_AMOUNT_CENTS, canonical_currency

if TYPE_CHECKING:
    from decimal import Decimal

# 2**53 has 16 digits: every amount in range is exact at this precision, so any digit
# that the precision drops is a decimal too many.
_MAX_DIGITS: Final = len(str(MAX_AMOUNT_CENTS))
# The one spelling of an amount in text. Decimal() reads much more ("1_000", "1e2",
# "  19.99 ", other scripts' digits), each a likely misreading of a provider's field or a
# form's input. The "-" is read so that a negative amount gets the refund hint.
_PLAIN_DECIMAL: Final = r"-?[0-9]+(?:\.[0-9]+)?"
_ALLOWED: Final = "ASCII digits with at most one '.' between them, such as '19.99'"


def to_minor_units(amount: Decimal | str, currency: str) -> int:
    """Convert an amount in major units of ``currency`` to its exact number of minor units.

    ISO 4217 sets how many decimals each currency's minor unit has: 2 for EUR, 0 for JPY,
    3 for KWD. The result is what ``record_revenue`` and ``record_refund`` take. Nothing is
    ever rounded: trailing zeros are fine, any other decimal past the minor unit raises.

    Args:
        amount: The amount in major units, 0 or more: a ``Decimal``, or a ``str`` of
            ASCII digits with at most one ``.`` between them, such as ``"19.99"``.
        currency: An ISO 4217 code with a minor unit, in any case.

    Raises:
        TypeError: If ``amount`` is not a ``Decimal`` or a ``str``: a ``float`` cannot hold
            most decimal amounts exactly, and an ``int`` is most often already in minor
            units. Also if ``currency`` is not a ``str``.
        InvalidAmountError: If ``amount`` is a ``str`` in any other form (spaces, ``_``,
            an exponent, a ``+``, digits of another script), is not finite, is negative,
            has more decimals than ``currency``'s minor unit, or is above 2**53 minor
            units.
        InvalidLabelError: If ``currency`` is not an ISO 4217 code with a minor unit.

    Example:
        >>> from decimal import Decimal
        >>> to_minor_units(Decimal("19.99"), "eur")
        1999
        >>> to_minor_units("1500", "JPY"), to_minor_units("2.500", "KWD")
        (1500, 2500)
    """
    # Importing decimal costs about 1.5 ms, which the package's import does not pay.
    import decimal  # noqa: PLC0415

    code = canonical_currency(currency)
    exponent = MINOR_UNITS[code]
    value = _parsed(amount)
    if not value.is_finite():
        msg = f"amount must be a finite number, got {shown(amount)}"
        raise InvalidAmountError(msg)
    if value < 0:
        msg = (
            f"amount must be 0 or more, got {shown(amount)}; pass a refund's amount as a"
            " positive number to record_refund()"
        )
        raise InvalidAmountError(msg)
    # Checked before any arithmetic, so that an amount such as 1E+999999 costs nothing.
    if value and value.adjusted() + exponent >= _MAX_DIGITS:
        raise _too_large(amount, code)
    exact = decimal.Context(prec=_MAX_DIGITS, traps=[decimal.Inexact])
    try:
        minor_units = int(exact.to_integral_exact(exact.scaleb(value, exponent)))
    except decimal.Inexact:
        msg = (
            f"amount must have at most {exponent} decimals, the minor unit of {code}, got"
            f" {shown(amount)}; round it as your payment provider settled it: nothing here"
            " rounds"
        )
        raise InvalidAmountError(msg) from None
    if minor_units > MAX_AMOUNT_CENTS:
        raise _too_large(amount, code)
    return minor_units


def _parsed(amount: object) -> Decimal:
    import decimal  # noqa: PLC0415

    # type(), unlike isinstance(), cannot be fooled by a __class__ property. Decimal()
    # reads a subclass's value exactly, without calling any of its methods.
    if issubclass(type(amount), decimal.Decimal):
        return decimal.Decimal(cast("Decimal", amount))
    if issubclass(type(amount), str):
        import re  # noqa: PLC0415

        # str's own method copies a subclass's characters without calling its overrides.
        text = str.__str__(cast("str", amount))
        if re.fullmatch(_PLAIN_DECIMAL, text) is None:
            msg = f"amount must be {_ALLOWED}, got {shown(amount)}: {_why_not_plain(text)}"
            raise InvalidAmountError(msg)
        return decimal.Decimal(text)
    hint = (
        "pass an int of minor units to record_revenue() as it is, or Decimal(n)"
        if issubclass(type(amount), int) and type(amount) is not bool
        else "pass a Decimal or its str, e.g. Decimal('19.99') or '19.99'"
    )
    msg = (
        "amount must be a Decimal or a str in major units,"
        f" got {type(amount).__name__} {shown(amount)}; {hint}"
    )
    raise TypeError(msg)


def _why_not_plain(text: str) -> str:
    import re  # noqa: PLC0415

    unsigned = text.removeprefix("-")
    reasons = [
        (not text, "it is empty"),
        (text != text.strip(), "it has whitespace around it"),
        (
            any(char.isdigit() and not char.isascii() for char in text),
            "it has digits other than ASCII 0-9",
        ),
        (unsigned.casefold() in {"nan", "snan", "inf", "infinity"}, "it is not a finite number"),
        ("_" in text, "it groups digits with '_'"),
        (
            re.fullmatch(r"[+-]?[0-9.]*[0-9][eE][+-]?[0-9]+", text) is not None,
            "it has an exponent; write the digits out",
        ),
        (text.startswith("+"), "it has a '+' sign"),
        ("," in text, "it has a ','; the decimal separator is '.', and digits are not grouped"),
        (text.count(".") > 1, "it has more than one '.'"),
        (
            re.fullmatch(r"-?[0-9]*\.?[0-9]*", text) is not None,
            "a '.' needs a digit on each side",
        ),
    ]
    return next(
        (reason for applies, reason in reasons if applies),
        "it has characters other than ASCII digits, one '.' and a leading '-'",
    )


def _too_large(amount: object, code: str) -> InvalidAmountError:
    return InvalidAmountError(
        f"amount must be at most 2**53 ({MAX_AMOUNT_CENTS}) minor units of {code} to stay"
        f" exact as a sample value, got {shown(amount)}"
    )
