"""Validation, then a cached child, then ``inc()``: the record path of every helper."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from prometheus_client import REGISTRY, Counter, values

from veza_business_metrics._currencies import MINOR_UNITS, NO_MINOR_UNIT
from veza_business_metrics._errors import InvalidAmountError, InvalidLabelError, MultiprocessError
from veza_business_metrics._labels import LoginOutcome, OrderStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    from prometheus_client.registry import CollectorRegistry

    from veza_business_metrics._labels import LoginOutcomeValue, OrderStatusValue

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
    if path is None or not Path(path).is_dir():
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
    return InvalidLabelError(f"{_LABEL_RULES[labels]}, got {value!r}")


def _checked_amount(amount_cents: object, currency: object, *, refund: bool) -> int:
    """Return ``amount_cents`` as an int once it is a valid amount of minor units.

    Raises:
        TypeError: If it is not an int, or is a bool.
        InvalidAmountError: If it is negative or above ``MAX_AMOUNT_CENTS``.
    """
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int):
        msg = (
            "amount_cents must be an int number of minor currency units (cents),"
            f" got {type(amount_cents).__name__} {amount_cents!r}"
        )
        raise TypeError(msg)
    if amount_cents < 0:
        if refund:
            hint = "pass the refunded amount as a positive number"
        else:
            hint = f"record a refund with record_refund({-amount_cents}, {currency!r})"
        msg = f"amount_cents must be 0 or more, got {amount_cents}; {hint}"
        raise InvalidAmountError(msg)
    if amount_cents > MAX_AMOUNT_CENTS:
        msg = (
            f"amount_cents must be at most 2**53 ({MAX_AMOUNT_CENTS}) to stay exact"
            f" as a sample value, got {amount_cents}"
        )
        raise InvalidAmountError(msg)
    return int(amount_cents)


def canonical_currency(currency: object) -> str:
    """Return the upper-case ISO 4217 code that ``currency`` spells in any case.

    Raises:
        TypeError: If it is not a string.
        InvalidLabelError: If it is not an ISO 4217 code with a minor unit.
    """
    if not isinstance(currency, str):
        msg = f"currency must be a str such as 'EUR', got {type(currency).__name__} {currency!r}"
        raise TypeError(msg)
    # isascii() keeps letters such as the long s, which upper() maps to "S", out.
    code = currency.upper() if currency.isascii() else ""
    if code in MINOR_UNITS:
        return code
    if code in NO_MINOR_UNIT:
        hint = (
            f"{code} has no minor unit in ISO 4217: it is a precious metal, a unit of"
            " account or a code for testing, not money that a marketplace settles"
        )
    elif currency.upper().endswith(REFUND_SUFFIX.upper()):
        hint = "record refunds with record_refund(amount_cents, 'EUR') instead of a suffix"
    else:
        hint = "matched in any case, e.g. 'EUR', 'usd'"
    msg = (
        f"currency must be one of the {len(MINOR_UNITS)} ISO 4217 codes that have a minor"
        f" unit, got {currency!r}; {hint}"
    )
    raise InvalidLabelError(msg)


class Recorder:
    """Validate business events, then count them on the four counters given.

    Args:
        logins_total: The counter of logins by ``outcome``.
        orders_total: The counter of order transitions by ``status``.
        revenue_cents_total: The counter of amounts by ``currency``.
        account_deletions_total: The counter of account deletions.
    """

    __slots__ = (
        "_completed",
        "_created",
        "_failed",
        "_failure_2fa",
        "_failure_credentials",
        "_failure_locked",
        "_failure_other",
        "_failure_unverified",
        "_login_children",
        "_login_members",
        "_order_children",
        "_order_members",
        "_refund_children",
        "_refunded",
        "_revenue_children",
        "_success",
        "account_deletions_total",
        "logins_total",
        "orders_total",
        "revenue_cents_total",
    )

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
        self._login_members: dict[str, Counter] = {
            outcome: self.logins_total.labels(outcome.value) for outcome in LoginOutcome
        }
        self._order_members: dict[str, Counter] = {
            status: self.orders_total.labels(status.value) for status in OrderStatus
        }
        # A member would also find its child in the str-keyed dict, but CPython looks up
        # a str subclass on a slower path; a dict per key type keeps both inputs fast.
        self._login_children = {o.value: self._login_members[o] for o in LoginOutcome}
        self._order_children = {s.value: self._order_members[s] for s in OrderStatus}
        # Keyed by the caller's spelling ("eur", "EUR"), so only validated spellings enter.
        self._revenue_children: dict[str, Counter] = {}
        self._refund_children: dict[str, Counter] = {}
        self._success = self._login_members[LoginOutcome.SUCCESS]
        self._failure_credentials = self._login_members[LoginOutcome.FAILURE_CREDENTIALS]
        self._failure_unverified = self._login_members[LoginOutcome.FAILURE_UNVERIFIED]
        self._failure_locked = self._login_members[LoginOutcome.FAILURE_LOCKED]
        self._failure_2fa = self._login_members[LoginOutcome.FAILURE_2FA]
        self._failure_other = self._login_members[LoginOutcome.FAILURE_OTHER]
        self._created = self._order_members[OrderStatus.CREATED]
        self._completed = self._order_members[OrderStatus.COMPLETED]
        self._refunded = self._order_members[OrderStatus.REFUNDED]
        self._failed = self._order_members[OrderStatus.FAILED]

    def record_login(self, outcome: LoginOutcome | LoginOutcomeValue) -> None:
        """Count one login attempt that ended with ``outcome``.

        Args:
            outcome: A ``LoginOutcome`` member or its exact string value.

        Raises:
            InvalidLabelError: If ``outcome`` is anything else.
        """
        try:
            child = (
                self._login_members if outcome.__class__ is LoginOutcome else self._login_children
            )[outcome]
        except (KeyError, TypeError):
            raise label_error(LoginOutcome, outcome) from None
        child.inc()

    def record_login_success(self) -> None:
        """Count one successful login."""
        self._success.inc()

    def record_login_failure_credentials(self) -> None:
        """Count one login refused for a wrong password or unknown user."""
        self._failure_credentials.inc()

    def record_login_failure_unverified(self) -> None:
        """Count one login refused because the email address is not verified."""
        self._failure_unverified.inc()

    def record_login_failure_locked(self) -> None:
        """Count one login refused because the account is locked."""
        self._failure_locked.inc()

    def record_login_failure_2fa(self) -> None:
        """Count one login that failed its second factor."""
        self._failure_2fa.inc()

    def record_login_failure_other(self) -> None:
        """Count one login that failed for any other reason."""
        self._failure_other.inc()

    def record_order_event(self, status: OrderStatus | OrderStatusValue) -> None:
        """Count one marketplace order moving to ``status``.

        Args:
            status: An ``OrderStatus`` member or its exact string value.

        Raises:
            InvalidLabelError: If ``status`` is anything else.
        """
        try:
            child = (
                self._order_members if status.__class__ is OrderStatus else self._order_children
            )[status]
        except (KeyError, TypeError):
            raise label_error(OrderStatus, status) from None
        child.inc()

    def record_order_created(self) -> None:
        """Count one order created."""
        self._created.inc()

    def record_order_completed(self) -> None:
        """Count one order whose payment completed."""
        self._completed.inc()

    def record_order_refunded(self) -> None:
        """Count one order refunded."""
        self._refunded.inc()

    def record_order_failed(self) -> None:
        """Count one order whose payment the provider rejected."""
        self._failed.inc()

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
        try:
            child = self._revenue_children[currency]
        except (KeyError, TypeError):
            child = None
        # A payment webhook's call, a positive int in a currency already seen, skips the
        # general path below: recording revenue is on every settled order's hot path.
        if (
            child is not None
            and amount_cents.__class__ is int
            and 0 < amount_cents <= MAX_AMOUNT_CENTS
        ):
            child.inc(amount_cents)
        else:
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
        self.account_deletions_total.inc()

    def _add_money(
        self, children: dict[str, Counter], amount_cents: int, currency: str, *, refund: bool
    ) -> None:
        amount = _checked_amount(amount_cents, currency, refund=refund)
        code = canonical_currency(currency)
        if not amount:
            return
        child = children.get(currency)
        if child is None:
            # Only validated spellings become keys: at most eight per currency code.
            label = code + REFUND_SUFFIX if refund else code
            child = children[currency] = self.revenue_cents_total.labels(label)
        child.inc(amount)
