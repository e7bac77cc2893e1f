"""Tests for veza_business_metrics._recorder."""

from __future__ import annotations

import decimal
import itertools
import math
import re
import threading
import tracemalloc
from collections import UserString
from typing import TYPE_CHECKING, Any

import iso4217
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest, values
from werkzeug.local import LocalProxy

import veza_business_metrics
from helpers import DELETIONS, LOGINS, ORDERS, REVENUE, ZERO, Proxy, business_series, key
from veza_business_metrics import (
    BusinessMetrics,
    InvalidAmountError,
    InvalidLabelError,
    LoginOutcome,
    MultiprocessError,
    OrderStatus,
)
from veza_business_metrics._errors import SHOWN_CHARS
from veza_business_metrics._recorder import MAX_AMOUNT_CENTS

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from helpers import Key

# Computed here from the published ISO 4217 table, independently of the library's own.
ISO_CODES = sorted(c.code for c in iso4217.Currency if c.exponent is not None)
NO_MINOR_UNIT_CODES = sorted(c.code for c in iso4217.Currency if c.exponent is None)


class HostileStr(str):
    """A str that hashes anew on every call, and whose upper() and __str__ lie."""

    __slots__ = ()
    calls = itertools.count()

    def __hash__(self) -> int:
        """Return a new hash on every call, as a salted or per-object hash would."""
        return next(self.calls)

    def upper(self) -> str:
        """Claim to be EUR whatever the value."""
        return HostileStr("EUR")

    def __str__(self) -> str:
        """Return a new spelling on every call."""
        return f"EUR{next(self.calls)}"


def impostor(value: str, target: str) -> str:
    """Return a str of ``value`` that hashes as ``target`` does and claims to equal anything."""

    class Impostor(str):
        __slots__ = ()

        def __hash__(self) -> int:
            return hash(target)

        def __eq__(self, other: object) -> bool:
            return True

    return Impostor(value)


class HostileInt(int):
    """An int whose __int__ and comparisons lie about its value."""

    __slots__ = ()

    def __int__(self) -> int:
        """Claim to be 7."""
        return 7

    def __lt__(self, other: object) -> bool:
        """Claim never to be below anything."""
        return False

    def __le__(self, other: object) -> bool:
        """Claim to be at most anything."""
        return True

    def __gt__(self, other: object) -> bool:
        """Claim never to be above anything."""
        return False

    def __ge__(self, other: object) -> bool:
        """Claim to be at least anything."""
        return True


class Liar:
    """Claim a class through a __class__ property, as mocks do, and stand for ``value``.

    It hashes and adds as ``value``, claims to be above 0 and at most anything, and to
    equal anything when ``equal``: only its exact type tells it from a valid argument.
    """

    def __init__(self, claimed: type, value: object, *, equal: bool = False) -> None:
        """Claim ``claimed`` and stand for ``value``."""
        self._claimed = claimed
        self._value = value
        self._equal = equal

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        """Claim the class given."""
        return self._claimed

    def __hash__(self) -> int:
        """Hash as the value."""
        return hash(self._value)

    def __eq__(self, other: object) -> bool:
        """Equal anything when told to, else compare as the value."""
        return self._equal or bool(self._value == other)

    def __lt__(self, other: object) -> bool:
        """Claim never to be below anything, 0 included."""
        return False

    def __le__(self, other: object) -> bool:
        """Claim to be at most anything, 2**53 included."""
        return True

    def __gt__(self, other: object) -> bool:
        """Claim to be above anything, 0 included."""
        return True

    def __radd__(self, other: object) -> object:
        """Add as the value, so that a counter's float takes it on."""
        return other + self._value  # type: ignore[operator]

    def __repr__(self) -> str:
        """Show the class claimed and the value."""
        return f"Liar({self._claimed.__name__}, {self._value!r})"


def class_liar(claimed: type, value: object) -> object:
    """Return an object whose class hashes as ``claimed`` and equals any class.

    The object itself hashes as ``value`` and equals anything: a dict keyed by class, then
    by value, would take it for ``value`` of the class ``claimed``.
    """

    class Meta(type):
        def __hash__(cls) -> int:
            return hash(claimed)

        def __eq__(cls, other: object) -> bool:
            return True

    class ClassLiar(metaclass=Meta):
        def __hash__(self) -> int:
            return hash(value)

        def __eq__(self, other: object) -> bool:
            return True

        def __repr__(self) -> str:
            return f"ClassLiar({claimed.__name__}, {value!r})"

    return ClassLiar()


def lazy(value: object) -> LocalProxy[object]:
    """Return werkzeug's lazy proxy of ``value``, which claims its class and forwards the rest."""
    return LocalProxy(lambda: value)


LOGIN_HELPERS = [
    ("record_login_success", "success"),
    ("record_login_failure_credentials", "failure_credentials"),
    ("record_login_failure_unverified", "failure_unverified"),
    ("record_login_failure_locked", "failure_locked"),
    ("record_login_failure_2fa", "failure_2fa"),
    ("record_login_failure_other", "failure_other"),
]
ORDER_HELPERS = [
    ("record_order_created", "created"),
    ("record_order_completed", "completed"),
    ("record_order_refunded", "refunded"),
    ("record_order_failed", "failed"),
]


def test_zero_series_exist_before_any_event(registry: CollectorRegistry) -> None:
    """A new instance exports all 6 outcomes, all 4 statuses and deletions at 0: 11 series."""
    BusinessMetrics(registry)
    assert business_series(registry) == ZERO


NO_ARGUMENT_HELPERS = [
    *((helper, key(LOGINS, "outcome", outcome)) for helper, outcome in LOGIN_HELPERS),
    *((helper, key(ORDERS, "status", status)) for helper, status in ORDER_HELPERS),
    ("record_account_deletion", key(DELETIONS)),
]


@pytest.mark.parametrize(("helper", "series"), NO_ARGUMENT_HELPERS)
def test_no_argument_helpers_count_their_series_only(
    metrics: BusinessMetrics,
    registry: CollectorRegistry,
    helper: str,
    series: Key,
) -> None:
    """Each helper without arguments adds 1 to its own series and to nothing else."""
    before = business_series(registry)
    getattr(metrics, helper)()
    assert business_series(registry) == {**before, series: 1.0}


ACCEPTED_LABELS = [
    (record, name, label, enum, value)
    for record, name, label, enum in [
        ("record_login", LOGINS, "outcome", LoginOutcome),
        ("record_order_event", ORDERS, "status", OrderStatus),
    ]
    for member in enum
    for value in (member, member.value)
]


@pytest.mark.parametrize(("record", "name", "label", "enum", "value"), ACCEPTED_LABELS)
def test_label_recorders_take_a_member_or_its_value(
    metrics: BusinessMetrics,
    registry: CollectorRegistry,
    record: str,
    name: str,
    label: str,
    enum: type[LoginOutcome | OrderStatus],
    value: str,
) -> None:
    """An outcome or status labels its series with the value, given a member or a string."""
    getattr(metrics, record)(value)
    assert registry.get_sample_value(name, {label: enum(value).value}) == 1.0


BAD_LABELS = [
    "Success",
    "SUCCESS",
    " success",
    "",
    "Outcome.SUCCESS",
    "LoginOutcome.SUCCESS",
    None,
    0,
    1.5,
    True,
    b"success",
    ["success"],
    {"success": 1},
]


LABEL_RECORDERS = [
    ("record_login", "outcome", LoginOutcome, [*BAD_LABELS, *OrderStatus]),
    ("record_order_event", "status", OrderStatus, [*BAD_LABELS, *LoginOutcome, "Created"]),
]


@pytest.mark.parametrize(
    ("record", "argument", "enum", "value"),
    [(r, a, e, value) for r, a, e, values in LABEL_RECORDERS for value in values],
)
def test_label_recorders_reject_anything_else(
    metrics: BusinessMetrics,
    registry: CollectorRegistry,
    record: str,
    argument: str,
    enum: type[LoginOutcome | OrderStatus],
    value: object,
) -> None:
    """A bad outcome or status raises InvalidLabelError naming argument, value and allowed."""
    before = generate_latest(registry)
    with pytest.raises(InvalidLabelError) as raised:
        getattr(metrics, record)(value)
    message = str(raised.value)
    assert message.startswith(f"{argument} must be")
    assert repr(value) in message
    assert all(repr(member.value) in message for member in enum)
    assert generate_latest(registry) == before


@pytest.mark.parametrize("spelling", ["EUR", "eur", "Eur", "eUr"])
def test_revenue_matches_currency_in_any_case(
    metrics: BusinessMetrics, registry: CollectorRegistry, spelling: str
) -> None:
    """record_revenue accepts a code in any case and exports it upper case."""
    metrics.record_revenue(1999, spelling)
    metrics.record_revenue(1, spelling)
    assert business_series(registry)[key(REVENUE, "currency", "EUR")] == 2000.0


def test_revenue_spellings_share_one_series(
    metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """Revenue recorded as "usd" and "USD" lands in the single USD series."""
    metrics.record_revenue(100, "usd")
    metrics.record_revenue(250, "USD")
    revenue = {k: v for k, v in business_series(registry).items() if k[0] == REVENUE}
    assert revenue == {key(REVENUE, "currency", "USD"): 350.0}


def test_revenue_series_appear_on_first_use(
    metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """No revenue series exists until revenue is recorded in that currency."""
    assert registry.get_sample_value(REVENUE, {"currency": "EUR"}) is None
    metrics.record_revenue(5, "EUR")
    assert registry.get_sample_value(REVENUE, {"currency": "EUR"}) == 5.0


@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_zero_records_nothing(
    metrics: BusinessMetrics, registry: CollectorRegistry, record: str
) -> None:
    """An amount of 0 raises nothing and creates no series, as the Go service does."""
    before = generate_latest(registry)
    getattr(metrics, record)(0, "EUR")
    assert generate_latest(registry) == before


@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_zero_still_validates_the_currency(metrics: BusinessMetrics, record: str) -> None:
    """An amount of 0 in an unknown currency is still reported as a bad currency."""
    with pytest.raises(InvalidLabelError, match="'ZZZ'"):
        getattr(metrics, record)(0, "ZZZ")


def test_refund_uses_the_refund_suffix(
    metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """record_refund adds to ``<CUR>-refund`` and leaves the revenue series alone."""
    metrics.record_revenue(5000, "EUR")
    metrics.record_refund(1200, "eur")
    metrics.record_refund(300, "EUR")
    metrics.record_refund(200, "EUR")
    assert registry.get_sample_value(REVENUE, {"currency": "EUR"}) == 5000.0
    assert registry.get_sample_value(REVENUE, {"currency": "EUR-refund"}) == 1700.0


def test_negative_revenue_points_to_record_refund(
    metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """A negative revenue amount raises InvalidAmountError that names record_refund."""
    before = generate_latest(registry)
    with pytest.raises(InvalidAmountError, match=r"got -500; .*record_refund\(500, 'EUR'\)"):
        metrics.record_revenue(-500, "EUR")
    assert generate_latest(registry) == before


def test_negative_refund_asks_for_a_positive_amount(metrics: BusinessMetrics) -> None:
    """A negative refund amount raises InvalidAmountError asking for the positive amount."""
    with pytest.raises(
        InvalidAmountError, match="got -500; pass the refunded amount as a positive"
    ):
        metrics.record_refund(-500, "EUR")


@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_amounts_above_2_53_are_rejected(metrics: BusinessMetrics, record: str) -> None:
    """An amount that a float64 sample could not hold exactly raises InvalidAmountError."""
    getattr(metrics, record)(MAX_AMOUNT_CENTS, "EUR")
    with pytest.raises(InvalidAmountError, match="at most 2\\*\\*53"):
        getattr(metrics, record)(MAX_AMOUNT_CENTS + 1, "EUR")


@pytest.mark.parametrize(
    "amount", [True, False, 19.99, 1999.0, decimal.Decimal(1999), "1999", None]
)
@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_non_int_amounts_raise_type_error(
    metrics: BusinessMetrics, registry: CollectorRegistry, record: str, amount: object
) -> None:
    """bool, float, Decimal, str and None amounts raise TypeError naming amount_cents."""
    before = generate_latest(registry)
    with pytest.raises(TypeError, match=r"^amount_cents must be an int") as raised:
        getattr(metrics, record)(amount, "EUR")
    assert repr(amount) in str(raised.value)
    assert generate_latest(registry) == before


def test_int_subclasses_are_counted_as_ints(
    metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """An int subclass other than bool, such as an IntEnum member, is a valid amount."""

    class Price(int):
        pass

    metrics.record_revenue(Price(250), "EUR")
    assert registry.get_sample_value(REVENUE, {"currency": "EUR"}) == 250.0


@pytest.mark.parametrize(
    ("amount", "recorded"), [(HostileInt(250), 250.0), (HostileInt(2**53), 2.0**53)]
)
@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_int_subclasses_are_counted_as_their_value(
    metrics: BusinessMetrics,
    registry: CollectorRegistry,
    record: str,
    amount: HostileInt,
    recorded: float,
) -> None:
    """An int subclass whose __int__ and comparisons lie is counted as the int it holds."""
    getattr(metrics, record)(amount, "EUR")
    label = "EUR-refund" if record == "record_refund" else "EUR"
    assert registry.get_sample_value(REVENUE, {"currency": label}) == recorded


@pytest.mark.parametrize("amount", [HostileInt(-5), HostileInt(2**53 + 1)])
@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_int_subclasses_are_checked_as_their_value(
    metrics: BusinessMetrics, registry: CollectorRegistry, record: str, amount: HostileInt
) -> None:
    """An int subclass whose comparisons lie is refused for the int it holds, with no series."""
    before = generate_latest(registry)
    with pytest.raises(InvalidAmountError, match=f"got {int.__int__(amount)}"):
        getattr(metrics, record)(amount, "EUR")
    assert generate_latest(registry) == before


@pytest.mark.parametrize("amount", [10**5000, -(10**5000)], ids=["10**5000", "-10**5000"])
@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_enormous_amounts_raise_invalid_amount_error(
    metrics: BusinessMetrics, record: str, amount: int
) -> None:
    """An int too long to print raises InvalidAmountError naming its size, not a bare error."""
    with pytest.raises(InvalidAmountError, match="got an int of 16610 bits"):
        getattr(metrics, record)(amount, "EUR")


@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_a_str_subclass_cannot_grow_the_spelling_cache(
    metrics: BusinessMetrics, registry: CollectorRegistry, record: str
) -> None:
    """10,000 calls with a str subclass that hashes anew each time keep memory flat."""
    currency = HostileStr("eur")
    getattr(metrics, record)(1, currency)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(10_000):
            getattr(metrics, record)(1, currency)
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert grown < 10_000
    label = "EUR-refund" if record == "record_refund" else "EUR"
    assert business_series(registry)[key(REVENUE, "currency", label)] == 10_001.0


@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_a_str_subclass_is_exported_as_its_value(
    metrics: BusinessMetrics, registry: CollectorRegistry, record: str
) -> None:
    """A str subclass whose upper() and __str__ lie adds to the series of the code it holds."""
    for _ in range(100):
        getattr(metrics, record)(1, HostileStr("usd"))
    with pytest.raises(InvalidLabelError, match="got 'zzz'"):
        getattr(metrics, record)(1, HostileStr("zzz"))
    label = "USD-refund" if record == "record_refund" else "USD"
    revenue = {k: v for k, v in business_series(registry).items() if k[0] == REVENUE}
    assert revenue == {key(REVENUE, "currency", label): 100.0}


@pytest.mark.parametrize(
    ("currency", "error"),
    [(UserString("EUR"), TypeError), (impostor("zzz", "EUR"), InvalidLabelError)],
    ids=["UserString", "impostor"],
)
@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_accepting_a_currency_does_not_depend_on_history(
    metrics: BusinessMetrics, record: str, currency: object, error: type[Exception]
) -> None:
    """A currency refused on a fresh instance is still refused once "EUR" was recorded."""
    with pytest.raises(error, match=r"^currency must be"):
        getattr(metrics, record)(1, currency)
    getattr(metrics, record)(1, "EUR")
    with pytest.raises(error, match=r"^currency must be"):
        getattr(metrics, record)(1, currency)


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        (Proxy(250), "EUR", r"^amount_cents must be an int"),
        (250, Proxy("EUR"), r"^currency must be a str"),
        (Proxy(250), Proxy("EUR"), r"^currency must be a str"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_proxies_are_refused_with_the_library_s_error(
    metrics: BusinessMetrics,
    registry: CollectorRegistry,
    record: str,
    amount: object,
    currency: object,
    message: str,
) -> None:
    """A proxy that claims the class of an int or str is refused with a TypeError of ours."""
    before = generate_latest(registry)
    with pytest.raises(TypeError, match=message):
        getattr(metrics, record)(amount, currency)
    assert generate_latest(registry) == before


@pytest.mark.parametrize(
    ("record", "value"),
    [
        ("record_login", impostor("zzz", "success")),
        ("record_order_event", impostor("zzz", "created")),
        ("record_login", UserString("success")),
        ("record_order_event", UserString("created")),
        ("record_login", Proxy("sucess")),
        ("record_order_event", Proxy("complete")),
    ],
    ids=[
        "outcome-impostor",
        "status-impostor",
        "outcome-UserString",
        "status-UserString",
        "outcome-proxy",
        "status-proxy",
    ],
)
def test_label_lookalikes_are_rejected(
    metrics: BusinessMetrics, registry: CollectorRegistry, record: str, value: object
) -> None:
    """A value that only hashes or compares like an outcome or status counts nothing."""
    before = generate_latest(registry)
    with pytest.raises(InvalidLabelError, match=r"^(outcome|status) must be"):
        getattr(metrics, record)(value)
    assert generate_latest(registry) == before


@pytest.mark.parametrize(
    ("record", "value"),
    [("record_login", HostileStr("failure_2fa")), ("record_order_event", HostileStr("failed"))],
)
def test_label_str_subclasses_count_as_their_value(
    metrics: BusinessMetrics, registry: CollectorRegistry, record: str, value: str
) -> None:
    """A str subclass that hashes anew on every call counts in the series of its value."""
    getattr(metrics, record)(value)
    name, label = (LOGINS, "outcome") if record == "record_login" else (ORDERS, "status")
    assert registry.get_sample_value(name, {label: str.__str__(value)}) == 1.0


BIG = 2**20


@pytest.mark.parametrize(
    ("record", "arguments", "error", "start"),
    [
        ("record_login", ("x" * BIG,), InvalidLabelError, "'xxx"),
        ("record_order_event", (["x"] * BIG,), InvalidLabelError, "list ['x', 'x'"),
        ("record_revenue", (1, "E" * BIG), InvalidLabelError, "'EEE"),
        ("record_refund", (1, b"E" * BIG), TypeError, "bytes b'EEE"),
        ("record_revenue", ("1" * BIG, "EUR"), TypeError, "str '111"),
        ("record_refund", (-(10**4000), "EUR"), InvalidAmountError, "an int of 13288 bits"),
    ],
    ids=["outcome", "status", "currency", "currency-bytes", "amount-str", "amount-int"],
)
def test_messages_show_a_bounded_part_of_the_value(
    metrics: BusinessMetrics,
    record: str,
    arguments: tuple[object, ...],
    error: type[Exception],
    start: str,
) -> None:
    """A huge outcome, status, currency or amount is cut short in the error message."""
    with pytest.raises(error) as raised:
        getattr(metrics, record)(*arguments)
    message = str(raised.value)
    assert f"got {start}" in message
    assert len(message) < SHOWN_CHARS + 300


@pytest.mark.parametrize("currency", ["", "XYZ", "EURO", "EU", "EUR-refund", "eur-REFUND", "ÉUR"])
@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_unknown_currencies_raise_invalid_label_error(
    metrics: BusinessMetrics, registry: CollectorRegistry, record: str, currency: str
) -> None:
    """Empty, unknown and suffixed currencies raise InvalidLabelError naming the value."""
    before = generate_latest(registry)
    expected = f"^currency must be one of the {len(ISO_CODES)} ISO 4217 codes that have a minor"
    with pytest.raises(InvalidLabelError, match=expected) as raised:
        getattr(metrics, record)(100, currency)
    assert repr(currency) in str(raised.value)
    assert generate_latest(registry) == before


def test_suffixed_currency_points_to_record_refund(metrics: BusinessMetrics) -> None:
    """Passing "EUR-refund" as a currency explains that record_refund does the suffix."""
    with pytest.raises(InvalidLabelError, match="record_refund"):
        metrics.record_revenue(100, "EUR-refund")


def test_non_ascii_look_alikes_are_rejected(metrics: BusinessMetrics) -> None:
    """A code that is USD only once non-ASCII letters are upper-cased is refused."""
    look_alike = "u\u017fd"
    assert look_alike.upper() == "USD"
    with pytest.raises(InvalidLabelError):
        metrics.record_revenue(100, look_alike)


@pytest.mark.parametrize("currency", [None, 978, b"EUR", ["EUR"]])
def test_non_str_currencies_raise_type_error(metrics: BusinessMetrics, currency: object) -> None:
    """A currency that is not a string raises TypeError naming currency and the value."""
    with pytest.raises(TypeError, match=r"^currency must be a str") as raised:
        metrics.record_revenue(100, currency)  # type: ignore[arg-type]
    assert repr(currency) in str(raised.value)


def test_every_iso_code_is_accepted_and_bounded(
    metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """Every code can be recorded, and revenue plus refunds make at most 2 x 165 series."""
    for code in ISO_CODES:
        metrics.record_revenue(1, code.lower())
        metrics.record_refund(1, code)
    revenue = [k for k in business_series(registry) if k[0] == REVENUE]
    assert len(revenue) == 2 * len(ISO_CODES) == 330


@pytest.mark.parametrize("code", NO_MINOR_UNIT_CODES)
@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
def test_codes_without_a_minor_unit_are_rejected(
    metrics: BusinessMetrics, registry: CollectorRegistry, record: str, code: str
) -> None:
    """Gold, XDR, XTS and the other codes without a minor unit raise and say why."""
    before = generate_latest(registry)
    with pytest.raises(InvalidLabelError, match=f"{code} has no minor unit in ISO 4217"):
        getattr(metrics, record)(100, code.lower())
    assert generate_latest(registry) == before


def test_second_instance_shares_the_counters(registry: CollectorRegistry) -> None:
    """Two instances on one registry use the same counters, so counts are never split."""
    first = BusinessMetrics(registry)
    second = BusinessMetrics(registry)
    first.record_login_success()
    second.record_login_success()
    assert second.logins_total is first.logins_total
    assert registry.get_sample_value(LOGINS, {"outcome": "success"}) == 2.0


@pytest.mark.parametrize(
    "squatter",
    [
        lambda r: Gauge("veza_business_orders_total", "x", registry=r),
        lambda r: Counter("veza_business_orders_total", "Other help.", ["status"], registry=r),
        lambda r: Counter(
            "veza_business_orders_total",
            "Marketplace orders by status transition.",
            ["state"],
            registry=r,
        ),
    ],
)
def test_conflicting_registration_is_refused(
    registry: CollectorRegistry, squatter: Callable[[CollectorRegistry], object]
) -> None:
    """A same-named collector of another type, help or labels raises a clear ValueError."""
    squatter(registry)
    with pytest.raises(ValueError, match="veza_business_orders_total is already registered"):
        BusinessMetrics(registry)


@pytest.mark.parametrize(
    ("squatter", "message"),
    [
        (
            lambda r: Gauge("veza_business_account_deletions_total", "x", registry=r),
            "veza_business_account_deletions_total is already registered",
        ),
        (
            lambda r: Gauge("veza_business_orders_created", "x", registry=r),
            "veza_business_orders_total cannot be registered: veza_business_orders_created",
        ),
    ],
)
def test_a_refusal_registers_nothing(
    registry: CollectorRegistry, squatter: Callable[[CollectorRegistry], Gauge], message: str
) -> None:
    """When any one of the four names is taken, none of the four counters is registered."""
    taken = squatter(registry)
    before = generate_latest(registry)
    with pytest.raises(ValueError, match=message):
        BusinessMetrics(registry)
    assert generate_latest(registry) == before
    assert list(registry._collector_to_names) == [taken]


def test_threads_count_exactly(metrics: BusinessMetrics, registry: CollectorRegistry) -> None:
    """8 threads x 20,000 calls each give exactly 160,000, even on first use of a currency."""
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(20_000):
            metrics.record_login_success()
            metrics.record_revenue(1, "eur")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.get_sample_value(LOGINS, {"outcome": "success"}) == 160_000.0
    assert registry.get_sample_value(REVENUE, {"currency": "EUR"}) == 160_000.0


def _exact_text(value: object) -> str | None:
    """Return the exact str that ``value`` holds, if it is a str or a UserString."""
    if isinstance(value, str):
        return str.__str__(value)
    return value.data if isinstance(value, UserString) else None


ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.decimals(allow_nan=False),
    st.text(max_size=12),
    st.binary(max_size=4),
    st.lists(st.text(max_size=3), max_size=2),
    st.builds(UserString, st.text(max_size=4)),
)


def _lookalikes(values: st.SearchStrategy[str], targets: list[str]) -> st.SearchStrategy[str]:
    """Return str subclasses of ``values``: hostile ones, and impostors of ``targets``."""
    return st.one_of(
        values.map(HostileStr),
        st.builds(impostor, values, st.sampled_from(targets)),
    )


SPELLINGS = st.sampled_from(ISO_CODES).flatmap(
    lambda code: st.sampled_from([code, code.lower(), code.title(), code + "-refund"])
)
CURRENCIES = st.one_of(
    SPELLINGS,
    st.text(max_size=6),
    st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\u017f\u0131-", max_size=4
    ),
    _lookalikes(st.one_of(SPELLINGS, st.text(max_size=4)), ISO_CODES),
    ANYTHING,
)
AMOUNTS = st.one_of(
    st.integers(min_value=-(2**60), max_value=2**60),
    st.integers(min_value=-(2**60), max_value=2**60).map(HostileInt),
    ANYTHING,
)


@given(
    record=st.sampled_from(["record_revenue", "record_refund"]),
    amount=AMOUNTS,
    currency=CURRENCIES,
    seen=st.booleans(),
)
def test_money_is_recorded_exactly_or_not_at_all(
    record: str, amount: Any, currency: Any, *, seen: bool
) -> None:
    """Any amount and currency are recorded as their exact value or rejected, whatever came before.

    When ``seen``, the exact spelling that ``currency`` holds was recorded first.
    """
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry)
    spelling = _exact_text(currency)
    code = spelling.upper() if spelling is not None and spelling.isascii() else None
    if seen and code in ISO_CODES:
        getattr(metrics, record)(1, spelling)
    valid_amount = isinstance(amount, int) and not isinstance(amount, bool)
    value = int.__int__(amount) if valid_amount else None
    valid = (
        isinstance(currency, str)
        and code in ISO_CODES
        and value is not None
        and 0 <= value <= MAX_AMOUNT_CENTS
    )
    before = business_series(registry)
    if not valid:
        exposition = generate_latest(registry)
        with pytest.raises((TypeError, InvalidAmountError, InvalidLabelError)):
            getattr(metrics, record)(amount, currency)
        assert generate_latest(registry) == exposition
        return
    getattr(metrics, record)(amount, currency)
    assert code is not None
    assert value is not None
    label = code + ("-refund" if record == "record_refund" else "")
    series = key(REVENUE, "currency", label)
    expected = before if value == 0 else {**before, series: before.get(series, 0.0) + value}
    assert business_series(registry) == expected


LABEL_VALUES = [member.value for member in [*LoginOutcome, *OrderStatus]]
LABEL_INPUTS = st.one_of(
    st.sampled_from([*LoginOutcome, *OrderStatus]),
    st.sampled_from(LABEL_VALUES),
    st.sampled_from(LABEL_VALUES).map(str.upper),
    _lookalikes(st.one_of(st.sampled_from(LABEL_VALUES), st.text(max_size=4)), LABEL_VALUES),
    ANYTHING,
)


@given(value=LABEL_INPUTS)
def test_labels_are_recorded_exactly_or_not_at_all(value: Any) -> None:
    """Any outcome or status is either counted once in its own series or changes nothing."""
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry)
    cases: list[tuple[Callable[[Any], None], type[LoginOutcome | OrderStatus], str, str]]
    cases = [
        (metrics.record_login, LoginOutcome, LOGINS, "outcome"),
        (metrics.record_order_event, OrderStatus, ORDERS, "status"),
    ]
    for record, enum, name, label in cases:
        before = business_series(registry)
        allowed = {member.value for member in enum}
        if isinstance(value, str) and str.__str__(value) in allowed:
            record(value)
            assert business_series(registry) == {
                **before,
                key(name, label, str.__str__(value)): 1.0,
            }
        else:
            exposition = generate_latest(registry)
            with pytest.raises(InvalidLabelError):
                record(value)
            assert generate_latest(registry) == exposition


# Objects that claim int or str through __class__, as mocks and lazy proxies do, with the
# exact str they stand for: recording that str first must not change their answer.
MONEY_LIARS = [
    pytest.param(Liar(int, -1_000_000), "GBP", "GBP", "amount_cents", id="int-liar-negative"),
    pytest.param(Liar(int, math.nan), "GBP", "GBP", "amount_cents", id="int-liar-nan"),
    pytest.param(lazy(1999), "EUR", "EUR", "amount_cents", id="LocalProxy-amount"),
    pytest.param(1999, Liar(str, "EUR"), "EUR", "currency", id="str-liar"),
    pytest.param(1999, lazy("EUR"), "EUR", "currency", id="LocalProxy-currency"),
    pytest.param(1999, lazy("eur"), "eur", "currency", id="LocalProxy-lower-case"),
]
LABEL_LIARS = [
    pytest.param(
        "record_login",
        Liar(str, "failure_other", equal=True),
        "failure_other",
        id="str-liar-outcome",
    ),
    pytest.param(
        "record_login",
        Liar(LoginOutcome, LoginOutcome.FAILURE_OTHER, equal=True),
        "failure_other",
        id="member-liar-outcome",
    ),
    pytest.param(
        "record_login",
        class_liar(str, "failure_other"),
        "failure_other",
        id="metaclass-liar-outcome",
    ),
    pytest.param(
        "record_login",
        class_liar(LoginOutcome, LoginOutcome.FAILURE_OTHER),
        "failure_other",
        id="metaclass-liar-member-outcome",
    ),
    pytest.param("record_login", lazy("failure_other"), "failure_other", id="LocalProxy-outcome"),
    pytest.param(
        "record_login",
        lazy(LoginOutcome.FAILURE_OTHER),
        "failure_other",
        id="LocalProxy-member-outcome",
    ),
    pytest.param(
        "record_order_event",
        Liar(str, "failed", equal=True),
        "failed",
        id="str-liar-status",
    ),
    pytest.param(
        "record_order_event",
        Liar(OrderStatus, OrderStatus.FAILED, equal=True),
        "failed",
        id="member-liar-status",
    ),
    pytest.param(
        "record_order_event",
        class_liar(str, "failed"),
        "failed",
        id="metaclass-liar-status",
    ),
    pytest.param(
        "record_order_event",
        class_liar(OrderStatus, OrderStatus.FAILED),
        "failed",
        id="metaclass-liar-member-status",
    ),
    pytest.param("record_order_event", lazy("failed"), "failed", id="LocalProxy-status"),
    pytest.param(
        "record_order_event",
        lazy(OrderStatus.FAILED),
        "failed",
        id="LocalProxy-member-status",
    ),
]


def _recorders(
    where: str, metrics: BusinessMetrics, registry: CollectorRegistry
) -> tuple[Any, CollectorRegistry]:
    """Return the module's helpers and the default registry, or ``metrics`` and ``registry``."""
    if where == "module":
        return veza_business_metrics, REGISTRY
    return metrics, registry


@pytest.mark.parametrize(("amount", "currency", "spelling", "argument"), MONEY_LIARS)
@pytest.mark.parametrize("record", ["record_revenue", "record_refund"])
@pytest.mark.parametrize("where", ["instance", "module"])
def test_money_lookalikes_are_refused_whatever_came_before(
    metrics: BusinessMetrics,
    registry: CollectorRegistry,
    where: str,
    record: str,
    amount: object,
    currency: object,
    spelling: str,
    argument: str,
) -> None:
    """A claimed int or str raises the same TypeError before and after its currency is seen."""
    recorders, counted_on = _recorders(where, metrics, registry)
    helper = getattr(recorders, record)
    claimed = amount if argument == "amount_cents" else currency
    message = rf"^{argument} must be an? (int|str) .*, got {type(claimed).__name__} "
    series = business_series(counted_on)
    with pytest.raises(TypeError, match=message) as unseen:
        helper(amount, currency)
    assert business_series(counted_on) == series
    helper(1, spelling)
    series = business_series(counted_on)
    with pytest.raises(TypeError, match=message) as seen:
        helper(amount, currency)
    assert str(seen.value) == str(unseen.value)
    assert business_series(counted_on) == series


@pytest.mark.parametrize(("record", "value", "twin"), LABEL_LIARS)
@pytest.mark.parametrize("where", ["instance", "module"])
def test_label_lookalikes_are_refused_whatever_came_before(
    metrics: BusinessMetrics,
    registry: CollectorRegistry,
    where: str,
    record: str,
    value: object,
    twin: str,
) -> None:
    """A lookalike outcome or status with a lying hash is refused before and after its twin."""
    recorders, counted_on = _recorders(where, metrics, registry)
    helper = getattr(recorders, record)
    message = rf"^(outcome|status) must be .*, got {type(value).__name__} "
    series = business_series(counted_on)
    with pytest.raises(InvalidLabelError, match=message) as unseen:
        helper(value)
    assert business_series(counted_on) == series
    helper(twin)
    series = business_series(counted_on)
    with pytest.raises(InvalidLabelError, match=message) as seen:
        helper(value)
    assert str(seen.value) == str(unseen.value)
    assert business_series(counted_on) == series


def _answer(
    record: Callable[..., None], registry: CollectorRegistry, *arguments: object
) -> tuple[type[Exception], str] | dict[Key, float]:
    """Return what recording ``arguments`` did: the error raised, or the series it moved.

    A moved series is given with its new value: a difference of floats past 2**53 would
    not be the amount added.
    """
    before = business_series(registry)
    try:
        record(*arguments)
    except (TypeError, ValueError) as error:
        assert business_series(registry) == before
        return type(error), str(error)
    after = business_series(registry)
    return {k: v for k, v in after.items() if v != before.get(k, 0.0)}


# The forms that an amount, a currency or a label value may take, by name: Hypothesis
# draws and shows the name, since its printer trusts __class__ and would call int's
# methods on an object that only claims int.
AMOUNT_FORMS: dict[str, Callable[[int], object]] = {
    "int": lambda value: value,
    "HostileInt": HostileInt,
    "float": float,
    "bool": lambda _: True,
    "int-liar": lambda value: Liar(int, value),
    "int-liar-nan": lambda _: Liar(int, math.nan),
    "LocalProxy": lazy,
}
CURRENCY_FORMS: dict[str, Callable[[str], object]] = {
    "str": lambda spelling: spelling,
    "HostileStr": HostileStr,
    "impostor": lambda spelling: impostor("zzz", spelling),
    "UserString": UserString,
    "str-liar": lambda spelling: Liar(str, spelling),
    "str-liar-equal": lambda spelling: Liar(str, spelling, equal=True),
    "LocalProxy": lazy,
}
LABEL_FORMS: dict[str, Callable[[LoginOutcome | OrderStatus], object]] = {
    "member": lambda member: member,
    "value": lambda member: member.value,
    "HostileStr": lambda member: HostileStr(member.value),
    "impostor": lambda member: impostor("zzz", member.value),
    "UserString": lambda member: UserString(member.value),
    "str-liar": lambda member: Liar(str, member.value, equal=True),
    "member-liar": lambda member: Liar(type(member), member, equal=True),
    "metaclass-liar": lambda member: class_liar(str, member.value),
    "metaclass-liar-member": lambda member: class_liar(type(member), member),
    "LocalProxy": lambda member: lazy(member.value),
    "LocalProxy-member": lazy,
}


@given(
    amount=st.one_of(
        st.integers(min_value=-(2**54), max_value=2**54),
        st.sampled_from([0, 1, 1999, -1, MAX_AMOUNT_CENTS, MAX_AMOUNT_CENTS + 1]),
    ),
    amount_form=st.sampled_from(sorted(AMOUNT_FORMS)),
    spelling=SPELLINGS.filter(lambda s: not s.endswith("-refund")),
    currency_form=st.sampled_from(sorted(CURRENCY_FORMS)),
)
def test_money_answers_do_not_depend_on_history(
    amount: int, amount_form: str, spelling: str, currency_form: str
) -> None:
    """Any form of an amount and a currency gets one answer, whether or not it was seen before.

    The answer is the error's type and message, or the series moved and their new values;
    both helpers raise the same type of error or count the same amount.
    """
    arguments = (AMOUNT_FORMS[amount_form](amount), CURRENCY_FORMS[currency_form](spelling))
    kinds = []
    for record in ("record_revenue", "record_refund"):
        answers = []
        for seen in (False, True):
            registry = CollectorRegistry()
            metrics = BusinessMetrics(registry)
            if seen:
                metrics.record_revenue(1, spelling)
                metrics.record_refund(1, spelling)
            answers.append(_answer(getattr(metrics, record), registry, *arguments))
        fresh, after_seen = answers
        # Seen, the series held the 1 recorded first: a float adds it in either order.
        assert after_seen == (
            fresh if isinstance(fresh, tuple) else {k: v + 1 for k, v in fresh.items()}
        )
        kinds.append(fresh[0] if isinstance(fresh, tuple) else sorted(fresh.values()))
    assert kinds[0] == kinds[1]


@given(
    member=st.sampled_from([*LoginOutcome, *OrderStatus]),
    form=st.sampled_from(sorted(LABEL_FORMS)),
    seen=st.booleans(),
)
def test_label_answers_are_exact_and_do_not_depend_on_history(
    member: LoginOutcome | OrderStatus, form: str, *, seen: bool
) -> None:
    """Only a str or a member counts, as its exact value, whether or not that value was seen."""
    value = LABEL_FORMS[form](member)
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry)
    cases: list[tuple[Callable[[Any], None], type[LoginOutcome | OrderStatus], str, str]] = [
        (metrics.record_login, LoginOutcome, LOGINS, "outcome"),
        (metrics.record_order_event, OrderStatus, ORDERS, "status"),
    ]
    for record, enum, name, label in cases:
        allowed = {m.value for m in enum}
        if seen:
            for twin in allowed:
                record(twin)
        answer = _answer(record, registry, value)
        # type(), unlike isinstance(), tells a str from an object that claims to be one.
        if issubclass(type(value), str) and str.__str__(value) in allowed:
            assert answer == {key(name, label, str.__str__(value)): 2.0 if seen else 1.0}
        else:
            assert isinstance(answer, tuple)
            assert answer[0] is InvalidLabelError


@pytest.fixture
def multiprocess_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Put prometheus_client in multiprocess mode in this process, on a new directory."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())  # type: ignore[no-untyped-call]
    return tmp_path


def test_multiprocess_mode_refuses_an_isolated_registry(
    multiprocess_mode: Path, registry: CollectorRegistry
) -> None:
    """In multiprocess mode another registry raises MultiprocessError and registers nothing."""
    with pytest.raises(MultiprocessError, match="cannot count in isolation in multiprocess"):
        BusinessMetrics(registry)
    assert list(registry._collector_to_names) == []
    assert list(multiprocess_mode.iterdir()) == []


@pytest.mark.parametrize("unset", [False, True])
def test_multiprocess_mode_names_a_missing_directory(
    multiprocess_mode: Path,
    monkeypatch: pytest.MonkeyPatch,
    unset: bool,  # noqa: FBT001
) -> None:
    """A multiprocess directory that is gone, or unset since import, is named in the error."""
    missing = multiprocess_mode / "gone"
    if unset:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    else:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(missing))
    shown = "None" if unset else repr(str(missing))
    with pytest.raises(
        MultiprocessError, match=f"^PROMETHEUS_MULTIPROC_DIR is {re.escape(shown)},"
    ):
        BusinessMetrics(REGISTRY)


@pytest.mark.usefixtures("multiprocess_mode")
def test_multiprocess_mode_accepts_the_default_registry() -> None:
    """With its directory present, multiprocess mode accepts the default registry."""
    assert BusinessMetrics(REGISTRY).logins_total is BusinessMetrics(REGISTRY).logins_total
