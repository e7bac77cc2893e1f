"""The four business counters on one registry, behind validating ``record_*`` methods."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from prometheus_client import Counter

from veza_business_metrics._currencies import CURRENCY_CODES
from veza_business_metrics._errors import InvalidAmountError, InvalidLabelError
from veza_business_metrics._labels import LoginOutcome, OrderStatus

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from veza_business_metrics._labels import LoginOutcomeValue, OrderStatusValue

REFUND_SUFFIX: Final = "-refund"
# A sample value is a float64: past 2**53 whole cents stop being exact.
MAX_AMOUNT_CENTS: Final = 2**53

_ALLOWED_OUTCOMES: Final = ", ".join(repr(outcome.value) for outcome in LoginOutcome)
_ALLOWED_STATUSES: Final = ", ".join(repr(status.value) for status in OrderStatus)


def _get_or_create_counter(
    registry: CollectorRegistry, name: str, documentation: str, labelnames: tuple[str, ...]
) -> Counter:
    # prometheus_client has no public get-or-create (client_python#993). Reading the
    # registry's own index lets a module reload or re-import keep counting on the
    # counter that already holds the counts, instead of raising DuplicateTimeseries.
    existing = registry._names_to_collectors.get(name)  # noqa: SLF001
    if existing is None:
        return Counter(name, documentation, labelnames, registry=registry)
    if (
        not isinstance(existing, Counter)
        or existing._labelnames != labelnames  # noqa: SLF001
        or existing._documentation != documentation  # noqa: SLF001
    ):
        msg = (
            f"{name} is already registered on this registry by {existing!r}, which is not"
            f" a counter with help {documentation!r} and labels {labelnames!r}"
        )
        raise ValueError(msg)
    return existing


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


def _canonical_currency(currency: object) -> str:
    """Return the upper-case ISO 4217 code that ``currency`` spells in any case.

    Raises:
        TypeError: If it is not a string.
        InvalidLabelError: If it is not an active ISO 4217 alphabetic code.
    """
    if not isinstance(currency, str):
        msg = f"currency must be a str such as 'EUR', got {type(currency).__name__} {currency!r}"
        raise TypeError(msg)
    # isascii() keeps letters such as the long s, which upper() maps to "S", out.
    code = currency.upper() if currency.isascii() else ""
    if code in CURRENCY_CODES:
        return code
    if currency.upper().endswith(REFUND_SUFFIX.upper()):
        hint = "record refunds with record_refund(amount_cents, 'EUR') instead of a suffix"
    else:
        hint = "matched in any case, e.g. 'EUR', 'usd'"
    msg = (
        f"currency must be one of the {len(CURRENCY_CODES)} active ISO 4217 alphabetic"
        f" codes, got {currency!r}; {hint}"
    )
    raise InvalidLabelError(msg)


class BusinessMetrics:
    """Hold the four business counters of one registry and record validated events on them.

    The module-level ``record_*`` functions are the methods of the instance bound to
    prometheus_client's default registry. Build your own instance on a fresh
    ``CollectorRegistry`` to record in isolation, for example in tests.

    Args:
        registry: The registry that holds the counters. A second instance on the same
            registry shares the counters already registered there.

    Raises:
        ValueError: If one of the four series names is already registered there as
            something other than the matching counter.
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

    def __init__(self, registry: CollectorRegistry) -> None:
        """Get or create the counters on ``registry`` and their zero series."""
        self.logins_total = _get_or_create_counter(
            registry,
            "veza_business_logins_total",
            "Logins broken down by outcome. Drives the auth-failure-spike alert.",
            ("outcome",),
        )
        self.orders_total = _get_or_create_counter(
            registry,
            "veza_business_orders_total",
            "Marketplace orders by status transition.",
            ("status",),
        )
        self.revenue_cents_total = _get_or_create_counter(
            registry,
            "veza_business_revenue_cents_total",
            "Cumulative platform revenue in minor units (e.g. EUR cents).",
            ("currency",),
        )
        self.account_deletions_total = _get_or_create_counter(
            registry,
            "veza_business_account_deletions_total",
            "Hard-delete + RGPD account erasures.",
            (),
        )
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
            msg = f"outcome must be a LoginOutcome or one of {_ALLOWED_OUTCOMES}, got {outcome!r}"
            raise InvalidLabelError(msg) from None
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
            msg = f"status must be an OrderStatus or one of {_ALLOWED_STATUSES}, got {status!r}"
            raise InvalidLabelError(msg) from None
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
            currency: An active ISO 4217 code in any case; it is exported upper case.

        Raises:
            TypeError: If ``amount_cents`` is not an int or ``currency`` not a str.
            InvalidAmountError: If ``amount_cents`` is negative or above 2**53.
            InvalidLabelError: If ``currency`` is not an active ISO 4217 code.
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
            currency: An active ISO 4217 code in any case, without any suffix.

        Raises:
            TypeError: If ``amount_cents`` is not an int or ``currency`` not a str.
            InvalidAmountError: If ``amount_cents`` is negative or above 2**53.
            InvalidLabelError: If ``currency`` is not an active ISO 4217 code.
        """
        self._add_money(self._refund_children, amount_cents, currency, refund=True)

    def record_account_deletion(self) -> None:
        """Count one account hard-deleted or erased under the GDPR."""
        self.account_deletions_total.inc()

    def _add_money(
        self, children: dict[str, Counter], amount_cents: int, currency: str, *, refund: bool
    ) -> None:
        amount = _checked_amount(amount_cents, currency, refund=refund)
        code = _canonical_currency(currency)
        if not amount:
            return
        child = children.get(currency)
        if child is None:
            # Only validated spellings become keys: at most eight per currency code.
            label = code + REFUND_SUFFIX if refund else code
            child = children[currency] = self.revenue_cents_total.labels(label)
        child.inc(amount)
