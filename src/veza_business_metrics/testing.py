"""Measure how the business counters changed, in any test framework or none.

``MetricsDelta`` needs nothing but this package. With pytest, the fixtures
``business_metrics`` and ``business_metrics_delta`` of the plugin that the package
registers give one per test.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from veza_business_metrics._labels import LoginOutcome, OrderStatus
from veza_business_metrics._recorder import REFUND_SUFFIX, canonical_currency, label_error
from veza_business_metrics.metrics import (
    ACCOUNT_DELETIONS,
    DEFAULT_METRICS,
    LOGINS,
    ORDERS,
    REVENUE_CENTS,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prometheus_client import Counter

    from veza_business_metrics._recorder import CounterSpec
    from veza_business_metrics.metrics import BusinessMetrics

__all__ = ["Changes", "MetricsDelta"]


def _outcome(value: object) -> str:
    try:
        return LoginOutcome(value).value  # type: ignore[arg-type]
    except ValueError:
        raise label_error(LoginOutcome, value) from None


def _status(value: object) -> str:
    try:
        return OrderStatus(value).value  # type: ignore[arg-type]
    except ValueError:
        raise label_error(OrderStatus, value) from None


def _revenue_label(value: object) -> str:
    # Any spelling that record_revenue or record_refund accepts names its series here.
    if isinstance(value, str) and value[-len(REFUND_SUFFIX) :].lower() == REFUND_SUFFIX:
        return canonical_currency(value[: -len(REFUND_SUFFIX)]) + REFUND_SUFFIX
    return canonical_currency(value)


# Each kind of change: the BusinessMetrics attribute that counts it, its counter, and
# the function that turns an accepted spelling of a label value into the exported one.
_KINDS: Final[dict[str, tuple[str, CounterSpec, Callable[[object], str]]]] = {
    "logins": ("logins_total", LOGINS, _outcome),
    "orders": ("orders_total", ORDERS, _status),
    "revenue_cents": ("revenue_cents_total", REVENUE_CENTS, _revenue_label),
}


class Changes(Mapping[str, float]):
    """Changes by label value, looked up by any spelling that the recorders accept.

    A valid label value without a series has changed by 0; an invalid one raises the
    recorders' own error.
    """

    def __init__(self, changes: dict[str, float], label: Callable[[object], str]) -> None:
        """Hold ``changes``, keyed by exported label values, and the spelling rule."""
        self._changes = changes
        self._label = label

    def __getitem__(self, key: object) -> float:
        """Return the change of the series that ``key`` names, 0 if it has none.

        Raises:
            InvalidLabelError: If ``key`` is not an accepted label value.
            TypeError: If ``key`` is a currency that is not a str.
        """
        return self._changes.get(self._label(key), 0.0)

    def __contains__(self, key: object) -> bool:
        """Return whether the series that ``key`` names exists.

        Raises:
            InvalidLabelError: If ``key`` is not an accepted label value.
            TypeError: If ``key`` is a currency that is not a str.
        """
        return self._label(key) in self._changes

    def __iter__(self) -> Iterator[str]:
        """Iterate over the exported label values that have a series."""
        return iter(self._changes)

    def __len__(self) -> int:
        """Return how many series there are."""
        return len(self._changes)

    def __repr__(self) -> str:
        """Show the changes as a dict."""
        return repr(self._changes)


class MetricsDelta:
    """Report how the business counters changed since this object was created.

    Args:
        metrics: The instance to watch: ``DEFAULT_METRICS`` or an isolated one.
    """

    def __init__(self, metrics: BusinessMetrics = DEFAULT_METRICS) -> None:
        """Take the snapshot that changes are measured from."""
        self._counters: dict[str, Counter] = {
            kind: getattr(metrics, attribute) for kind, (attribute, _, _) in _KINDS.items()
        }
        self._deletions = metrics.account_deletions_total
        self._start = self._snapshot()

    def _snapshot(self) -> dict[tuple[str, str], float]:
        counters = [*self._counters.items(), ("account_deletions", self._deletions)]
        return {
            (kind, next(iter(sample.labels.values()), "")): sample.value
            for kind, counter in counters
            for family in counter.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        }

    def _changes(self) -> dict[tuple[str, str], float]:
        return {key: value - self._start.get(key, 0.0) for key, value in self._snapshot().items()}

    def _of_kind(self, kind: str) -> Changes:
        changes = {
            label: value for (each, label), value in self._changes().items() if each == kind
        }
        return Changes(changes, _KINDS[kind][2])

    @property
    def logins(self) -> Changes:
        """Return the change of each login outcome, e.g. ``delta.logins["success"]``."""
        return self._of_kind("logins")

    @property
    def orders(self) -> Changes:
        """Return the change of each order status, e.g. ``delta.orders["completed"]``."""
        return self._of_kind("orders")

    @property
    def revenue_cents(self) -> Changes:
        """Return the change of each revenue label, e.g. ``["EUR"]`` or ``["eur-refund"]``."""
        return self._of_kind("revenue_cents")

    @property
    def account_deletions(self) -> float:
        """Return the change of the account deletion counter."""
        return self._changes()["account_deletions", ""]

    def assert_changes(
        self,
        *,
        logins: Mapping[str, float] | None = None,
        orders: Mapping[str, float] | None = None,
        revenue_cents: Mapping[str, float] | None = None,
        account_deletions: float = 0,
    ) -> None:
        """Assert that exactly these series changed, by exactly these amounts.

        Series left out must not have changed. Keys are what the recorders accept:
        ``"success"`` or ``LoginOutcome.SUCCESS``, ``"completed"``, ``"eur"`` or
        ``"EUR-refund"``.

        Args:
            logins: The change of each login outcome that changed.
            orders: The change of each order status that changed.
            revenue_cents: The change of each revenue or ``-refund`` label that changed.
            account_deletions: The change of the account deletion counter.

        Raises:
            InvalidLabelError: If a key is not an accepted label value.
            ValueError: If two keys name the same series, such as ``"eur"`` and ``"EUR"``.
            AssertionError: With a table of every series whose change differs.
        """
        __tracebackhide__ = True
        expected = {("account_deletions", ""): float(account_deletions)}
        for kind, values in [
            ("logins", logins),
            ("orders", orders),
            ("revenue_cents", revenue_cents),
        ]:
            for key, value in (values or {}).items():
                label = _KINDS[kind][2](key)
                if (kind, label) in expected:
                    msg = f"{kind} names the series {label!r} twice, the last time as {key!r}"
                    raise ValueError(msg)
                expected[kind, label] = float(value)
        actual = self._changes()
        wrong = sorted(
            key
            for key in expected.keys() | actual.keys()
            if expected.get(key, 0.0) != actual.get(key, 0.0)
        )
        if wrong:
            raise AssertionError(_diff_table(wrong, expected, actual))


def _series(kind: str, label: str) -> str:
    if kind == "account_deletions":
        return ACCOUNT_DELETIONS.name
    _, spec, _ = _KINDS[kind]
    return f'{spec.name}{{{spec.labelnames[0]}="{label}"}}'


def _diff_table(
    wrong: list[tuple[str, str]],
    expected: dict[tuple[str, str], float],
    actual: dict[tuple[str, str], float],
) -> str:
    rows = [(_series(*key), expected.get(key, 0.0), actual.get(key, 0.0)) for key in wrong]
    width = max(len(row[0]) for row in rows)
    lines = [
        "business metrics changed differently than expected:",
        f"  {'series':<{width}}  {'expected':>10}  {'actual':>10}",
        *(f"  {series:<{width}}  {exp:>10g}  {act:>10g}" for series, exp, act in rows),
    ]
    return "\n".join(lines)
