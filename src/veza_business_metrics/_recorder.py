"""Validation, then a cached child, then ``inc()``: the record path of every helper.

The cached child is a counter child's value, prometheus_client's private ``_value``,
whose ``inc()`` is what ``Counter.inc()`` calls once it has checked that the amount is
not negative and the counter has no labels left to fill: checks that validation made
already (docs/performance.md gives what skipping them saves). Tested on every minor
release of prometheus_client from 0.20 on.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final, NamedTuple

from prometheus_client import REGISTRY, Counter, values

from veza_business_metrics import _exemplars
from veza_business_metrics._currencies import MINOR_UNITS, NO_MINOR_UNIT
from veza_business_metrics._errors import (
    InvalidAmountError,
    InvalidLabelError,
    MultiprocessError,
    shown,
)
from veza_business_metrics._labels import LoginOutcome, OrderStatus

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Protocol

    from prometheus_client.registry import CollectorRegistry

    from veza_business_metrics._labels import LoginOutcomeValue, OrderStatusValue

    class Child(Protocol):
        """What the record path increments: a child's value, or a wrapped child.

        The wrapper attaches trace exemplars while they are enabled.
        """

        def inc(self, amount: float, /) -> None:
            """Add ``amount``."""


REFUND_SUFFIX: Final = "-refund"
# A sample value is a float64: past 2**53 whole cents stop being exact.
MAX_AMOUNT_CENTS: Final = 2**53

# What each closed set's error says: the argument, then what it allows.
_LABEL_RULES: Final = {
    LoginOutcome: "outcome must be a LoginOutcome or one of "
    + ", ".join(repr(o.value) for o in LoginOutcome),
    OrderStatus: "status must be an OrderStatus or one of "
    + ", ".join(repr(s.value) for s in OrderStatus),
}


class CounterSpec(NamedTuple):
    """What identifies a counter across languages: its name, help text and label names."""

    name: str
    documentation: str
    labelnames: tuple[str, ...]


def register_counters(registry: CollectorRegistry, specs: Sequence[CounterSpec]) -> list[Counter]:
    """Return the counters of ``specs`` on ``registry``, creating the missing ones.

    Every spec is checked before any counter is registered, so a refusal leaves the
    registry as it was.

    Args:
        registry: The registry that holds, or will hold, the counters.
        specs: The counters' names, help texts and label names.

    Raises:
        MultiprocessError: If prometheus_client is in multiprocess mode and either
            ``registry`` is not its default registry or the directory is missing.
        ValueError: If a name is already taken on ``registry`` by anything other than
            the counter of its spec.
    """
    _check_storage(registry)
    # prometheus_client has no public get-or-create (client_python#993). Reading the
    # registry's own index lets a module reload or re-import keep counting on the
    # counter that already holds the counts, instead of raising DuplicateTimeseries.
    taken = registry._names_to_collectors  # noqa: SLF001
    counters: list[Counter] = []
    for spec in specs:
        existing = taken.get(spec.name)
        if existing is None:
            counter = Counter(spec.name, spec.documentation, spec.labelnames, registry=None)
            clashes = sorted(taken.keys() & registry._get_names(counter))  # type: ignore[no-untyped-call]  # noqa: SLF001
            if clashes:
                msg = f"{spec.name} cannot be registered: {', '.join(clashes)} already taken"
                raise ValueError(msg)
        elif (
            not isinstance(existing, Counter)
            or existing._labelnames != spec.labelnames  # noqa: SLF001
            or existing._documentation != spec.documentation  # noqa: SLF001
        ):
            msg = (
                f"{spec.name} is already registered on this registry by {existing!r}, which"
                f" is not a counter with help {spec.documentation!r} and labels"
                f" {spec.labelnames!r}"
            )
            raise ValueError(msg)
        else:
            counter = existing
        counters.append(counter)
    for counter in counters:
        if counter not in registry._collector_to_names:  # noqa: SLF001
            registry.register(counter)
    return counters


def _check_storage(registry: CollectorRegistry) -> None:
    # prometheus_client picks its value class once, when it is first imported; its
    # _multiprocess flag is the only record of that choice.
    if not getattr(values.ValueClass, "_multiprocess", False):
        return
    if registry is not REGISTRY:
        msg = (
            f"BusinessMetrics({registry!r}) cannot count in isolation in multiprocess mode:"
            " prometheus_client keeps one file slot per series name and process, whatever"
            " the registry, so two instances would overwrite each other. Record on"
            " DEFAULT_METRICS, or unset PROMETHEUS_MULTIPROC_DIR for isolated instances"
        )
        raise MultiprocessError(msg)
    # prometheus_client still honours the deprecated lower-case name (with a warning).
    legacy = os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", legacy)
    # os.path, since importing pathlib would add about 1 ms to every host's startup.
    if path is None or not os.path.isdir(path):  # noqa: PTH112
        msg = (
            f"PROMETHEUS_MULTIPROC_DIR is {path!r}, which is not a directory: create it"
            " before the first metric is created, or unset the variable to count in this"
            " process only"
        )
        raise MultiprocessError(msg)


def label_error(labels: type[LoginOutcome | OrderStatus], value: object) -> InvalidLabelError:
    """Return the error for ``value``, which is not a member of ``labels`` nor its value.

    Args:
        labels: ``LoginOutcome`` or ``OrderStatus``.
        value: What the caller passed.
    """
    got = shown(value)
    # A lazy proxy's repr is its target's, so "got 'success'" alone would name an allowed
    # value: anything that is not a str also names the class that it really has.
    if not issubclass(type(value), str):
        got = f"{type(value).__name__} {got}"
    return InvalidLabelError(f"{_LABEL_RULES[labels]}, got {got}")


def _checked_amount(amount_cents: int, code: str, *, refund: bool) -> int:
    """Return ``amount_cents`` as an exact int once it is a valid amount of minor units.

    Raises:
        TypeError: If it is not an int, or is a bool.
        InvalidAmountError: If it is negative or above ``MAX_AMOUNT_CENTS``.
    """
    # type(), unlike isinstance(), cannot be fooled by a __class__ property, as mocks and
    # lazy proxies have.
    if type(amount_cents) is bool or not issubclass(type(amount_cents), int):
        msg = (
            "amount_cents must be an int number of minor currency units (cents),"
            f" got {type(amount_cents).__name__} {shown(amount_cents)}"
        )
        raise TypeError(msg)
    # A subclass may override __int__ or the comparisons; its exact int copy cannot lie,
    # so the value that is checked is the value that is counted.
    amount = amount_cents if type(amount_cents) is int else int.__int__(amount_cents)
    if amount < 0:
        if refund:
            hint = "pass the refunded amount as a positive number"
        else:
            hint = f"record a refund with record_refund({shown(-amount)}, {code!r})"
        msg = f"amount_cents must be 0 or more, got {shown(amount)}; {hint}"
        raise InvalidAmountError(msg)
    if amount > MAX_AMOUNT_CENTS:
        msg = (
            f"amount_cents must be at most 2**53 ({MAX_AMOUNT_CENTS}) to stay exact"
            f" as a sample value, got {shown(amount)}"
        )
        raise InvalidAmountError(msg)
    return amount


def canonical_currency(currency: object) -> str:
    """Return the upper-case ISO 4217 code that ``currency`` spells in any case.

    Raises:
        TypeError: If it is not a string.
        InvalidLabelError: If it is not an ISO 4217 code with a minor unit.
    """
    # type(), unlike isinstance(), cannot be fooled by a __class__ property.
    if not issubclass(type(currency), str):
        msg = (
            "currency must be a str such as 'EUR',"
            f" got {type(currency).__name__} {shown(currency)}"
        )
        raise TypeError(msg)
    # A subclass may override upper(), __str__ or __hash__; its exact str copy cannot.
    spelling = currency if type(currency) is str else str.__str__(currency)
    # isascii() keeps letters such as the long s, which upper() maps to "S", out.
    code = spelling.upper() if spelling.isascii() else ""
    if code in MINOR_UNITS:
        return code
    if code in NO_MINOR_UNIT:
        hint = (
            f"{code} has no minor unit in ISO 4217: it is a precious metal, a unit of"
            " account or a code for testing, not money that a marketplace settles"
        )
    elif spelling.upper().endswith(REFUND_SUFFIX.upper()):
        hint = "record refunds with record_refund(amount_cents, 'EUR') instead of a suffix"
    else:
        hint = "matched in any case, e.g. 'EUR', 'usd'"
    msg = (
        f"currency must be one of the {len(MINOR_UNITS)} ISO 4217 codes that have a minor"
        f" unit, got {shown(spelling)}; {hint}"
    )
    raise InvalidLabelError(msg)


def _child_by_value(
    children: dict[str, Child], labels: type[LoginOutcome | OrderStatus], value: object
) -> Child:
    # Only a str subclass gets here with a valid value; its exact str copy is what counts.
    if issubclass(type(value), str):
        child = children.get(str.__str__(value))
        if child is not None:
            return child
    raise label_error(labels, value)


class Recorder:
    """Validate business events, then count them on the four counters given.

    Args:
        logins_total: The counter of logins by ``outcome``.
        orders_total: The counter of order transitions by ``status``.
        revenue_cents_total: The counter of amounts by ``currency``.
        account_deletions_total: The counter of account deletions.
    """

    __slots__ = (
        "__weakref__",
        "_completed",
        "_created",
        "_deletions",
        "_failed",
        "_failure_2fa",
        "_failure_credentials",
        "_failure_locked",
        "_failure_other",
        "_failure_unverified",
        "_login_by_member",
        "_login_by_value",
        "_logins",
        "_order_by_member",
        "_order_by_value",
        "_orders",
        "_refund_children",
        "_refunded",
        "_revenue_children",
        "_success",
        "account_deletions_total",
        "logins_total",
        "orders_total",
        "revenue_cents_total",
    )
    # The record path increments these, which _wire() sets.
    _success: Child
    _failure_credentials: Child
    _failure_unverified: Child
    _failure_locked: Child
    _failure_2fa: Child
    _failure_other: Child
    _created: Child
    _completed: Child
    _refunded: Child
    _failed: Child
    _deletions: Child
    _login_by_value: dict[str, Child]
    _login_by_member: dict[str, Child]
    _order_by_value: dict[str, Child]
    _order_by_member: dict[str, Child]
    _revenue_children: dict[str, Child]
    _refund_children: dict[str, Child]

    def __init__(
        self,
        logins_total: Counter,
        orders_total: Counter,
        revenue_cents_total: Counter,
        account_deletions_total: Counter,
    ) -> None:
        """Create the zero series and the caches of children."""
        self.logins_total = logins_total
        self.orders_total = orders_total
        self.revenue_cents_total = revenue_cents_total
        self.account_deletions_total = account_deletions_total
        # Children are created up front so that every outcome and status is scraped
        # at 0 from the start: rate() and absent() then work before the first event.
        self._logins = {o.value: self.logins_total.labels(o.value) for o in LoginOutcome}
        self._orders = {s.value: self.orders_total.labels(s.value) for s in OrderStatus}
        _exemplars.register(self)

    def _wire(self, *, traced: bool) -> None:
        """Cache every child for the record path, wrapped to attach exemplars if ``traced``.

        Enabling or disabling exemplars swaps the cached children rather than have each
        call check whether they are enabled, so that disabled exemplars cost nothing.
        Each attribute is replaced whole, so that a call in another thread meanwhile
        increments a child either way.

        Args:
            traced: Whether trace exemplars are enabled.
        """
        wrap = _exemplars.traced if traced else _plain
        logins = {value: wrap(child) for value, child in self._logins.items()}
        orders = {value: wrap(child) for value, child in self._orders.items()}
        # A member and a str each find their child in a dict of their own type, which
        # CPython searches fastest.
        self._login_by_value = logins
        self._order_by_value = orders
        self._login_by_member = {o: logins[o.value] for o in LoginOutcome}
        self._order_by_member = {s: orders[s.value] for s in OrderStatus}
        # Keyed by the caller's exact spelling ("eur", "EUR") once it was validated, and
        # filled again by the next calls, with children wrapped or not as they find them.
        self._revenue_children = {}
        self._refund_children = {}
        self._success = logins[LoginOutcome.SUCCESS]
        self._failure_credentials = logins[LoginOutcome.FAILURE_CREDENTIALS]
        self._failure_unverified = logins[LoginOutcome.FAILURE_UNVERIFIED]
        self._failure_locked = logins[LoginOutcome.FAILURE_LOCKED]
        self._failure_2fa = logins[LoginOutcome.FAILURE_2FA]
        self._failure_other = logins[LoginOutcome.FAILURE_OTHER]
        self._created = orders[OrderStatus.CREATED]
        self._completed = orders[OrderStatus.COMPLETED]
        self._refunded = orders[OrderStatus.REFUNDED]
        self._failed = orders[OrderStatus.FAILED]
        self._deletions = wrap(self.account_deletions_total)

    def record_login(self, outcome: LoginOutcome | LoginOutcomeValue) -> None:
        """Count one login attempt that ended with ``outcome``.

        Args:
            outcome: A ``LoginOutcome`` member or its exact string value.

        Raises:
            InvalidLabelError: If ``outcome`` is anything else.
        """
        # Only an exact str or member is looked up as it is, so that no __hash__ or __eq__
        # but str's is asked. "is" on type() is the check that nothing can pass by lying:
        # a mock or lazy proxy claims a class through a __class__ property, and a
        # metaclass's __hash__ and __eq__ could find a dict keyed by class.
        kind = type(outcome)
        try:
            if kind is str:
                child = self._login_by_value[outcome]
            elif kind is LoginOutcome:
                child = self._login_by_member[outcome]
            else:
                child = _child_by_value(self._login_by_value, LoginOutcome, outcome)
        except KeyError:
            raise label_error(LoginOutcome, outcome) from None
        child.inc(1)

    def record_login_success(self) -> None:
        """Count one successful login."""
        self._success.inc(1)

    def record_login_failure_credentials(self) -> None:
        """Count one login refused for a wrong password or unknown user."""
        self._failure_credentials.inc(1)

    def record_login_failure_unverified(self) -> None:
        """Count one login refused because the email address is not verified."""
        self._failure_unverified.inc(1)

    def record_login_failure_locked(self) -> None:
        """Count one login refused because the account is locked."""
        self._failure_locked.inc(1)

    def record_login_failure_2fa(self) -> None:
        """Count one login that failed its second factor."""
        self._failure_2fa.inc(1)

    def record_login_failure_other(self) -> None:
        """Count one login that failed for any other reason."""
        self._failure_other.inc(1)

    def record_order_event(self, status: OrderStatus | OrderStatusValue) -> None:
        """Count one marketplace order moving to ``status``.

        Args:
            status: An ``OrderStatus`` member or its exact string value.

        Raises:
            InvalidLabelError: If ``status`` is anything else.
        """
        # Exact types only, for the reasons given in record_login.
        kind = type(status)
        try:
            if kind is str:
                child = self._order_by_value[status]
            elif kind is OrderStatus:
                child = self._order_by_member[status]
            else:
                child = _child_by_value(self._order_by_value, OrderStatus, status)
        except KeyError:
            raise label_error(OrderStatus, status) from None
        child.inc(1)

    def record_order_created(self) -> None:
        """Count one order created."""
        self._created.inc(1)

    def record_order_completed(self) -> None:
        """Count one order whose payment completed."""
        self._completed.inc(1)

    def record_order_refunded(self) -> None:
        """Count one order refunded."""
        self._refunded.inc(1)

    def record_order_failed(self) -> None:
        """Count one order whose payment the provider rejected."""
        self._failed.inc(1)

    def record_revenue(self, amount_cents: int, currency: str) -> None:
        """Add revenue settled by the payment provider, in minor units of ``currency``.

        Args:
            amount_cents: The settled amount in minor units, e.g. 1999 for 19.99 EUR.
                0 records nothing.
            currency: An ISO 4217 code with a minor unit, in any case; exported upper case.

        Raises:
            TypeError: If ``amount_cents`` is not an int or ``currency`` not a str.
            InvalidAmountError: If ``amount_cents`` is negative or above 2**53.
            InvalidLabelError: If ``currency`` is not an ISO 4217 code with a minor unit.
        """
        # A payment webhook's call, a positive int in a currency already seen, skips the
        # general path below: recording revenue is on every settled order's hot path. Only
        # exact types take it, so that no subclass's __hash__, __eq__ or comparisons can
        # find a child or pass for a valid amount there. type(), unlike __class__, cannot be
        # fooled by a property: a mock or lazy proxy that claims int or str would otherwise
        # be counted here once its currency was seen, though the general path refuses it.
        if (
            type(currency) is str
            and type(amount_cents) is int
            and 0 < amount_cents <= MAX_AMOUNT_CENTS
        ):
            try:
                child = self._revenue_children[currency]
            except KeyError:
                pass
            else:
                child.inc(amount_cents)
                return
        self._add_money(self._revenue_children, amount_cents, currency, refund=False)

    def record_refund(self, amount_cents: int, currency: str) -> None:
        """Add a refunded amount, exported as the ``<CUR>-refund`` revenue series.

        Net revenue is then ``{currency="EUR"}`` minus ``{currency="EUR-refund"}``.

        Args:
            amount_cents: The refunded amount in minor units, as a positive int.
                0 records nothing.
            currency: An ISO 4217 code with a minor unit, in any case, without a suffix.

        Raises:
            TypeError: If ``amount_cents`` is not an int or ``currency`` not a str.
            InvalidAmountError: If ``amount_cents`` is negative or above 2**53.
            InvalidLabelError: If ``currency`` is not an ISO 4217 code with a minor unit.
        """
        self._add_money(self._refund_children, amount_cents, currency, refund=True)

    def record_account_deletion(self) -> None:
        """Count one account hard-deleted or erased under the GDPR."""
        self._deletions.inc(1)

    def _add_money(
        self, children: dict[str, Child], amount_cents: int, currency: str, *, refund: bool
    ) -> None:
        code = canonical_currency(currency)
        amount = _checked_amount(amount_cents, code, refund=refund)
        if not amount:
            return
        # The fast path looks up exact strs only, so only they are worth a key; anything
        # else is keyed by its code. That bounds the keys at eight spellings per code.
        spelling = currency if type(currency) is str else code
        cached = children.get(spelling)
        if cached is None:
            label = code + REFUND_SUFFIX if refund else code
            # _wire() empties these caches when exemplars are enabled or disabled, after
            # the flag changed: a child cached from here on is wrapped as the flag says.
            wrap = _exemplars.traced if _exemplars.enabled else _plain
            cached = children[spelling] = wrap(self.revenue_cents_total.labels(label))
        cached.inc(amount)


def _plain(child: Counter) -> Child:
    value: Child = child._value  # noqa: SLF001
    return value
