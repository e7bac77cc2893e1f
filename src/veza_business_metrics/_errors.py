"""Exceptions raised for values that must never reach a counter."""

from __future__ import annotations

import sys
from typing import Final, cast

# An error message repeats the caller's value, which may come from a request body of any
# size and be sent back in a response: it shows this many characters of it at most.
SHOWN_CHARS: Final = 100
# Ints up to this size have at most 78 digits, so repr() shows them whole. Past
# sys.get_int_max_str_digits() repr() raises, and up to it repr() takes quadratic time.
_SHOWN_INT_BITS: Final = 256
# Tracebacks, reprs and the API reference name the public exceptions where users import
# them from, rather than this private module; pickle finds them there too.
_PUBLIC_MODULE: Final = "veza_business_metrics"
# The multiprocess module raises its own, and users import them from there.
_MULTIPROCESS_MODULE: Final = "veza_business_metrics.multiprocess"


class InvalidLabelError(ValueError):
    """A label value (outcome, status or currency) is outside its fixed set."""

    __module__ = _PUBLIC_MODULE


class InvalidAmountError(ValueError):
    """An amount cannot be counted exactly in minor units of its currency."""

    __module__ = _PUBLIC_MODULE


class MultiprocessError(ValueError):
    """prometheus_client's multiprocess mode cannot keep the counts exact as configured."""

    __module__ = _PUBLIC_MODULE


def shown(value: object) -> str:
    """Return ``repr(value)`` for an error message, cut to ``SHOWN_CHARS`` characters.

    Args:
        value: What the caller passed.
    """
    # type(), unlike isinstance(), cannot be fooled by a __class__ property; int's own
    # bit_length() cannot be overridden by a subclass.
    if issubclass(type(value), int):
        bits = int.bit_length(cast("int", value))
        if bits > _SHOWN_INT_BITS:
            return f"an int of {bits} bits"
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... ({_length(value, text)} characters)"


def _length(value: object, text: str) -> int:
    # The length a caller can check against their input: a str's own characters, without
    # the quotes and escapes of its repr, and a Decimal's digits without "Decimal('')".
    if issubclass(type(value), str):
        return str.__len__(cast("str", value))
    # A Decimal exists only once decimal is imported, which this module does not pay for.
    decimal = sys.modules.get("decimal")
    if decimal is not None and issubclass(type(value), decimal.Decimal):
        return len(decimal.Decimal.__str__(value))
    return len(text)


class DirectoryInUseError(MultiprocessError):
    """Another live server uses the multiprocess directory that this one was given."""

    __module__ = _MULTIPROCESS_MODULE


class LockTimeoutError(TimeoutError):
    """A process held the multiprocess directory's lock for longer than a call may wait."""

    __module__ = _MULTIPROCESS_MODULE
