"""Helpers for testing code that records business metrics, and their pytest plugin.

Installing the package registers this module as a pytest plugin, which provides:

- ``business_metrics``: the ``BusinessMetrics`` instance to watch, the default one unless
  a ``conftest.py`` overrides the fixture with an isolated instance;
- ``business_metrics_delta``: a ``MetricsDelta`` started when the test starts.

Example::

    def test_checkout(client, business_metrics_delta):
        client.post("/orders/42/complete", json={"amount_cents": 1999, "currency": "EUR"})
        assert business_metrics_delta.revenue_cents["EUR"] == 1999
        business_metrics_delta.assert_changes(
            orders={"completed": 1}, revenue_cents={"EUR": 1999}
        )
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from veza_business_metrics.metrics import DEFAULT_METRICS

if TYPE_CHECKING:
    from collections.abc import Mapping

    from prometheus_client import Counter

    from veza_business_metrics._recorder import BusinessMetrics

__all__ = ["MetricsDelta", "business_metrics", "business_metrics_delta"]

_Snapshot = dict[tuple[str, str], float]
# Each kind of change: the BusinessMetrics attribute that counts it, and its label.
_KINDS = {
    "logins": ("logins_total", "outcome"),
    "orders": ("orders_total", "status"),
    "revenue_cents": ("revenue_cents_total", "currency"),
    "account_deletions": ("account_deletions_total", ""),
}


def _read(counter: Counter) -> dict[str, float]:
    return {
        next(iter(sample.labels.values()), ""): sample.value
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


class _Changes(dict[str, float]):
    """Changes by label value; a revenue currency with no series has changed by 0."""

    def __missing__(self, key: str) -> float:
        return 0.0


class MetricsDelta:
    """Report how the business counters changed since this object was created.

    Args:
        metrics: The instance to watch: ``DEFAULT_METRICS`` or an isolated one.
    """

    def __init__(self, metrics: BusinessMetrics = DEFAULT_METRICS) -> None:
        """Take the snapshot that changes are measured from."""
        self._counters: dict[str, Counter] = {
            kind: getattr(metrics, attribute) for kind, (attribute, _) in _KINDS.items()
        }
        self._start = self._snapshot()

    def _snapshot(self) -> _Snapshot:
        return {
            (kind, label): value
            for kind, counter in self._counters.items()
            for label, value in _read(counter).items()
        }

    def _changes(self, kind: str) -> dict[str, float]:
        now = self._snapshot()
        return {
            label: value - self._start.get((kind, label), 0.0)
            for (each_kind, label), value in now.items()
            if each_kind == kind
        }

    @property
    def logins(self) -> dict[str, float]:
        """Return the change of each login outcome, e.g. ``delta.logins["success"]``."""
        return self._changes("logins")

    @property
    def orders(self) -> dict[str, float]:
        """Return the change of each order status, e.g. ``delta.orders["completed"]``."""
        return self._changes("orders")

    @property
    def revenue_cents(self) -> dict[str, float]:
        """Return the change of each revenue label, e.g. ``["EUR"]`` or ``["EUR-refund"]``."""
        return _Changes(self._changes("revenue_cents"))

    @property
    def account_deletions(self) -> float:
        """Return the change of the account deletion counter."""
        return self._changes("account_deletions")[""]

    def assert_changes(
        self,
        *,
        logins: Mapping[str, float] | None = None,
        orders: Mapping[str, float] | None = None,
        revenue_cents: Mapping[str, float] | None = None,
        account_deletions: float = 0,
    ) -> None:
        """Assert that exactly these series changed, by exactly these amounts.

        Series left out must not have changed. Keys are label values (``"success"``,
        ``"completed"``, ``"EUR"``, ``"EUR-refund"``); enum members work too.

        Raises:
            AssertionError: With a table of every series whose change differs.
        """
        expected: _Snapshot = {("account_deletions", ""): float(account_deletions)}
        for kind, values in [
            ("logins", logins),
            ("orders", orders),
            ("revenue_cents", revenue_cents),
        ]:
            expected.update({(kind, str(label)): value for label, value in (values or {}).items()})
        actual = {
            (kind, label): change
            for kind in _KINDS
            for label, change in self._changes(kind).items()
        }
        wrong = sorted(
            key
            for key in expected.keys() | actual.keys()
            if expected.get(key, 0.0) != actual.get(key, 0.0)
        )
        if wrong:
            raise AssertionError(_diff_table(wrong, expected, actual))


def _series(kind: str, label: str) -> str:
    attribute, label_name = _KINDS[kind]
    name = f"veza_business_{attribute}"
    return f'{name}{{{label_name}="{label}"}}' if label_name else name


def _diff_table(wrong: list[tuple[str, str]], expected: _Snapshot, actual: _Snapshot) -> str:
    rows = [(_series(*key), expected.get(key, 0.0), actual.get(key, 0.0)) for key in wrong]
    width = max(len(row[0]) for row in rows)
    lines = [
        "business metrics changed differently than expected:",
        f"  {'series':<{width}}  {'expected':>10}  {'actual':>10}",
        *(f"  {series:<{width}}  {exp:>10g}  {act:>10g}" for series, exp, act in rows),
    ]
    return "\n".join(lines)


@pytest.fixture
def business_metrics() -> BusinessMetrics:
    """Give the instance that ``business_metrics_delta`` watches; override it to isolate."""
    return DEFAULT_METRICS


@pytest.fixture
def business_metrics_delta(business_metrics: BusinessMetrics) -> MetricsDelta:
    """Give the changes of the business counters since the test started."""
    return MetricsDelta(business_metrics)
